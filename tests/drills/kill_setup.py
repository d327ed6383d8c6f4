"""Fixtures of the kill drills (imported by their test modules): a Redis of our own, the drill's market (instruments, funded traders with API
tokens, a contract in delivery, Stripe top-ups awaiting their webhooks) and the database URL of the test
database for the processes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from exchange import services
from exchange.models import Contract
from ledger import services as ledger
from ledger.models import AccountKind, Provider, TopUp
from marketplace import services as market
from marketplace.models import Instrument
from tests.drills.kill_harness import RedisServer
from tests.exchange.conftest import market_setup  # noqa: F401  (a fixture the drills build on)

TOP_UP_FEN = 50_000


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False  # a helper, not a test


@dataclass
class DrillMarket:
    reference: Instrument  # the stream's orders, matched in-process without faults: what the drill must end with
    traded: Instrument  # the same orders through the real processes, with kills
    contract: Contract  # in its delivery window: usage batches go here
    seller_token: str
    buyer_token: str
    top_ups: list[TopUp]
    market: dict


def _trade_a_contract(m: dict, instrument: Instrument, lots: int) -> Contract:
    """A contract between the market's supplier and buyer (inline matcher), its delivery window then moved
    around now (as tests/metering does): usage for it is accepted."""
    for user, org, side, cid in ((m["seller_user"], m["supplier"], "sell", "drill-contract-s"), (m["buyer_user"], m["buyer"], "buy", "drill-contract-b")):
        request = services.OrderRequest(instrument=instrument, side=side, quantity=lots, client_order_id=cid, price=Decimal("15.00"))
        services.order_place(user=user, organisation=org, request=request)
    contract = Contract.objects.select_related("instrument").get(instrument=instrument)
    start = timezone.now().replace(microsecond=0) - dt.timedelta(hours=12)
    Instrument.objects.filter(pk=instrument.pk).update(
        opens_at=start - dt.timedelta(days=2), gate_closure=start - dt.timedelta(hours=1), status="closed",
        delivery_start=start, delivery_end=start + dt.timedelta(days=1))
    contract.instrument.refresh_from_db()
    return contract


@pytest.fixture
def drill_market(market_setup) -> DrillMarket:  # noqa: F811
    m = market_setup
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=m["buyer"], kind="available"),
                    amount_fen=50_000_000, idempotency_key="drill-fund", kind="top_up")
    market.instruments_roll()
    later = timezone.now() + dt.timedelta(hours=1)
    reference, traded, delivering = Instrument.objects.filter(product=m["product"], status="open", gate_closure__gt=later).order_by("delivery_start")[:3]
    contract = _trade_a_contract(m, delivering, 20)
    top_ups = [TopUp.objects.create(organisation=m["buyer"], provider=Provider.STRIPE, amount_fen=TOP_UP_FEN + i, idempotency_key=f"drill-{i}",
                                    provider_reference=f"cs_drill_{i}") for i in range(16)]
    return DrillMarket(reference=reference, traded=traded, contract=contract, market=m, top_ups=top_ups,
                       seller_token=Token.objects.create(user=m["seller_user"]).key, buyer_token=Token.objects.create(user=m["buyer_user"]).key)


def outcome(instrument) -> dict:
    """Orders and trades by client_order_id (the reference's without its "ref-" prefix)."""
    from exchange.models import Order, Trade

    orders = {o.client_order_id.removeprefix("ref-"): [o.side, o.status, o.quantity, o.filled_quantity, o.open_quantity, o.fee_fen]
              for o in Order.objects.filter(instrument=instrument)}
    cid = {pk: c.removeprefix("ref-") for pk, c in Order.objects.filter(instrument=instrument).values_list("pk", "client_order_id")}
    trades = [[t.seq, cid[t.maker_order_id], cid[t.taker_order_id], t.price_fen_per_lot, t.quantity, t.buyer_fee_fen, t.seller_fee_fen]
              for t in Trade.objects.filter(instrument=instrument).order_by("seq")]
    return {"orders": orders, "trades": trades}


def outcome_json(reference_id: int, traded_id: int) -> str:
    """For a process on another database (`manage.py shell -c`): both outcomes and the traded instrument's
    orders by client_order_id (id), as JSON."""
    import json

    from exchange.models import Order

    ids = {}
    for cid, pk in Order.objects.filter(instrument_id=traded_id).values_list("client_order_id", "pk"):
        ids.setdefault(cid, []).append(pk)
    return json.dumps({"reference": outcome(Instrument.objects.get(pk=reference_id)), "traded": outcome(Instrument.objects.get(pk=traded_id)),
                       "ids": ids, "pending": Order.objects.filter(status="pending").count()})
