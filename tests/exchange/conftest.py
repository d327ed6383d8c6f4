import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from ledger import services as ledger
from ledger.models import AccountKind
from marketplace import services as market
from marketplace.models import Instrument
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, data_centre, member


@pytest.fixture
def market_setup(db):
    """One open day instrument (reference 15.00 CNY/unit, band 10%, tick 0.01, lot 1 unit, fees 5/10 bps),
    a supplier with 100 H100 listed for it, and a buyer with 10,000 CNY."""
    product = ProductFactory(code="AI-TRAIN", reference_price=Decimal("15.00"), price_band_bps=1000, maker_fee_bps=5, taker_fee_bps=10)
    market.instruments_roll()
    # Not the one closing within the hour: a test running across its gate closure would see it close.
    instrument = Instrument.objects.filter(product=product, status="open", gate_closure__gt=timezone.now() + dt.timedelta(hours=1)).order_by("delivery_start").first()
    supplier = OrganisationFactory(name="Qingpu Compute", kind="supplier")
    h100 = DeviceModelFactory()
    dc = data_centre(supplier, {h100: 100})
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    listing = market.listing_create(data_centre=dc, product=product, device_model=h100, device_count=10,
                                    available_from=start, available_until=start + dt.timedelta(days=14))
    buyer = OrganisationFactory(name="Moyuan AI", kind="buyer")
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=buyer, kind="available"),
                    amount_fen=1_000_000, idempotency_key=f"fund:{buyer.pk}", kind="top_up")
    return {
        "instrument": instrument, "product": product, "supplier": supplier, "buyer": buyer, "listing": listing,
        "seller_user": member(supplier, role="trader", username="qp-trader"),
        "buyer_user": member(buyer, role="trader", username="my-trader"),
    }


@pytest.fixture
def rate_window(monkeypatch):
    """Order-rate windows are fixed (a minute for "N/min"): the throttle's clock pinned ten seconds into one, so
    a test's requests never straddle two windows (one run accepted the third order of "2/min", most likely so)."""
    from exchange.api.views import OrderRateThrottle

    at = 60 * 29_933_334 + 10.0  # a whole minute of 2026-11-30, plus ten seconds
    monkeypatch.setattr(OrderRateThrottle, "timer", lambda self: at)
    return at


ROOT = Path(__file__).resolve().parents[2]


def start_matcher(shard: int, shards: int, **env_extra: str) -> subprocess.Popen:
    """`manage.py runmatcher` against the test database, returned once it says it is serving."""
    db = connection.settings_dict
    env = dict(os.environ, DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
               MATCHER_SHARDS=str(shards), MATCHER_TRANSPORT="redis", PYTHONUNBUFFERED="1", **env_extra)
    proc = subprocess.Popen([sys.executable, "manage.py", "runmatcher", "--shard", str(shard), "--shards", str(shards)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    while not any("serving" in line for line in seen):
        line = proc.stdout.readline()
        assert line, "runmatcher exited:\n" + "".join(seen)
        seen.append(line)
    return proc
