import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from exchange.models import Contract
from ledger import services as ledger
from ledger.models import AccountKind
from marketplace import services as market
from marketplace.models import Instrument
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, ascend, data_centre, member

BUYER_FUNDS = 1_000_000


def trade(api, seller_user, buyer_user, instrument, lots: int, price: str = "15.00", tag: str = "1") -> Contract:
    """A real trade through the order API and the (inline) matcher: the seller rests, the buyer takes."""
    api.force_authenticate(seller_user)
    r = api.post("/api/v1/orders/", {"instrument": instrument.pk, "side": "sell", "price": price, "quantity": lots,
                                     "client_order_id": f"s{tag}"}, format="json")
    assert r.status_code == 201, r.json()
    api.force_authenticate(buyer_user)
    r = api.post("/api/v1/orders/", {"instrument": instrument.pk, "side": "buy", "price": price, "quantity": lots,
                                     "client_order_id": f"b{tag}"}, format="json")
    assert r.status_code == 201 and r.json()["status"] == "filled", r.json()
    api.force_authenticate(None)
    return Contract.objects.select_related("trade", "instrument").get(trade_id=r.json()["fills"][0]["trade"])


@pytest.fixture
def deal(db, api):
    """One contract of 10 lots x 1 PFLOPS-hour (FP16) at 15.00 CNY: value 15000 fen, buyer (taker) fee
    10 bps = 15 fen, seller (maker) fee 5 bps = 8 fen. Delivery window moved to [now - 12 h, now + 12 h]
    after trading (trading closes before delivery starts). The supplier's data centre has 100 H100 and 20
    Ascend 910B; the listing offers 10 H100."""
    product = ProductFactory(code="AI-TRAIN", reference_price=Decimal("15.00"), price_band_bps=1000, maker_fee_bps=5, taker_fee_bps=10)
    market.instruments_roll()
    instrument = Instrument.objects.filter(product=product, status="open").order_by("delivery_start").first()
    supplier = OrganisationFactory(name="Qingpu Compute", kind="supplier")
    h100 = DeviceModelFactory()
    dc = data_centre(supplier, {h100: 100, ascend(): 20})
    other_dc = data_centre(supplier, {h100: 10})
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    listing = market.listing_create(data_centre=dc, product=product, device_model=h100, device_count=10,
                                    available_from=start, available_until=start + dt.timedelta(days=14))
    buyer = OrganisationFactory(name="Moyuan AI", kind="buyer")
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=buyer, kind="available"),
                    amount_fen=BUYER_FUNDS, idempotency_key=f"fund:{buyer.pk}", kind="top_up")
    seller_user = member(supplier, role="trader", username="qp-trader")
    buyer_user = member(buyer, role="trader", username="my-trader")
    contract = trade(api, seller_user, buyer_user, instrument, 10)
    now = timezone.now().replace(microsecond=0)
    window_start = now - dt.timedelta(hours=12)
    Instrument.objects.filter(pk=instrument.pk).update(
        opens_at=window_start - dt.timedelta(days=2), gate_closure=window_start - dt.timedelta(hours=1), status="closed",
        delivery_start=window_start, delivery_end=window_start + dt.timedelta(days=1),
    )
    contract.instrument.refresh_from_db()
    return {
        "contract": contract, "instrument": contract.instrument, "product": product, "supplier": supplier, "buyer": buyer,
        "dc": dc, "other_dc": other_dc, "h100": h100, "listing": listing, "seller_user": seller_user, "buyer_user": buyer_user,
        "window_start": window_start, "now": now,
    }


def event(deal, n: int | str, *, hours: float = 1, devices: int = 1, offset_minutes: int = 0, **fields) -> dict:
    """A usage event of `devices` H100 for `hours` starting `offset_minutes` into the window."""
    start = deal["window_start"] + dt.timedelta(minutes=offset_minutes)
    body = {
        "event_id": f"ev-{n}", "contract": deal["contract"].pk, "data_centre": deal["dc"].pk, "device_model": deal["h100"].pk,
        "start": start.isoformat(), "end": (start + dt.timedelta(hours=hours)).isoformat(), "device_count": devices,
    }
    body.update(fields)
    return body


def post_events(api, user, events, **extra):
    api.force_authenticate(user)
    return api.post("/api/v1/metering/events/", {"events": events, **extra}, format="json")
