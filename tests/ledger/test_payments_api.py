"""The payments API: who may do what, Idempotency-Key behaviour, and bad input refused with field messages
and nothing written."""

import pytest
from django.test import override_settings

from ledger.models import Payout, TopUp
from ledger.payments import services
from ledger.selectors import balances_get
from marketplace.models import MemberRole, Membership
from tests.factories import OrganisationFactory
from tests.ledger.payments_helpers import cast, fund, ledger_snapshot

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stripe_off")]
TOP_UPS = "/api/v1/ledger/top-ups/"
PAYOUTS = "/api/v1/ledger/payouts/"


@pytest.fixture
def stripe_off():
    with override_settings(STRIPE_SECRET_KEY=""):
        yield


@pytest.fixture
def people():
    return cast()


@pytest.fixture
def rows(people):
    """A pending top-up of the buyer's and a requested payout of the supplier's."""
    fund(people.supplier, 50_000)
    top_up, _ = services.top_up_create(organisation=people.buyer, amount_fen=10_000, idempotency_key="t")
    payout, _ = services.payout_request(organisation=people.supplier, amount_fen=20_000, destination="bank", idempotency_key="p")
    return top_up, payout


# --- Idempotency-Key -------------------------------------------------------------------------------------

def test_create_without_an_idempotency_key_is_refused(api, people):
    api.force_authenticate(people.buyer_admin)
    response = api.post(TOP_UPS, {"amount": "10"})
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["idempotency_key"][0]
    too_long = api.post(TOP_UPS, {"amount": "10"}, HTTP_IDEMPOTENCY_KEY="k" * 201)
    assert too_long.status_code == 400
    assert not TopUp.objects.exists()


def test_same_key_same_body_is_the_same_object_and_a_different_body_is_a_conflict(api, people):
    api.force_authenticate(people.buyer_admin)
    first = api.post(TOP_UPS, {"amount": "10.50", "bank_reference": "A"}, HTTP_IDEMPOTENCY_KEY="k")
    replay = api.post(TOP_UPS, {"amount": "10.5", "bank_reference": "A"}, HTTP_IDEMPOTENCY_KEY="k")
    other_amount = api.post(TOP_UPS, {"amount": "11", "bank_reference": "A"}, HTTP_IDEMPOTENCY_KEY="k")
    other_reference = api.post(TOP_UPS, {"amount": "10.50", "bank_reference": "B"}, HTTP_IDEMPOTENCY_KEY="k")
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert other_amount.status_code == 409 and "different request" in other_amount.json()["idempotency_key"][0]
    assert other_reference.status_code == 409
    assert TopUp.objects.count() == 1


def test_payout_replay_holds_once_and_a_changed_body_is_a_conflict(api, people):
    fund(people.supplier, 50_000)
    api.force_authenticate(people.supplier_admin)
    first = api.post(PAYOUTS, {"amount": "100", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="k")
    replay = api.post(PAYOUTS, {"amount": "100.00", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="k")
    before = ledger_snapshot()
    conflict = api.post(PAYOUTS, {"amount": "100", "destination": "another bank"}, HTTP_IDEMPOTENCY_KEY="k")
    assert (first.status_code, replay.status_code, conflict.status_code) == (201, 200, 409)
    assert ledger_snapshot() == before
    assert balances_get(organisation=people.supplier) == {"available": 40_000, "held": 10_000, "escrow": 0, "receivable": 0}


def test_the_same_key_in_two_organisations_is_two_objects(api, people):
    second_buyer = OrganisationFactory(kind="buyer")
    Membership.objects.create(user=people.buyer_admin, organisation=second_buyer, role=MemberRole.ADMIN)
    api.force_authenticate(people.buyer_admin)
    ambiguous = api.post(TOP_UPS, {"amount": "1"}, HTTP_IDEMPOTENCY_KEY="k")
    assert ambiguous.status_code == 400 and "several organisations" in ambiguous.json()["organisation"][0]
    a = api.post(TOP_UPS, {"amount": "1", "organisation": people.buyer.pk}, HTTP_IDEMPOTENCY_KEY="k")
    b = api.post(TOP_UPS, {"amount": "1", "organisation": second_buyer.pk}, HTTP_IDEMPOTENCY_KEY="k")
    assert (a.status_code, b.status_code) == (201, 201)
    assert (a.json()["organisation"], b.json()["organisation"]) == (people.buyer.pk, second_buyer.pk)


def test_refund_needs_an_idempotency_key(api, people, rows):
    top_up, _ = rows
    services.top_up_confirm(top_up=top_up, operator=people.operator)
    api.force_authenticate(people.operator)
    response = api.post(f"{TOP_UPS}{top_up.pk}/refund/", {"amount": "1"})
    assert response.status_code == 400 and "idempotency_key" in response.json()
    assert balances_get(organisation=people.buyer)["available"] == 10_000


# --- Bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"amount": "0"}, "amount"),
    ({"amount": "-5.00"}, "amount"),
    ({"amount": "1.005"}, "amount"),
    ({"amount": "abc"}, "amount"),
    ({"amount": "NaN"}, "amount"),
    ({}, "amount"),
    ({"amount": "10", "currency": "usd"}, "currency"),
    ({"amount": "10", "provider": "paypal"}, "provider"),
    ({"amount": "10", "organisation": 10**9}, "organisation"),
])
def test_bad_top_up_input_is_a_field_error_and_writes_nothing(api, people, body, field):
    api.force_authenticate(people.buyer_admin)
    before = ledger_snapshot()
    response = api.post(TOP_UPS, body, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code in (400, 404) and field in response.json(), response.json()
    assert ledger_snapshot() == before and not TopUp.objects.exists()


def test_messages_say_what_is_wrong_with_an_amount(api, people):
    api.force_authenticate(people.buyer_admin)
    assert api.post(TOP_UPS, {"amount": "0"}, HTTP_IDEMPOTENCY_KEY="a").json() == {"amount": ['Must be a positive amount in CNY, e.g. "100.00".']}
    assert "2 decimal places" in api.post(TOP_UPS, {"amount": "1.001"}, HTTP_IDEMPOTENCY_KEY="b").json()["amount"][0]
    assert api.post(TOP_UPS, {"amount": "1", "colour": "red"}, HTTP_IDEMPOTENCY_KEY="c").json() == {"colour": ["Unknown field."]}


@pytest.mark.parametrize(("body", "field"), [
    ({"amount": "1"}, "destination"),
    ({"amount": "1", "destination": "  "}, "destination"),
    ({"amount": "0.001", "destination": "bank"}, "amount"),
    ({"amount": "1", "destination": "bank", "fee": "0"}, "fee"),
])
def test_bad_payout_input_is_a_field_error_and_writes_nothing(api, people, body, field):
    fund(people.supplier, 10_000)
    api.force_authenticate(people.supplier_admin)
    before = ledger_snapshot()
    response = api.post(PAYOUTS, body, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 400 and field in response.json(), response.json()
    assert ledger_snapshot() == before and not Payout.objects.exists()


# --- Permissions -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("who", "expected"), [
    ("buyer_admin", 201), ("buyer_trader", 201), ("buyer_viewer", 403), ("supplier_admin", 403),
    ("outsider", 201), ("operator", 404), ("regulator", 403),
])
def test_who_may_create_a_top_up(api, people, who, expected):
    # the outsider is an admin of an organisation that both buys and supplies, so it tops up its own wallet
    api.force_authenticate(getattr(people, who))
    response = api.post(TOP_UPS, {"amount": "1"}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == expected, response.json()


def test_a_member_cannot_top_up_another_organisation(api, people):
    api.force_authenticate(people.buyer_admin)
    response = api.post(TOP_UPS, {"amount": "1", "organisation": people.supplier.pk}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 404 and not TopUp.objects.exists()


@pytest.mark.parametrize(("who", "expected"), [
    ("supplier_admin", 201), ("supplier_trader", 403), ("buyer_admin", 403), ("operator", 404), ("regulator", 403),
])
def test_who_may_request_a_payout(api, people, who, expected):
    fund(people.supplier, 10_000)
    fund(people.buyer, 10_000)
    api.force_authenticate(getattr(people, who))
    response = api.post(PAYOUTS, {"amount": "1", "destination": "bank"}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == expected, response.json()


def test_members_read_their_own_rows_and_foreign_ids_are_404(api, people, rows):
    top_up, payout = rows
    api.force_authenticate(people.buyer_viewer)
    listed = api.get(TOP_UPS).json()
    assert [row["id"] for row in listed["results"]] == [top_up.pk]
    assert api.get(f"{TOP_UPS}{top_up.pk}/").json()["amount"] == "100.00"
    assert api.get(PAYOUTS).json()["results"] == []
    assert api.get(f"{PAYOUTS}{payout.pk}/").status_code == 404
    api.force_authenticate(people.outsider)
    assert api.get(f"{TOP_UPS}{top_up.pk}/").status_code == 404
    assert api.post(f"{TOP_UPS}{top_up.pk}/confirm/").status_code == 404
    assert api.post(f"{PAYOUTS}{payout.pk}/cancel/").status_code == 404


def test_regulators_read_everything_and_write_nothing(api, people, rows):
    top_up, payout = rows
    api.force_authenticate(people.regulator)
    assert {row["id"] for row in api.get(TOP_UPS).json()["results"]} == {top_up.pk}
    assert api.get(f"{PAYOUTS}{payout.pk}/").status_code == 200
    before = ledger_snapshot()
    for url in (f"{TOP_UPS}{top_up.pk}/confirm/", f"{TOP_UPS}{top_up.pk}/reject/", f"{PAYOUTS}{payout.pk}/pay/",
                f"{PAYOUTS}{payout.pk}/fail/", f"{PAYOUTS}{payout.pk}/cancel/"):
        assert api.post(url).status_code == 403, url
    assert api.post(f"{TOP_UPS}{top_up.pk}/refund/", {}, HTTP_IDEMPOTENCY_KEY="r").status_code == 403
    assert ledger_snapshot() == before


def test_only_operators_confirm_pay_and_refund(api, people, rows):
    top_up, payout = rows
    before = ledger_snapshot()
    api.force_authenticate(people.buyer_admin)
    assert api.post(f"{TOP_UPS}{top_up.pk}/confirm/").status_code == 403
    assert api.post(f"{TOP_UPS}{top_up.pk}/refund/", {}, HTTP_IDEMPOTENCY_KEY="r").status_code == 403
    api.force_authenticate(people.supplier_admin)
    assert api.post(f"{PAYOUTS}{payout.pk}/pay/").status_code == 403
    assert api.post(f"{PAYOUTS}{payout.pk}/fail/").status_code == 403
    assert ledger_snapshot() == before
    assert balances_get(organisation=people.buyer)["available"] == 0


def test_filters_and_anonymous_access(api, people, rows):
    assert api.get(TOP_UPS).status_code in (401, 403)
    assert api.post(TOP_UPS, {"amount": "1"}, HTTP_IDEMPOTENCY_KEY="k").status_code in (401, 403)
    api.force_authenticate(people.operator)
    assert len(api.get(TOP_UPS, {"status": "pending"}).json()["results"]) == 1
    assert api.get(TOP_UPS, {"status": "succeeded"}).json()["results"] == []
    assert len(api.get(PAYOUTS, {"organisation": people.supplier.pk}).json()["results"]) == 1


def test_the_process_says_once_that_stripe_is_off(caplog, monkeypatch):
    from ledger.payments import base

    monkeypatch.setattr(base, "_announced", False)
    with caplog.at_level("INFO", logger="ledger.payments"):
        base.announce()
        base.announce()
    assert [r.getMessage() for r in caplog.records] == [
        "Payments: Stripe off (STRIPE_SECRET_KEY unset); top-ups and payouts use bank transfer (offline), confirmed by an operator."
    ]
