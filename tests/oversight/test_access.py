"""Access, endpoint by endpoint, walked from config.urls: a regulator reads everything and writes nothing
but its own alert reviews; a member of another organisation gets 404 for whatever is not its own."""

import re
import warnings
from decimal import Decimal

import pytest
from django.apps import apps
from django.urls import get_resolver

from exchange.models import Contract, Order
from ledger.models import Account
from marketplace.models import Instrument, Listing, MemberRole, Membership
from oversight.models import Alert
from scheduling import services as scheduling
from tests.factories import OrganisationFactory, member
from tests.oversight.voucher_helpers import approved_voucher
from tests.security.harness import walk

pytestmark = pytest.mark.django_db

# Writes a regulator may make, and why.
REGULATOR_MAY_WRITE = {
    "api-token": "signing in",
    "api-key-list": "its own API keys (a key never exceeds its user's roles: read-only here)",
    "api-key-detail": "its own API keys", "api-key-revoke": "its own API keys",
    "oversight-alert-review": "its own alert reviews",
    "alert-review": "its own alert reviews (the portal's form)",
    "ledger-stripe-webhook": "not a user endpoint: Stripe signs it, no session or token is read",
    "set_language": "a language cookie, no data",
    "healthz": "a liveness check: answers any method and writes nothing",
    "login": "signing in", "logout": "signing out",
}

# Readable by anyone: the public catalogue and market data.
PUBLIC_DETAIL = {"organisation-detail", "data-centre-detail", "device-model-detail", "product-detail", "instrument-detail",
                 "instrument-book", "instrument-ticker", "instrument-candles",
                 "instrument-halt", "instrument-resume",  # public objects; halting is the operator's (403 is right)
                 "instrument",  # the portal's instrument page
                 "voucher-programme", "voucher-programme-fund", "voucher-programme-report"}  # published programmes; the authority's actions
WRITE_METHODS = ("post", "put", "patch", "delete")


def endpoints():
    """(route, name) for every URL of the project but the Django admin and DRF's `.json` duplicates."""
    return [(r, n) for r, n in walk(get_resolver().url_patterns) if not r.startswith("admin/") and "format" not in r]


def concrete(route: str, values: dict) -> str:
    route = route.replace("^", "").replace("$", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(values[m.group(1)]), route)
    route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)
    return "/" + route


@pytest.fixture
def world(api, market, trader):
    """Buyer 1 has an open order, a fill, a top-up and a contract; supplier 1 a payout and a listing."""
    m = market
    supplier_admin = member(m["supplier1"], role=MemberRole.ADMIN, username="s1-admin")
    buyer_admin = member(m["buyer1"], role=MemberRole.ADMIN, username="b1-admin")
    voucher = approved_voucher(m["buyer1"], buyer_admin)
    trader.trade(m["seller1"], m["buyer_user1"], "15.00", 2)
    resting = trader.place(m["buyer_user1"], "buy", "14.50", 3)
    api.force_authenticate(buyer_admin)
    top_up = api.post("/api/v1/ledger/top-ups/", {"amount": "100.00"}, HTTP_IDEMPOTENCY_KEY="w-1").json()
    api.force_authenticate(supplier_admin)
    payout = api.post("/api/v1/ledger/payouts/", {"amount": "10.00", "destination": "ICBC 6222"}, HTTP_IDEMPOTENCY_KEY="w-2").json()
    contract = Contract.objects.get()
    alert = Alert.objects.create(kind="wash_trade", severity="high", fingerprint="t", summary="t", organisation=m["buyer1"])
    values = {
        "order-detail": resting["id"], "order-by-client-id": resting["client_order_id"],
        "instrument": m["instrument"].pk, "organisation-detail": m["buyer1"].pk,
        "data-centre-detail": m["listing1"].data_centre_id, "device-model-detail": m["listing1"].device_model_id,
        "product-detail": m["product"].pk, "listing-detail": m["listing1"].pk,
        "ledger-top-up": top_up["id"], "ledger-payout": payout["id"], "metering-contract": contract.pk,
        "oversight-alert": alert.pk, "alert-review": alert.pk,
        "voucher-programme": voucher.programme_id, "voucher-application": voucher.application_id, "voucher-detail": voucher.pk,
        "voucher-redemption": _redemption(contract).pk,
    }
    values["risk-limit"] = m["buyer1"].pk  # an organisation's risk limits (the id is the organisation's)
    from django.utils import timezone

    from exchange.models import KillSwitch

    values["risk-kill-switch"] = KillSwitch.objects.create(  # released: it stops nothing the walks do
        scope="instrument", instrument=m["instrument"], reason="drill", pulled_by=buyer_admin,
        released_at=timezone.now(), released_by=buyer_admin).pk
    values["demand"] = scheduling.demand_create(user=m["buyer_user1"], organisation=m["buyer1"], fields={
        "client_demand_id": "w-demand", "quantity": Decimal("1"), "earliest_start": m["instrument"].delivery_start,
        "deadline": m["instrument"].delivery_end})[0].pk
    dispute_model = _model("metering", "Dispute")
    if dispute_model is not None:
        values["metering-dispute"] = dispute_model.objects.create(contract=contract, reason="short", opened_by=m["buyer_user1"], delivered_before_micro=0).pk
    outsider_org = OrganisationFactory(name="Outsider", kind="both")
    return {**m, "values": values, "outsider": member(outsider_org, role=MemberRole.ADMIN, username="outsider"),
            "order_id": resting["id"], "contract": contract}


def _redemption(contract):
    from vouchers import services as vouchers
    from vouchers.models import Redemption

    vouchers.redemption_commit(contract_id=contract.pk)
    return Redemption.objects.get(contract=contract)


def _model(app, name):
    try:
        return apps.get_model(app, name)
    except LookupError:
        return None


def url_for(world, route, name):
    """The route with the world's id for it. An endpoint the world has no object for (one added since this
    test was written) gets an id that does not exist and is listed in UNMAPPED: the write walk still
    requires a refusal, the read and outsider walks skip it, and the run warns so someone adds it."""
    values = world["values"]
    key = next((k for k in values if name == k or name.startswith(k + "-") or name.startswith(k)), None)
    params = {}
    for param in re.findall(r"\(\?P<(\w+)>|<(?:\w+:)?(\w+)>", route):
        param = param[0] or param[1]
        if key is None:
            UNMAPPED.add(name)
            params[param] = "no-such-id" if param.endswith("id") and param != "pk" else 999_999
        else:
            params[param] = values[key]
    return concrete(route, params)


UNMAPPED: set[str] = set()


def warn_unmapped():
    if UNMAPPED:
        warnings.warn(f"access walk: no object for {sorted(UNMAPPED)}; add them to the world in tests/oversight/test_access.py", stacklevel=2)


def snapshot():
    """Row counts of every model, plus the state that a write would move."""
    counts = {m._meta.label: m._default_manager.count() for m in apps.get_models() if not m._meta.proxy}
    counts.pop("sessions.Session", None)
    return (counts, list(Order.objects.order_by("id").values_list("id", "status", "quantity", "price_fen_per_lot", "cancel_requested_at")),
            list(Account.objects.order_by("id").values_list("id", "balance_fen")),
            list(Listing.objects.order_by("id").values_list("id", "is_active", "device_count")),
            list(Instrument.objects.order_by("id").values_list("id", "status")),
            list(Alert.objects.order_by("id").values_list("id", "status")))


BODIES = {
    "orders": lambda w: {"instrument": w["instrument"].pk, "side": "buy", "price": "15.00", "quantity": 1, "client_order_id": "reg-1"},
    "listing-list": lambda w: {"data_centre": w["listing1"].data_centre_id, "product": w["product"].pk, "device_model": w["listing1"].device_model_id,
                               "device_count": 1, "available_from": "2030-01-01T00:00:00Z", "available_until": "2030-01-02T00:00:00Z"},
    "ledger-top-up-list": lambda w: {"amount": "100.00"},
    "ledger-payout-list": lambda w: {"amount": "1.00", "destination": "x"},
    "order-detail": lambda w: {"price": "14.60"},
    "oversight-attestations": lambda w: {"contract": w["contract"].pk, "method": "deleted"},
    "metering-contract-dispute": lambda w: {"reason": "short delivery"},
    "metering-dispute-resolve": lambda w: {"delivered_units": "1", "resolution": "agreed"},
    "voucher-programme-fund": lambda w: {"amount": "100.00"},
    "voucher-application-reject": lambda w: {"reason": "not eligible"},
    "wallet": lambda w: [{"action": "top_up", "amount": "100.00"}, {"action": "payout", "amount": "1.00", "destination": "ICBC 1"}],
}


@pytest.mark.parametrize("also_member", [False, True], ids=["regulator", "regulator-who-is-also-a-buyer-admin"])
def test_a_regulator_writes_nothing_anywhere(api, world, also_member):
    """Every write method on every API endpoint is refused (403, or 405 where the endpoint has no such
    method), with a body that would be valid for anyone allowed. Server-rendered pages answer any method by
    rendering, so for them the proof is the database: no row anywhere changes, with form bodies that would
    move money for a member. Signed in by token and by session; also when the regulator is an admin of a
    buyer (a regulator's role must win over its membership)."""
    regulator = world["regulator"]
    if also_member:
        Membership.objects.create(user=regulator, organisation=world["buyer1"], role=MemberRole.ADMIN)
    api.force_authenticate(regulator)
    api.force_login(regulator)
    before = snapshot()
    checked, problems = 0, []
    for route, name in endpoints():
        if name in REGULATOR_MAY_WRITE:
            continue
        url = url_for(world, route, name)
        bodies = BODIES.get(name, lambda w: {})(world)
        for body in bodies if isinstance(bodies, list) else [bodies]:
            for method in WRITE_METHODS:
                if route.startswith("api/"):
                    response = getattr(api, method)(url, body, format="json", HTTP_IDEMPOTENCY_KEY=f"reg-{checked}")
                    if response.status_code not in (403, 405) and not (name in UNMAPPED and response.status_code == 404):
                        problems.append(f"{method.upper()} {url} ({name}): {response.status_code}")
                else:
                    getattr(api, method)(url, body) if method == "post" else getattr(api, method)(url)
                checked += 1
                assert snapshot() == before, f"{method.upper()} {url} ({name}) with {body} changed the database"
    assert problems == [], "\n".join(problems)
    assert checked >= 4 * 40
    warn_unmapped()


# Portal pages for an organisation's members: a regulator, a member of none, is refused them (it reads
# the same data through /regulator/ and the API).
MEMBER_PAGES = {"orders", "wallet", "statement-csv", "supplier", "vouchers", "metering-upload",
                "voucher-review"}  # the authority's review page (the regulator reads decisions through the API)


def test_a_regulator_reads_every_endpoint(api, world):
    api.force_authenticate(world["regulator"])
    api.force_login(world["regulator"])
    problems = []
    for route, name in endpoints():
        if name in ("ledger-stripe-webhook", "set_language", "login", "logout"):
            continue  # not data (the sign-in page sends a signed-in user on)
        url = url_for(world, route, name)
        if name in UNMAPPED:
            continue
        params = {"organisation": world["buyer1"].pk} if name in ("ledger-balances", "ledger-statement") else {}
        try:
            status = api.get(url, params).status_code
        except Exception:  # the test client re-raises a view's exception: a 500 for a user
            status = 500
        if name in MEMBER_PAGES and status == 403:
            continue
        if status not in (200, 405):  # 405: a write-only endpoint (an action)
            problems.append(f"GET {url} ({name}): {status}")
    # By client order id is per organisation (ids are unique only within one); regulators read orders by
    # client_order_id through /oversight/orders/?client_order_id=&organisation=.
    assert set(problems) == {f"GET /api/v1/orders/by-client-id/{world['values']['order-by-client-id']}/ (order-by-client-id): 404"}


def test_another_organisations_ids_are_indistinguishable_from_ids_that_do_not_exist(api, world):
    """For every endpoint that takes an id of something private to buyer 1 or supplier 1, a member of an
    unrelated organisation gets exactly what it gets for an id that does not exist (404 nearly
    everywhere; an action only an authority or operator may take is refused before any lookup), and never
    a success. Nothing is written."""
    api.force_authenticate(world["outsider"])
    api.force_login(world["outsider"])
    nowhere = {k: ("no-such-id" if isinstance(v, str) else 999_999) for k, v in world["values"].items()}
    before = snapshot()
    problems, not_404 = [], set()
    for route, name in endpoints():
        if re.search(r"\(\?P<|<", route) is None or name in PUBLIC_DETAIL or name.startswith("oversight-"):
            continue
        url, missing = url_for(world, route, name), url_for({"values": nowhere}, route, name)
        if name in UNMAPPED:
            continue
        bodies = BODIES.get(name, lambda w: {})(world)
        for body in bodies if isinstance(bodies, list) else [bodies]:
            for method in ("get", *WRITE_METHODS):
                foreign = getattr(api, method)(url, body, format="json", HTTP_IDEMPOTENCY_KEY="o-1").status_code
                absent = getattr(api, method)(missing, body, format="json", HTTP_IDEMPOTENCY_KEY="o-2").status_code
                if foreign != absent or foreign < 400:
                    problems.append(f"{method.upper()} {url} ({name}): {foreign}, for a missing id {absent}")
                elif foreign not in (404, 405):
                    not_404.add(f"{name}: {foreign}")
    assert problems == [], "\n".join(problems)
    assert not_404 == {"voucher-application-approve: 403", "voucher-application-reject: 403",  # the authority's actions
                       "alert-review: 403",  # the regulator's
                       "risk-limit: 403", "risk-kill-switch: 403"}  # the operator's (regulators read)
    assert snapshot() == before


def test_another_organisation_sees_none_of_buyer_ones_orders_fills_or_balances(api, world):
    buyer1 = world["buyer1"]
    api.force_authenticate(world["outsider"])
    assert api.get("/api/v1/orders/", {"organisation": buyer1.pk}).json()["results"] == []
    assert api.get("/api/v1/fills/").json()["results"] == []
    assert api.get("/api/v1/ledger/accounts/", {"organisation": buyer1.pk}).json()["results"] == []
    assert api.get("/api/v1/ledger/balances/", {"organisation": buyer1.pk}).status_code == 404
    assert api.get("/api/v1/ledger/statement/", {"organisation": buyer1.pk}).status_code == 404
    assert api.get("/api/v1/ledger/statement/", {"organisation": buyer1.pk, "export": "csv"}).status_code == 404
    assert api.get("/api/v1/ledger/top-ups/").json()["results"] == []
    # while buyer 1's own trader sees them
    api.force_authenticate(world["buyer_user1"])
    assert len(api.get("/api/v1/fills/").json()["results"]) == 1
    assert api.get(f"/api/v1/orders/{world['order_id']}/").status_code == 200


def test_oversight_endpoints_are_for_regulators_and_operators_only(api, world):
    for user in (world["buyer_user1"], world["seller1"], world["outsider"]):
        api.force_authenticate(user)
        for route, name in endpoints():
            if not name.startswith("oversight-") or name.startswith("oversight-attestations"):
                continue
            url = url_for(world, route, name)
            assert api.get(url).status_code == 403, url
    api.logout()
    assert api.get("/api/v1/oversight/trades/").status_code in (401, 403)


def test_a_regulator_is_kept_out_of_the_django_admin(client, world):
    client.force_login(world["regulator"])
    for url in ("/admin/", "/admin/exchange/order/", f"/admin/marketplace/listing/{world['listing1'].pk}/change/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    response = client.post(f"/admin/marketplace/listing/{world['listing1'].pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and Listing.objects.filter(pk=world["listing1"].pk).exists()
