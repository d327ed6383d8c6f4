"""The authorisation matrix's world: a home buyer and supplier that traded with each other, a foreign buyer
and supplier with the same kinds of objects, and one user per role (tests/security/policy.py ROLES)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.utils import timezone

from exchange import services as exchange
from exchange.models import Contract, Order, Trade
from ledger import services as ledger
from ledger.models import Account, AccountKind, Posting
from ledger.payments import services as payments
from marketplace import services as catalogue
from marketplace.models import Instrument, MemberRole, PlatformRole
from metering.models import Dispute
from oversight.models import Alert
from scheduling import services as scheduling
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, UserFactory, data_centre, member
from vouchers import services as vouchers

FOREIGN_NAMES = ("Foreign Buyer Ltd", "Foreign Supplier Ltd")


@dataclass
class Side:
    """One buyer and one supplier that traded: the objects the route table's ids point at."""

    buyer: object
    supplier: object
    objects: dict = field(default_factory=dict)  # kind -> model instance (or value, for client_order_id)
    rows: dict = field(default_factory=dict)  # list kind -> ids of every row of that kind this side owns


def _fund(org, fen: int) -> None:
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=org, kind="available"),
                    amount_fen=fen, idempotency_key=f"fund:{org.pk}", kind="top_up")


def _side(prefix: str, names: tuple[str, str], *, instrument, product, device, programmes, authority) -> tuple[Side, dict]:
    buyer = OrganisationFactory(name=names[0], kind="buyer")
    supplier = OrganisationFactory(name=names[1], kind="supplier")
    _fund(buyer, 10_000_000)
    _fund(supplier, 1_000_000)
    users = {
        "buyer_trader": member(buyer, role=MemberRole.TRADER, username=f"{prefix}-buyer-trader"),
        "buyer_viewer": member(buyer, role=MemberRole.VIEWER, username=f"{prefix}-buyer-viewer"),
        "buyer_admin": member(buyer, role=MemberRole.ADMIN, username=f"{prefix}-buyer-admin"),
        "supplier": member(supplier, role=MemberRole.ADMIN, username=f"{prefix}-supplier-admin"),
    }
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    centre = data_centre(supplier, {device: 200}, name=f"{prefix} DC")
    listing = catalogue.listing_create(data_centre=centre, product=product, device_model=device, device_count=50,
                                       available_from=start, available_until=start + dt.timedelta(days=14))
    now = timezone.now()
    applications = {}
    for code, programme in programmes.items():
        applications[code], _ = vouchers.application_submit(
            user=users["buyer_admin"], programme=programme, organisation=buyer, credit_code=buyer.credit_code,
            declared_size_class=buyer.size_class, requested_fen=1_000_000, idempotency_key=f"{prefix}-{code}",
            now=now - dt.timedelta(days=1))
    voucher = vouchers.application_approve(user=authority, application_id=applications["approved"].pk, now=now - dt.timedelta(days=1))

    def place(user, org, side, price, quantity, coid, **extra):
        return exchange.order_place(user=user, organisation=org, request=exchange.OrderRequest(
            instrument=instrument, side=side, quantity=quantity, client_order_id=coid, price=Decimal(price), **extra))

    place(users["supplier"], supplier, "sell", "15.00", 2, f"{prefix}-ask", listing=listing)
    place(users["buyer_trader"], buyer, "buy", "15.00", 2, f"{prefix}-lift")
    place(users["buyer_trader"], buyer, "buy", "14.50" if prefix == "home" else "14.40", 3, f"{prefix}-bid")
    contract = Contract.objects.get(buyer=buyer)
    redemption = vouchers.redemption_commit(contract_id=contract.pk)
    resting = Order.objects.get(organisation=buyer, client_order_id=f"{prefix}-bid")
    top_up, _ = payments.top_up_create(organisation=buyer, amount_fen=10_000, idempotency_key=f"{prefix}-top-up",
                                       bank_reference=f"{prefix} ref", requested_by=users["buyer_trader"])
    payout, _ = payments.payout_request(organisation=supplier, amount_fen=1_000, destination="ICBC 6222", idempotency_key=f"{prefix}-payout",
                                        requested_by=users["supplier"])
    demand, _ = scheduling.demand_create(user=users["buyer_trader"], organisation=buyer, fields={
        "client_demand_id": f"{prefix}-demand", "quantity": Decimal("1"), "earliest_start": instrument.delivery_start,
        "deadline": instrument.delivery_end})
    dispute = Dispute.objects.create(contract=contract, reason="short", opened_by=users["buyer_trader"], delivered_before_micro=0)
    alert = Alert.objects.create(kind="wash_trade", severity="high", fingerprint=f"{prefix}-alert", summary="t", organisation=buyer)
    orgs = (buyer.pk, supplier.pk)
    objects = {
        "order": resting, "client_order_id": resting.client_order_id, "top_up": top_up, "payout": payout, "contract": contract,
        "dispute": dispute, "application": applications["approved"], "pending_application": applications["pending"],
        "voucher": voucher, "redemption": redemption, "demand": demand, "alert": alert, "listing": listing, "data_centre": centre,
    }
    rows = {
        "order": set(Order.objects.filter(organisation_id__in=orgs).values_list("pk", flat=True)),
        "fill": set(Trade.objects.filter(buyer=buyer).values_list("pk", flat=True)),  # a fill's id is its trade's (seller: supplier)
        "account": set(Account.objects.filter(organisation_id__in=orgs).values_list("pk", flat=True)),
        "posting": set(Posting.objects.filter(account__organisation_id__in=orgs).values_list("pk", flat=True)),
        "top_up": {top_up.pk}, "payout": {payout.pk}, "contract": {contract.pk}, "dispute": {dispute.pk},
        "application": {a.pk for a in applications.values()}, "voucher": {voucher.pk}, "redemption": {redemption.pk},
        "demand": {demand.pk}, "listing": {listing.pk}, "alert": {alert.pk},
    }
    return Side(buyer, supplier, objects, rows), users


def world_build() -> dict:
    product = ProductFactory(code="AI-TRAIN", reference_price=Decimal("15.00"), price_band_bps=1000)
    catalogue.instruments_roll()
    # Not the one closing within the hour: a run across its gate closure would see it close.
    instrument = Instrument.objects.filter(product=product, status="open", gate_closure__gt=timezone.now() + dt.timedelta(hours=1)).order_by("delivery_start").first()
    device = DeviceModelFactory()
    authority = UserFactory(username="authz-authority", platform_role=PlatformRole.AUTHORITY)
    now = timezone.now()
    programmes = {}
    for n, name in enumerate(("approved", "pending")):
        programmes[name] = vouchers.programme_create(
            user=authority, code=f"p{n}", name=f"Programme {n}", valid_from=now - dt.timedelta(days=30), valid_until=now + dt.timedelta(days=365),
            rate_bps=2000, org_cap_per_year_fen=200_000_000, eligible_size_classes=["micro", "small", "medium"])
        vouchers.programme_fund(user=authority, programme=programmes[name], amount_fen=10_000_000, idempotency_key=f"fund-{n}")
    common = dict(instrument=instrument, product=product, device=device, programmes=programmes, authority=authority)
    home, users = _side("home", ("Home Buyer Ltd", "Home Supplier Ltd"), **common)
    foreign, _ = _side("foreign", FOREIGN_NAMES, **common)
    public = {"instrument": instrument, "product": product, "device_model": device, "programme": programmes["approved"]}
    identities = {
        "anonymous": None,
        "buyer_trader": users["buyer_trader"],
        "buyer_viewer": users["buyer_viewer"],
        "supplier": users["supplier"],
        "authority": authority,
        "regulator": UserFactory(username="authz-regulator", platform_role=PlatformRole.REGULATOR),
        "operator": UserFactory(username="authz-operator", platform_role=PlatformRole.OPERATOR),
    }
    _api_keys(home, foreign, identities)
    return {"home": home, "foreign": foreign, "public": public, "users": identities}


def _api_keys(home: Side, foreign: Side, identities: dict) -> None:
    """One key per signed-in identity (its own), one of a foreign user, when the apikeys app is there."""
    from django.apps import apps

    if not apps.is_installed("apikeys"):
        return
    from apikeys import services as apikeys

    keys = {role: apikeys.api_key_create(user=user, name=role, scopes=[])[0] for role, user in identities.items() if user is not None}
    home.objects["api_key"] = keys
    home.rows["api_key"] = {role: {key.pk} for role, key in keys.items()}
    key = apikeys.api_key_create(user=UserFactory(username="foreign-key-owner"), name="foreign", scopes=[])[0]
    foreign.objects["api_key"] = key
    foreign.rows["api_key"] = {key.pk}
