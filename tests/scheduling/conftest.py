import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from exchange import services as exchange
from exchange.models import TimeInForce
from ledger import services as ledger
from ledger.models import AccountKind
from marketplace import services as market
from marketplace.models import Instrument
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, data_centre, member


def fund(org, fen: int) -> None:
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=org, kind="available"),
                    amount_fen=fen, idempotency_key=f"fund:{org.pk}", kind="top_up")


@pytest.fixture
def sched(db):
    """Day instruments of one product (lot 1 unit, tick 0.01, band 13.50-16.50 CNY), a supplier with two
    data centres listed for it: `near` (2 ms to Shanghai, 80% renewable, PUE 1.15) and `far` (30 ms, 10%
    renewable, PUE 1.40), a buyer with 10,000 CNY and a second buyer (`rival`)."""
    product = ProductFactory(code="AI-TRAIN", reference_price=Decimal("15.00"), price_band_bps=1000, maker_fee_bps=5, taker_fee_bps=10)
    market.instruments_roll()
    instruments = list(Instrument.objects.filter(product=product, status="open").order_by("delivery_start"))
    supplier = OrganisationFactory(name="Qingpu Compute", kind="supplier")
    h100 = DeviceModelFactory()
    near = data_centre(supplier, {h100: 100}, latency_ms="2.0", renewable_share=Decimal("80"), pue=Decimal("1.15"), carbon_intensity=Decimal("500"))
    far = data_centre(supplier, {h100: 100}, latency_ms="30.0", region="ningxia_zhongwei", renewable_share=Decimal("10"), pue=Decimal("1.40"), carbon_intensity=Decimal("600"))
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    listings = {
        name: market.listing_create(data_centre=dc, product=product, device_model=h100, device_count=10,
                                    available_from=start, available_until=start + dt.timedelta(days=14))
        for name, dc in (("near", near), ("far", far))
    }
    buyer = OrganisationFactory(name="Moyuan AI", kind="buyer")
    rival = OrganisationFactory(name="Rival AI", kind="buyer")
    fund(buyer, 1_000_000)
    fund(rival, 1_000_000)
    seller_user = member(supplier, role="trader", username="qp-trader")
    rival_user = member(rival, role="trader", username="rival-trader")
    counter = iter(range(1, 10_000))

    def ask(inst, price: str, qty: int, where: str = "near"):
        return exchange.order_place(user=seller_user, organisation=supplier, request=exchange.OrderRequest(
            instrument=inst, side="sell", quantity=qty, client_order_id=f"ask-{next(counter)}", price=Decimal(price), listing=listings[where]))

    def take(inst, price: str, qty: int):
        return exchange.order_place(user=rival_user, organisation=rival, request=exchange.OrderRequest(
            instrument=inst, side="buy", quantity=qty, client_order_id=f"rival-{next(counter)}", price=Decimal(price), time_in_force=TimeInForce.IOC))

    return {
        "product": product, "instruments": instruments, "supplier": supplier, "buyer": buyer, "rival": rival,
        "listings": listings, "near": near, "far": far, "ask": ask, "take": take,
        "buyer_user": member(buyer, role="trader", username="my-trader"), "seller_user": seller_user,
    }
