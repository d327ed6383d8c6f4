"""Property-based API tests with schemathesis against the project's own OpenAPI schema (drf-spectacular).

Every operation is fuzzed with schema-valid (positive) and schema-violating (negative) data and each
generated request is sent as every identity of a seeded world: a buyer, a supplier, a foreign organisation
(all three organisation admins), the voucher authority, the regulator, an operator and nobody (schema-violating
requests as the buyer, the supplier, the regulator and the operator only). Checks:

- no 5xx (`not_a_server_error`); every status code and body is the documented one (`status_code_conformance`,
  `content_type_conformance`, `response_schema_conformance`); schema-violating input in the path, headers or
  body is refused with a 4xx (`negative_data_rejection`; query strings are read leniently, see LENIENT_NEGATIVE);
- no cross-tenant reads: the private fields of each tenant's objects (client order ids, top-up references,
  payout destinations, usage event ids, dispute reasons, demand ids, voucher application texts) carry a marker
  `zk<LETTERS>q` naming who may see them (A buyer, S supplier, F foreign, U authority). No response to a
  tenant identity or to nobody may contain a marker without its letter (the regulator and the operator see all).
- every operation with an id in its path is also called with the real ids of each tenant's objects, as
  every identity (random ids almost never hit a real object).

Examples per operation and mode: env SCHEMATHESIS_MAX_EXAMPLES (default 5, what CI runs; try 100 locally:
`SCHEMATHESIS_MAX_EXAMPLES=100 .venv/bin/python -m pytest tests/security/test_schemathesis.py`); env
SCHEMATHESIS_COVERAGE=1 adds schemathesis's coverage phase (boundary values of every parameter; many more requests).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from decimal import Decimal

import pytest
import schemathesis
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from config.wsgi import application
from exchange.models import Contract, Order
from ledger import services as ledger
from ledger.models import AccountKind
from marketplace import services as market
from marketplace.models import Instrument, PlatformRole
from tests.factories import DeviceModelFactory, OrganisationFactory, ProductFactory, UserFactory, data_centre, member

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "5"))
# Query strings are read leniently on purpose (DRF: an invalid page_size falls back to the default; a filter
# value it cannot parse is ignored), and a metering batch answers 200 with each event's refusal inside: there
# schema-violating input is not expected to be refused as a whole.
LENIENT_NEGATIVE = {"POST /api/v1/metering/events/"}


def negative_body_and_path_rejection(ctx, response, case):
    """schemathesis's negative_data_rejection, for schema violations in the path, headers or body."""
    data = case.meta.phase.data if case.meta else None
    locations = {m.parameter_location.value for m in getattr(data, "mutations", ())}
    if getattr(data, "parameter_location", None) is not None:
        locations.add(data.parameter_location.value)
    if case.operation.label in LENIENT_NEGATIVE or locations == {"query"}:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_body_and_path_rejection]
MARKER = re.compile(r"zk([A-Z]+)q")
# Identity -> the letter its markers carry; None: sees every tenant's objects.
LETTERS = {"buyer": "A", "supplier": "S", "foreign": "F", "authority": "U", "anonymous": "N", "regulator": None, "operator": None}


def _schema() -> schemathesis.BaseSchema:
    raw = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
    loaded = schemathesis.openapi.from_dict(raw)
    loaded.app = application
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES,
                                    deterministic=True)
    # The coverage phase (boundary values of every parameter) sends far more requests: opt in with env.
    loaded.config.phases.coverage.enabled = os.environ.get("SCHEMATHESIS_COVERAGE") == "1"
    return loaded


schema = _schema()


def _fund(org, fen: int = 10_000_000) -> None:
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    ledger.transfer(source=clearing, destination=ledger.account_for(organisation=org, kind="available"),
                    amount_fen=fen, idempotency_key=f"fund:{org.pk}", kind="top_up")


def _ok(response, status=(200, 201)):
    assert response.status_code in status, (response.status_code, response.content[:500])
    return response.json()


def _build_world() -> dict:
    """Three tenants trading with each other, with private objects of every kind; ids by resource path."""
    api = APIClient()
    product = ProductFactory(code="AI-TRAIN", reference_price=Decimal("15.00"), price_band_bps=1000, maker_fee_bps=5, taker_fee_bps=10)
    market.instruments_roll()
    later = Instrument.objects.filter(product=product, status="open", gate_closure__gt=timezone.now() + dt.timedelta(hours=1))
    traded, resting = later.order_by("delivery_start")[:2]
    h100 = DeviceModelFactory()
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    orgs, users, dcs, listings = {}, {}, {}, {}
    for key, kind in (("buyer", "buyer"), ("supplier", "supplier"), ("foreign", "both")):
        org = OrganisationFactory(name=f"Tenant {key}", kind=kind, size_class="small")
        _fund(org)
        orgs[key], users[key] = org, member(org, role="admin", username=f"{key}-admin")
        if kind != "buyer":
            dcs[key] = data_centre(org, {h100: 200})
            listings[key] = market.listing_create(data_centre=dcs[key], product=product, device_model=h100, device_count=50,
                                                  available_from=start, available_until=start + dt.timedelta(days=14))
    users["authority"] = UserFactory(username="authority", platform_role=PlatformRole.AUTHORITY)
    users["regulator"] = UserFactory(username="regulator", platform_role=PlatformRole.REGULATOR)
    users["operator"] = UserFactory(username="operator", platform_role=PlatformRole.OPERATOR)

    def order(who, inst, side, price, qty, coid, **extra):
        api.force_authenticate(users[who])
        body = {"instrument": inst.pk, "side": side, "price": price, "quantity": qty, "client_order_id": coid} | extra
        return _ok(api.post("/api/v1/orders/", body, format="json"))

    # Two contracts (supplier -> buyer, supplier -> foreign) on one instrument, resting orders on another.
    order("supplier", traded, "sell", "15.00", 20, "zkSq-s1")
    fills = [order(who, traded, "buy", "15.00", 10, f"zk{letter}q-b1")["fills"][0]["trade"] for who, letter in (("buyer", "A"), ("foreign", "F"))]
    contracts = [Contract.objects.get(trade_id=t) for t in fills]
    rest = {who: order(who, resting, side, price, 3, f"zk{letter}q-rest")
            for who, letter, side, price in (("buyer", "A", "buy", "14.00"), ("foreign", "F", "buy", "14.10"), ("supplier", "S", "sell", "16.00"))}
    # The traded instrument is delivering now, so the supplier meters and the buyers dispute.
    now = timezone.now().replace(microsecond=0)
    window = now - dt.timedelta(hours=12)
    Instrument.objects.filter(pk=traded.pk).update(opens_at=window - dt.timedelta(days=2), gate_closure=window - dt.timedelta(hours=1),
                                                   status="closed", delivery_start=window, delivery_end=window + dt.timedelta(days=1))
    from exchange import selectors as exchange_selectors

    exchange_selectors.caches_clear()
    api.force_authenticate(users["supplier"])
    for contract, letters in zip(contracts, ("AS", "FS"), strict=True):
        event = {"event_id": f"zk{letters}q-ev1", "contract": contract.pk, "data_centre": dcs["supplier"].pk, "device_model": h100.pk,
                 "start": window.isoformat(), "end": (window + dt.timedelta(hours=1)).isoformat(), "device_count": 1}
        _ok(api.post("/api/v1/metering/events/", {"events": [event]}, format="json"))
    disputes = []
    for contract, who, letters in zip(contracts, ("buyer", "foreign"), ("AS", "FS"), strict=True):
        api.force_authenticate(users[who])
        disputes.append(_ok(api.post(f"/api/v1/metering/contracts/{contract.pk}/dispute/", {"reason": f"zk{letters}q-dispute"}, format="json"))["id"])
    # Money: top-ups declared by the buyers, payouts asked by the sellers.
    top_ups, payouts = [], []
    for who, letter in (("buyer", "A"), ("foreign", "F")):
        api.force_authenticate(users[who])
        top_ups.append(_ok(api.post("/api/v1/ledger/top-ups/", {"amount": "100.00", "bank_reference": f"zk{letter}q-topup"},
                                    format="json", HTTP_IDEMPOTENCY_KEY=f"t-{who}"))["id"])
    for who, letter in (("supplier", "S"), ("foreign", "F")):
        api.force_authenticate(users[who])
        payouts.append(_ok(api.post("/api/v1/ledger/payouts/", {"amount": "10.00", "destination": f"zk{letter}q-bank"},
                                    format="json", HTTP_IDEMPOTENCY_KEY=f"p-{who}"))["id"])
    # Demands (the scheduler) of both buyers.
    demands = []
    for who, letter in (("buyer", "A"), ("foreign", "F")):
        api.force_authenticate(users[who])
        body = {"client_demand_id": f"zk{letter}q-d", "quantity": "5", "earliest_start": resting.delivery_start.isoformat(),
                "deadline": resting.delivery_end.isoformat(), "max_latency_ms": "10"}
        demands.append(_ok(api.post("/api/v1/demands/", body, format="json"))["id"])
    # Vouchers: a programme, an application from each buyer (the authority reads them), one approved.
    api.force_authenticate(users["authority"])
    today = timezone.now()
    programme = _ok(api.post("/api/v1/vouchers/programmes/", {
        "code": "p20", "name": "Programme", "valid_from": (today - dt.timedelta(days=30)).isoformat(),
        "valid_until": (today + dt.timedelta(days=365)).isoformat(), "rate_bps": 2000, "org_cap_per_year": "2000000.00",
        "eligible_size_classes": ["micro", "small", "medium"]}, format="json"), (201,))["id"]
    _ok(api.post(f"/api/v1/vouchers/programmes/{programme}/fund/", {"amount": "100000.00", "idempotency_key": "initial"}, format="json"))
    applications = []
    for who, letters in (("buyer", "AU"), ("foreign", "FU")):
        api.force_authenticate(users[who])
        org = orgs[who]
        applications.append(_ok(api.post("/api/v1/vouchers/applications/", {
            "programme": programme, "organisation": org.pk, "credit_code": org.credit_code, "declared_size_class": "small",
            "requested_amount": "200.00", "industry": f"zk{letters}q-ind", "idempotency_key": f"apply-{who}"}, format="json"))["id"])
    api.force_authenticate(users["authority"])
    voucher = _ok(api.post(f"/api/v1/vouchers/applications/{applications[0]}/approve/", {}, format="json"), (201,))
    api.force_authenticate(None)

    orders = Order.objects.filter(client_order_id__in=[o["client_order_id"] for o in rest.values()])
    ids = {
        "/api/v1/orders/{id}/": [o["id"] for o in rest.values()],
        "/api/v1/orders/by-client-id/{client_order_id}/": [o.client_order_id for o in orders],
        "/api/v1/demands/{id}/": demands,
        "/api/v1/ledger/payouts/{id}/": payouts,
        "/api/v1/ledger/top-ups/{id}/": top_ups,
        "/api/v1/metering/contracts/{id}/": [c.pk for c in contracts],
        "/api/v1/metering/disputes/{id}/": disputes,
        "/api/v1/vouchers/applications/{id}/": applications,
        "/api/v1/vouchers/vouchers/{id}/": [voucher["id"]],
        "/api/v1/vouchers/programmes/{id}/": [programme],
        "/api/v1/instruments/{id}/": [resting.pk, traded.pk],
        "/api/v1/data-centres/{id}/": [dc.pk for dc in dcs.values()],
        "/api/v1/listings/{id}/": [li.pk for li in listings.values()],
        "/api/v1/organisations/{id}/": [o.pk for o in orgs.values()],
        "/api/v1/products/{id}/": [product.pk],
        "/api/v1/device-models/{id}/": [h100.pk],
    }
    tokens = {name: {"Authorization": f"Token {Token.objects.create(user=user).key}"} for name, user in users.items()}
    tokens["anonymous"] = {}
    return {"ids": ids, "headers": tokens}


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    """Built once for the module inside a transaction that is rolled back at the end; each operation's test
    runs in a savepoint inside it (pytest-django's `db`), so what one operation's requests write is undone."""
    from django.core import signals
    from django.db import close_old_connections

    from exchange import publish, selectors, transport

    # schemathesis calls the WSGI app directly, not through Django's test client: like the client, keep the
    # request signals from closing the test's connection (on PostgreSQL that ends its transaction).
    try:
        with django_db_blocker.unblock(), override_settings(MATCHER_TRANSPORT="inline"):
            selectors.caches_clear()
            publish._units.clear()
            transport._client = None
            transport.InlineClient.reset()
            with transaction.atomic():
                built = _build_world()
                # After the build: Django's test client, used there, reconnects them after each request.
                signals.request_started.disconnect(close_old_connections)
                signals.request_finished.disconnect(close_old_connections)
                yield built
                transaction.set_rollback(True)
    finally:
        transport._client = None
        transport.InlineClient.reset()
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def _leaks(identity: str, response) -> list[str]:
    letter = LETTERS[identity]
    if letter is None:
        return []
    text = response.content.decode("utf-8", "replace") if hasattr(response, "content") else response.text
    return sorted({m.group(0) for m in MARKER.finditer(text) if letter not in m.group(1)})


def _send(case, identity: str, headers: dict) -> None:
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS, headers=headers)
    leaked = _leaks(identity, response)
    assert not leaked, (f"cross-tenant read: {identity} got {leaked} from {case.method} {case.formatted_path} "
                        f"-> {response.status_code}")


_probed: set[str] = set()
NEGATIVE_IDENTITIES = {"buyer", "supplier", "regulator", "operator"}


@schema.parametrize()
@hsettings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_api(case, world, db):
    headers = world["headers"]
    positive = case.meta is None or not case.meta.generation.mode.is_negative
    # Schema-violating input is refused before anyone's objects are read: four identities are enough there.
    for identity, auth in headers.items():
        if positive or identity in NEGATIVE_IDENTITIES:
            _send(case, identity, auth)
    # Once per operation: the real ids of every tenant's objects, as every identity.
    label = case.operation.label
    real_ids = world["ids"].get(case.operation.path)
    if positive and real_ids and label not in _probed:
        _probed.add(label)
        name = next(iter(case.path_parameters))
        for value in real_ids:
            probe = case.operation.Case(path_parameters={name: value}, query=case.query, body=case.body,
                                        media_type=case.media_type) if case.body is not None else \
                case.operation.Case(path_parameters={name: value}, query=case.query)
            for identity, auth in headers.items():
                _send(probe, identity, auth)


def test_the_markers_reach_their_owners_and_the_check_sees_them(world, db):
    """The cross-tenant check is only as good as its markers: each tenant reads its own (so a marker missing
    from another tenant's answers means the object was withheld, not that it was never shown)."""
    from django.test import Client

    client = Client()

    def text(identity, path):
        response = client.get(path, headers=world["headers"][identity])
        assert response.status_code == 200, (identity, path, response.status_code)
        return response.content.decode()

    assert "zkAq-rest" in text("buyer", "/api/v1/orders/") and "zkFq-rest" in text("foreign", "/api/v1/orders/")
    assert "zkSq-bank" in text("supplier", "/api/v1/ledger/payouts/") and "zkAq-topup" in text("buyer", "/api/v1/ledger/top-ups/")
    assert "zkAUq-ind" in text("buyer", "/api/v1/vouchers/applications/") and "zkFUq-ind" in text("authority", "/api/v1/vouchers/applications/")
    assert "zkASq-dispute" in text("supplier", "/api/v1/metering/disputes/")
    assert "zkFq-rest" in text("regulator", "/api/v1/oversight/orders/")
    leaked = client.get("/api/v1/oversight/orders/", headers=world["headers"]["regulator"])
    assert _leaks("buyer", leaked) and not _leaks("regulator", leaked)
