"""The portal tests' world: organisations, users in every role, an open instrument (tests/portal and tests/e2e)."""

import datetime as dt
from decimal import Decimal

from django.utils import timezone

from ledger import services as ledger
from ledger.models import AccountKind
from marketplace import services as market
from marketplace.models import Instrument
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, UserFactory, data_centre, member


def world_build():
    """A supplier with a listing, a buyer with 10,000 CNY, one open instrument (no orders yet),
    a regulator, a viewer and a user who trades for two organisations."""
    product = ProductFactory(code="AI-TRAIN", name="AI training", name_zh="智能算力·训练", reference_price=Decimal("15.00"))
    market.instruments_roll()
    instrument = Instrument.objects.filter(product=product, status="open").order_by("delivery_start").first()
    supplier = OrganisationFactory(name="Qingpu Compute", name_zh="青浦算力", kind="supplier")
    h100 = DeviceModelFactory()
    dc = data_centre(supplier, {h100: 100}, name="Qingpu Xicen")
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    listing = market.listing_create(data_centre=dc, product=product, device_model=h100, device_count=10,
                                    available_from=start, available_until=start + dt.timedelta(days=14))
    buyer = OrganisationFactory(name="Moyuan AI", name_zh="墨源智能", kind="buyer")
    other_buyer = OrganisationFactory(name="Lanting Labs", kind="buyer")
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    for org in (buyer, other_buyer):
        ledger.transfer(source=clearing, destination=ledger.account_for(organisation=org, kind="available"),
                        amount_fen=1_000_000, idempotency_key=f"fund:{org.pk}", kind="top_up")
    w = {
        "instrument": instrument, "product": product, "listing": listing,
        "supplier": supplier, "buyer": buyer, "other_buyer": other_buyer,
        "seller_user": member(supplier, role="trader", username="qp-trader"),
        "buyer_user": member(buyer, role="trader", username="my-trader"),
        "viewer": member(buyer, role="viewer", username="my-viewer"),
        "other_user": member(other_buyer, role="admin", username="lt-admin"),
        "regulator": UserFactory(username="reg", platform_role="regulator"),
    }
    multi = member(buyer, role="admin", username="multi")
    from marketplace.models import Membership

    Membership.objects.create(user=multi, organisation=other_buyer, role="trader")
    w["multi"] = multi
    return w
