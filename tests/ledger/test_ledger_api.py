"""Balances, accounts and statements over REST: own organisation only; regulators see all, read-only."""

import csv
import io

import pytest

from ledger import services
from ledger.models import AccountKind
from marketplace.models import PlatformRole
from tests.factories import OrganisationFactory, UserFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def funded():
    org = OrganisationFactory(kind="buyer", name="Moyuan")
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    available = services.account_for(organisation=org, kind="available")
    services.transfer(source=clearing, destination=available, amount_fen=1_000_000, idempotency_key="fund", kind="top_up", memo="opening")
    hold = services.hold_place(organisation=org, amount_fen=123_45, reference="order:7")
    services.hold_capture(hold=hold, amount_fen=100_00, destination=services.account_for(organisation=org, kind="escrow"), idempotency_key="trade:1")
    return org


def test_member_sees_balances_in_cny(api, funded):
    api.force_authenticate(member(funded, role="viewer"))
    body = api.get("/api/v1/ledger/balances/").json()
    assert body == {
        "organisation": funded.pk, "currency": "CNY", "available": "9876.55", "held": "23.45", "escrow": "100.00",
        "receivable": "0.00", "balances_fen": {"available": 987_655, "held": 2_345, "escrow": 10_000, "receivable": 0},
    }


def test_statement_lists_postings_newest_first_and_filters(api, funded):
    api.force_authenticate(member(funded))
    body = api.get("/api/v1/ledger/statement/").json()
    assert len(body["results"]) == 5 and "count" not in body and body["next"] is None  # cursor pages, no total
    two = api.get("/api/v1/ledger/statement/", {"page_size": 2}).json()
    rest = api.get(two["next"]).json()
    assert [r["amount"] for r in two["results"] + rest["results"]] == [r["amount"] for r in body["results"][:4]]
    assert [(r["entry_kind"], r["account_kind"], r["amount"], r["balance_after"]) for r in body["results"]] == [
        ("capture", "escrow", "100.00", "100.00"),
        ("capture", "held", "-100.00", "23.45"),
        ("hold", "held", "123.45", "123.45"),
        ("hold", "available", "-123.45", "9876.55"),
        ("top_up", "available", "10000.00", "10000.00"),
    ]
    body = api.get("/api/v1/ledger/statement/", {"account_kind": "available"}).json()
    assert [r["amount"] for r in body["results"]] == ["-123.45", "10000.00"]
    body = api.get("/api/v1/ledger/statement/", {"entry_kind": "top_up"}).json()
    assert [r["memo"] for r in body["results"]] == ["opening"]
    assert api.get("/api/v1/ledger/statement/", {"account_kind": "piggy"}).status_code == 400


def test_statement_csv_export_streams_every_row(api, funded):
    api.force_authenticate(member(funded))
    response = api.get("/api/v1/ledger/statement/", {"export": "csv", "account_kind": "available"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:6] == ["posting", "entry", "created_at", "entry_kind", "account_kind", "amount_cny"]
    assert [(r[3], r[5], r[6]) for r in rows[1:]] == [("hold", "-123.45", "9876.55"), ("top_up", "10000.00", "10000.00")]


def test_other_organisations_cannot_see_balances_or_statements(api, funded):
    rival = OrganisationFactory(name="Rival")
    api.force_authenticate(member(rival))
    assert api.get("/api/v1/ledger/balances/", {"organisation": funded.pk}).status_code == 404
    assert api.get("/api/v1/ledger/statement/", {"organisation": funded.pk}).status_code == 404
    accounts = api.get("/api/v1/ledger/accounts/").json()["results"]
    assert {a["organisation"] for a in accounts} == {rival.pk}
    api.force_authenticate(None)
    assert api.get("/api/v1/ledger/balances/").status_code in (401, 403)


def test_member_of_several_organisations_must_say_which(api, funded):
    user = member(funded)
    other = OrganisationFactory(name="Second")
    from marketplace.models import Membership

    Membership.objects.create(user=user, organisation=other, role="viewer")
    api.force_authenticate(user)
    response = api.get("/api/v1/ledger/balances/")
    assert response.status_code == 400 and "organisation" in response.json()
    assert api.get("/api/v1/ledger/balances/", {"organisation": other.pk}).json()["available"] == "0.00"


def test_regulator_reads_every_organisation_and_writes_nothing(api, funded):
    api.force_authenticate(UserFactory(platform_role=PlatformRole.REGULATOR))
    assert api.get("/api/v1/ledger/balances/", {"organisation": funded.pk}).json()["escrow"] == "100.00"
    assert len(api.get("/api/v1/ledger/statement/", {"organisation": funded.pk}).json()["results"]) == 5
    assert api.get("/api/v1/ledger/accounts/").json()["count"] == 5  # four of the buyer's and the clearing account
    assert api.get("/api/v1/ledger/balances/").status_code == 404  # must name one
    assert api.post("/api/v1/ledger/balances/", {}).status_code == 405
