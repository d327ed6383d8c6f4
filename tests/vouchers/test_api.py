"""The vouchers API: who may do what, bad input answered 400/403/404 with nothing written."""

import datetime as dt

import pytest
from django.utils import timezone

from ledger.models import JournalEntry
from tests.factories import OrganisationFactory, UserFactory, member
from tests.vouchers.conftest import balance, programme, voucher_for
from vouchers import services
from vouchers.models import Application, Programme, Voucher

URL = "/api/v1/vouchers"


def _programme_body(**kw):
    now = timezone.now()
    body = {"code": "hz-30", "name": "Hangzhou-style", "valid_from": now.isoformat(), "valid_until": (now + dt.timedelta(days=365)).isoformat(),
            "rate_bps": 2000, "domestic_rate_bps": 3000, "org_cap_per_year": "8000000.00", "eligible_size_classes": ["micro", "small", "medium"]}
    body.update(kw)
    return body


@pytest.fixture
def sme(db):
    org = OrganisationFactory(kind="buyer", name="Lingang Robotics")
    return org, member(org, username="lg-admin")


def test_authority_creates_and_funds_a_programme(api, authority):
    api.force_authenticate(authority)
    r = api.post(f"{URL}/programmes/", _programme_body(), format="json")
    assert r.status_code == 201, r.json()
    assert (r.json()["org_cap_per_year_fen"], r.json()["budget_balance_fen"]) == (800_000_000, 0)
    pk = r.json()["id"]
    for _ in range(2):  # idempotent
        r = api.post(f"{URL}/programmes/{pk}/fund/", {"amount": "250000000.00", "idempotency_key": "2026"}, format="json")
        assert r.status_code == 200 and r.json()["budget_balance_fen"] == 25_000_000_000


@pytest.mark.parametrize("body, field", [
    ({"rate_bps": 0}, "rate_bps"),
    ({"rate_bps": 10_001}, "rate_bps"),
    ({"org_cap_per_year": "-1"}, "org_cap_per_year"),
    ({"eligible_size_classes": ["huge"]}, "eligible_size_classes"),
    ({"valid_until": "2020-01-01T00:00:00Z"}, "valid_until"),
    ({"rates": 1}, "rates"),
])
def test_bad_programme_input_is_400_and_writes_nothing(api, authority, body, field):
    api.force_authenticate(authority)
    r = api.post(f"{URL}/programmes/", _programme_body(**body), format="json")
    assert r.status_code == 400 and field in r.json()
    assert not Programme.objects.exists()


def test_only_an_authority_creates_or_funds(api, authority, sme):
    _, admin = sme
    for user in (admin, UserFactory(username="reg", platform_role="regulator"), UserFactory(username="op", platform_role="operator")):
        api.force_authenticate(user)
        assert api.post(f"{URL}/programmes/", _programme_body(), format="json").status_code == 403
    prog = programme(authority, budget_fen=0)
    api.force_authenticate(admin)
    assert api.post(f"{URL}/programmes/{prog.pk}/fund/", {"amount": "1.00", "idempotency_key": "x"}, format="json").status_code == 403
    assert api.post(f"{URL}/programmes/999/fund/", {"amount": "1.00", "idempotency_key": "x"}, format="json").status_code == 404
    assert Programme.objects.count() == 1 and not JournalEntry.objects.exists()


def _apply_body(prog, org, **kw):
    body = {"programme": prog.pk, "organisation": org.pk, "credit_code": org.credit_code, "declared_size_class": org.size_class,
            "requested_amount": "20000.00", "industry": "software", "idempotency_key": "apply-1"}
    body.update(kw)
    return body


def test_apply_approve_lower_and_read(api, authority, sme):
    org, admin = sme
    prog = programme(authority)
    api.force_authenticate(admin)
    r = api.post(f"{URL}/applications/", _apply_body(prog, org), format="json")
    assert r.status_code == 201 and r.json()["eligible"] is True and r.json()["status"] == "pending"
    assert api.post(f"{URL}/applications/", _apply_body(prog, org), format="json").status_code == 200  # replay
    app_id = r.json()["id"]
    assert api.post(f"{URL}/applications/{app_id}/approve/", {}, format="json").status_code == 403  # not an authority
    api.force_authenticate(authority)
    r = api.post(f"{URL}/applications/{app_id}/approve/", {"amount": "30000.00"}, format="json")
    assert r.status_code == 400 and "amount" in r.json()  # more than requested
    r = api.post(f"{URL}/applications/{app_id}/approve/", {"amount": "15000.00"}, format="json")
    assert r.status_code == 201 and (r.json()["amount_fen"], r.json()["balance_fen"]) == (1_500_000, 1_500_000)
    assert api.post(f"{URL}/applications/{app_id}/approve/", {}, format="json").status_code == 409
    api.force_authenticate(admin)
    v = api.get(f"{URL}/vouchers/{r.json()['id']}/").json()
    assert (v["balance_fen"], v["committed_fen"], v["paid_fen"], v["redemptions"]) == (1_500_000, 0, 0, [])


@pytest.mark.parametrize("change, status, field", [
    ({"credit_code": "91310115MA1K000000"}, 400, "credit_code"),
    ({"declared_size_class": "large"}, 400, "declared_size_class"),
    ({"requested_amount": "0"}, 400, "requested_amount"),
    ({"requested_amount": "1.001"}, 400, "requested_amount"),
    ({"programme": 999}, 404, "programme"),
    ({"extra": 1}, 400, "extra"),
])
def test_bad_applications_write_nothing(api, authority, sme, change, status, field):
    org, admin = sme
    prog = programme(authority)
    api.force_authenticate(admin)
    r = api.post(f"{URL}/applications/", _apply_body(prog, org, **change), format="json")
    assert r.status_code == status and field in r.json()
    assert not Application.objects.exists()


def test_application_from_a_non_sme_or_to_an_expired_programme_is_400(api, authority):
    big = OrganisationFactory(kind="buyer", size_class="large")
    admin = member(big, username="big-admin")
    prog = programme(authority)
    api.force_authenticate(admin)
    r = api.post(f"{URL}/applications/", _apply_body(prog, big), format="json")
    assert r.status_code == 400 and "declared_size_class" in r.json()
    small = OrganisationFactory(kind="buyer")
    admin2 = member(small, username="small-admin")
    old = programme(authority, code="old", now=timezone.now() - dt.timedelta(days=500))
    api.force_authenticate(admin2)
    r = api.post(f"{URL}/applications/", _apply_body(old, small), format="json")
    assert r.status_code == 400 and r.json() == {"programme": ["The programme is not open for applications."]}
    assert not Application.objects.exists()


def test_applying_for_an_organisation_you_do_not_administer_is_404(api, authority, sme):
    org, _ = sme
    other = OrganisationFactory(kind="buyer")
    trader = member(org, role="trader", username="lg-trader")
    prog = programme(authority)
    for user, target in ((member(other, username="other-admin"), org), (trader, org)):
        api.force_authenticate(user)
        assert api.post(f"{URL}/applications/", _apply_body(prog, target), format="json").status_code == 404
    assert not Application.objects.exists()


def test_reject_needs_a_reason(api, authority, sme):
    org, admin = sme
    prog = programme(authority)
    app, _ = services.application_submit(user=admin, programme=prog, organisation=org, credit_code=org.credit_code,
                                         declared_size_class="small", requested_fen=100, idempotency_key="k")
    api.force_authenticate(authority)
    assert api.post(f"{URL}/applications/{app.pk}/reject/", {"reason": ""}, format="json").status_code == 400
    assert api.post(f"{URL}/applications/999/reject/", {"reason": "no"}, format="json").status_code == 404
    r = api.post(f"{URL}/applications/{app.pk}/reject/", {"reason": "not based in the city"}, format="json")
    assert r.status_code == 200 and (r.json()["status"], r.json()["reason"]) == ("rejected", "not based in the city")
    api.force_authenticate(admin)
    assert api.get(f"{URL}/applications/{app.pk}/").json()["reason"] == "not based in the city"


def test_another_organisations_voucher_and_evidence_are_404(api, authority, sme, deal):
    org, admin = sme
    prog = programme(authority)
    v = voucher_for(authority, deal["buyer"], prog)
    r = services.redemption_commit(contract_id=deal["contract"].pk)
    api.force_authenticate(admin)
    assert api.get(f"{URL}/vouchers/{v.pk}/").status_code == 404
    assert api.get(f"{URL}/redemptions/{r.pk}/evidence/").status_code == 404
    assert api.get(f"{URL}/vouchers/").json()["results"] == []
    assert api.get(f"{URL}/redemptions/").json()["results"] == []
    for bad in ("1" * 31, "²", "x"):  # not an id: a field error (31 digits overflowed SQLite: a 500)
        response = api.get(f"{URL}/redemptions/", {"voucher": bad})
        assert response.status_code == 400 and "voucher" in response.json(), bad
    assert api.get(f"{URL}/programmes/{prog.pk}/report/").status_code == 403
    # The buyer's own members see it all.
    api.force_authenticate(deal["buyer_user"])
    assert api.get(f"{URL}/vouchers/{v.pk}/").json()["committed_fen"] == 3000
    pack = api.get(f"{URL}/redemptions/{r.pk}/evidence/").json()
    assert pack["redemption"]["committed_fen"] == 3000 and pack["contract"]["id"] == deal["contract"].pk
    keys = [e["key"] for e in pack["ledger"]]
    c = deal["contract"]
    assert keys[0] == f"trade:{c.instrument_id}:{c.trade.seq}:escrow" and f"redemption:{c.pk}:commit" in keys
    assert f"voucher:{v.pk}:issue" in keys
    assert balance(v.account) == v.amount_fen - 3000


def test_reports_and_csv_for_authority_and_regulator(api, authority, deal):
    prog = programme(authority)
    voucher_for(authority, deal["buyer"], prog)
    services.redemption_commit(contract_id=deal["contract"].pk)
    for user in (authority, UserFactory(username="reg", platform_role="regulator")):
        api.force_authenticate(user)
        rep = api.get(f"{URL}/programmes/{prog.pk}/report/?by=supplier").json()
        assert rep["groups"] == [{"key": "Qingpu Compute", "contracts": 1, "blocked": 0, "value_fen": 15000, "committed_fen": 3000, "paid_fen": 0, "released_fen": 0}]
        assert rep["domestic_share"] is None and rep["issued_fen"] == 1_000_000
        csv = api.get(f"{URL}/programmes/{prog.pk}/report/?by=domestic&export=csv")
        assert csv["Content-Type"].startswith("text/csv")
        assert csv.content.decode().splitlines() == ["domestic,contracts,blocked,value_fen,committed_fen,paid_fen,released_fen", "imported,1,0,15000,3000,0,0"]
        rows = api.get(f"{URL}/redemptions/?export=csv").content.decode().splitlines()
        assert len(rows) == 2 and rows[1].split(",")[5] == "committed"
    assert api.get(f"{URL}/programmes/{prog.pk}/report/?by=colour").status_code == 400


def test_profile_declaration_only_by_the_admin(api, sme):
    org, admin = sme
    other = OrganisationFactory(kind="buyer")
    api.force_authenticate(admin)
    r = api.post(f"{URL}/profile/", {"organisation": org.pk, "group_name": "Moyuan Group", "officers": ["A1"], "industry": "biotech"}, format="json")
    assert r.status_code == 200 and r.json()["officers"] == ["A1"]
    assert api.post(f"{URL}/profile/", {"organisation": other.pk, "group_name": "x"}, format="json").status_code == 404
    assert api.post(f"{URL}/profile/", {"organisation": org.pk, "officers": "A1"}, format="json").status_code == 400


def test_approval_past_the_budget_is_refused_and_writes_nothing(api, authority):
    prog = programme(authority, budget_fen=10_000)
    org = OrganisationFactory(kind="buyer")
    admin = member(org, username="a")
    app, _ = services.application_submit(user=admin, programme=prog, organisation=org, credit_code=org.credit_code,
                                         declared_size_class="small", requested_fen=10_001, idempotency_key="k")
    api.force_authenticate(authority)
    r = api.post(f"{URL}/applications/{app.pk}/approve/", {}, format="json")
    assert r.status_code == 400 and r.json() == {"amount": ["The programme budget has 100.00 CNY left."]}
    assert not Voucher.objects.exists() and balance(prog.budget_account) == 10_000
    app.refresh_from_db()
    assert app.status == "pending"


def test_a_second_application_to_the_same_programme_is_409(api, authority, sme):
    org, admin = sme
    prog = programme(authority)
    api.force_authenticate(admin)
    assert api.post(f"{URL}/applications/", _apply_body(prog, org), format="json").status_code == 201
    r = api.post(f"{URL}/applications/", _apply_body(prog, org, idempotency_key="apply-2"), format="json")
    assert r.status_code == 409 and "programme" in r.json()
    r = api.post(f"{URL}/applications/", _apply_body(prog, org, requested_amount="1.00"), format="json")
    assert r.status_code == 409 and "idempotency_key" in r.json()
    assert Application.objects.count() == 1
