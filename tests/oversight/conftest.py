import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger import services as ledger
from ledger.models import AccountKind
from marketplace import services as catalogue
from marketplace.models import Instrument, PlatformRole
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, UserFactory, data_centre, member


def fund(org, fen: int = 10_000_000) -> None:
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=org, kind="available"),
                    amount_fen=fen, idempotency_key=f"fund:{org.pk}", kind="top_up")


@pytest.fixture
def market(db):
    """One open day instrument (reference 15.00 CNY/unit, lot 1, tick 0.01, band 10%); two suppliers with
    listings and two funded buyers, each with a trader; a regulator."""
    product = ProductFactory(code="AI-TRAIN", reference_price=Decimal("15.00"), price_band_bps=1000)
    catalogue.instruments_roll()
    # Not the one closing within the hour: a test running across its gate closure would see it close.
    instrument = Instrument.objects.filter(product=product, status="open", gate_closure__gt=timezone.now() + dt.timedelta(hours=1)).order_by("delivery_start").first()
    h100 = DeviceModelFactory()
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    out = {"instrument": instrument, "product": product}
    for i in (1, 2):
        supplier = OrganisationFactory(name=f"Supplier {i}", kind="both")
        dc = data_centre(supplier, {h100: 200})
        out[f"listing{i}"] = catalogue.listing_create(data_centre=dc, product=product, device_model=h100, device_count=50,
                                                   available_from=start, available_until=start + dt.timedelta(days=14))
        fund(supplier)
        out[f"supplier{i}"] = supplier
        out[f"seller{i}"] = member(supplier, role="trader", username=f"seller{i}")
        buyer = OrganisationFactory(name=f"Buyer {i}", kind="buyer")
        fund(buyer)
        out[f"buyer{i}"] = buyer
        out[f"buyer_user{i}"] = member(buyer, role="trader", username=f"buyer{i}")
    out["regulator"] = UserFactory(username="regulator", platform_role=PlatformRole.REGULATOR)
    return out


class Trader:
    """Places and cancels orders over the REST API (the inline matcher answers at once)."""

    def __init__(self, api, instrument):
        self.api, self.instrument, self.n = api, instrument, 0

    def place(self, user, side, price, quantity, **fields):
        self.n += 1
        self.api.force_authenticate(user)
        body = {"instrument": self.instrument.pk, "side": side, "price": str(price), "quantity": quantity,
                "client_order_id": f"t{self.n}"} | fields
        response = self.api.post("/api/v1/orders/", body, format="json")
        assert response.status_code == 201, response.json()
        return response.json()

    def cancel(self, user, order_id):
        self.api.force_authenticate(user)
        response = self.api.delete(f"/api/v1/orders/{order_id}/")
        assert response.status_code == 200, response.json()
        return response.json()

    def trade(self, seller, buyer, price, quantity):
        self.place(seller, "sell", price, quantity)
        return self.place(buyer, "buy", price, quantity)


@pytest.fixture
def trader(api, market):
    return Trader(api, market["instrument"])
