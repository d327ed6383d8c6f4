"""Each programme rule: rates, caps, eligibility, product rules, anti-fraud, one claim per contract, expiry."""

import datetime as dt

import pytest
from django.utils import timezone

from exchange.models import Contract
from ledger.verify import ledger_verify
from marketplace.models import Listing, Organisation
from metering import services as metering
from tests.factories import OrganisationFactory, ascend, member
from tests.vouchers.conftest import (
    DAY,
    balance,
    event,
    more_contract,
    org_balances,
    post_events,
    programme,
    voucher_for,
)
from vouchers import services
from vouchers.models import Application, Redemption, Voucher


def commit(deal, contract=None):
    return services.redemption_commit(contract_id=(contract or deal["contract"]).pk)


def second_contract(deal, api, lots=10, tag="2"):
    return more_contract(deal, api, lots, tag)


# --- Rates ---------------------------------------------------------------------------------------------

def test_base_rate(deal, authority):
    voucher_for(authority, deal["buyer"], programme(authority, domestic_rate_bps=3000, startup_rate_bps=5000))
    r = commit(deal)
    assert (r.rate_bps, r.rate_kind, r.committed_fen) == (2000, "base", 3000)


def test_domestic_chip_rate(deal, authority):
    Listing.objects.filter(pk=deal["listing"].pk).update(device_model=ascend())
    voucher_for(authority, deal["buyer"], programme(authority, domestic_rate_bps=3000))
    r = commit(deal)
    assert (r.rate_bps, r.rate_kind, r.committed_fen) == (3000, "domestic", 4500)


def test_startup_rate_applies_to_young_buyers_only(deal, authority):
    Organisation.objects.filter(pk=deal["buyer"].pk).update(founded_on=timezone.localdate() - dt.timedelta(days=400))
    deal["buyer"].refresh_from_db()
    voucher_for(authority, deal["buyer"], programme(authority, domestic_rate_bps=3000, startup_rate_bps=5000, startup_max_age_years=2))
    r = commit(deal)
    assert (r.rate_bps, r.rate_kind, r.committed_fen) == (5000, "startup", 7500)


# --- Caps ----------------------------------------------------------------------------------------------

def test_per_contract_cap(deal, authority):
    voucher_for(authority, deal["buyer"], programme(authority, contract_cap_fen=1200))
    assert commit(deal).committed_fen == 1200


def test_per_organisation_yearly_cap_then_blocked(deal, authority, api):
    v = voucher_for(authority, deal["buyer"], programme(authority, org_cap_per_year_fen=4000))
    assert commit(deal).committed_fen == 3000
    c2 = second_contract(deal, api)
    assert commit(deal, c2).committed_fen == 1000  # what is left of the year's cap
    c3 = second_contract(deal, api, tag="3")
    r3 = commit(deal, c3)
    assert (r3.status, r3.reason, r3.committed_fen) == ("blocked", "cap_reached", 0)
    assert balance(v.account) == v.amount_fen - 4000


def test_voucher_balance_limits_then_empty(deal, authority, api):
    v = voucher_for(authority, deal["buyer"], programme(authority), amount_fen=2000)
    assert commit(deal).committed_fen == 2000
    r2 = commit(deal, second_contract(deal, api))
    assert (r2.status, r2.reason) == ("blocked", "voucher_empty")
    assert balance(v.account) == 0 and balance(v.committed_account) == 2000


# --- Eligibility at application ------------------------------------------------------------------------

def _apply(org, prog, **kw):
    admin = kw.pop("admin", None) or member(org, username=f"adm-{org.pk}-{prog.code}")
    values = {"credit_code": org.credit_code, "declared_size_class": org.size_class, "requested_fen": 100_000, "idempotency_key": "a1"}
    values.update(kw)
    return services.application_submit(user=admin, programme=prog, organisation=org, **values)[0]


def test_eligibility_results_are_stored(authority):
    prog = programme(authority, max_org_age_years=5, eligible_regions=["Minhang", "Qingpu"])
    young = OrganisationFactory(kind="buyer", founded_on=timezone.localdate() - dt.timedelta(days=365))
    old = OrganisationFactory(kind="buyer", founded_on=dt.date(2001, 1, 1), registration_region="Shanghai Pudong")
    a = _apply(young, prog)
    assert a.eligible and {r["check"] for r in a.eligibility} == {"declared_size_matches_register", "size_class", "age", "region", "is_buyer"}
    b = _apply(old, prog)
    assert not b.eligible
    assert {r["check"] for r in b.eligibility if not r["passed"]} == {"age", "region"}
    with pytest.raises(services.VoucherError, match="eligibility"):
        services.application_approve(user=authority, application_id=b.pk)
    assert not Voucher.objects.exists()


def test_research_institution_qualifies_whatever_its_size(authority):
    prog = programme(authority)
    lab = OrganisationFactory(kind="buyer", size_class="large", is_research_institution=True)
    assert _apply(lab, prog).eligible
    big = OrganisationFactory(kind="buyer", size_class="large")
    with pytest.raises(services.VoucherError) as e:
        _apply(big, prog)
    assert e.value.field == "declared_size_class"
    assert Application.objects.filter(organisation=big).count() == 0


def test_declared_size_that_differs_from_the_register_fails_a_check(authority):
    org = OrganisationFactory(kind="buyer", size_class="medium")
    a = _apply(org, programme(authority), declared_size_class="micro")
    assert not a.eligible and [r["check"] for r in a.eligibility if not r["passed"]] == ["declared_size_matches_register"]


def test_approval_may_be_lower_and_draws_the_budget(authority):
    prog = programme(authority, budget_fen=150_000)
    org = OrganisationFactory(kind="buyer")
    a = _apply(org, prog)
    v = services.application_approve(user=authority, application_id=a.pk, amount_fen=60_000)
    assert v.amount_fen == 60_000 and balance(v.account) == 60_000 and balance(prog.budget_account) == 90_000
    org2 = OrganisationFactory(kind="buyer")
    a2 = _apply(org2, prog)
    with pytest.raises(services.VoucherError, match="budget has 900.00 CNY left"):
        services.application_approve(user=authority, application_id=a2.pk)
    assert Voucher.objects.count() == 1 and balance(prog.budget_account) == 90_000
    a2 = services.application_reject(user=authority, application_id=a2.pk, reason="budget exhausted")
    assert (a2.status, a2.reason) == ("rejected", "budget exhausted")


# --- Product rules ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rules, detail", [
    ({"eligible_chip_classes": ["inference"]}, "training chip"),
    ({"domestic_only": True}, "not a domestic chip"),
    ({"min_renewable_share": 50}, "renewable share 40.00% below 50"),
])
def test_product_rules_block_with_reason(deal, authority, rules, detail):
    v = voucher_for(authority, deal["buyer"], programme(authority, **rules))
    r = commit(deal)
    assert (r.status, r.reason) == ("blocked", "product_not_eligible") and detail in r.detail
    assert balance(v.account) == v.amount_fen


# --- Anti-fraud -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("buyer_decl, seller_decl, why", [
    ({"group_name": "Zhangjiang Holdings"}, {"group_name": "zhangjiang holdings"}, "same group"),
    ({"officers": ["310101198001010011"]}, {"officers": [" 310101198001010011 ", "X"]}, "shared officer"),
    ({"beneficial_owners": ["li wei"]}, {"beneficial_owners": ["LI WEI"]}, "shared beneficial owner"),
])
def test_related_parties_are_blocked(deal, authority, buyer_decl, seller_decl, why):
    v = voucher_for(authority, deal["buyer"], programme(authority))
    services.profile_declare(user=member(deal["buyer"], username="b-adm"), organisation=deal["buyer"], **buyer_decl)
    services.profile_declare(user=member(deal["supplier"], username="s-adm"), organisation=deal["supplier"], **seller_decl)
    before = org_balances(deal["buyer"])
    r = commit(deal)
    assert (r.status, r.reason) == ("blocked", "related_party") and why in r.detail
    assert org_balances(deal["buyer"]) == before and balance(v.account) == v.amount_fen


def test_unrelated_declarations_do_not_block(deal, authority):
    voucher_for(authority, deal["buyer"], programme(authority))
    services.profile_declare(user=member(deal["buyer"], username="b-adm"), organisation=deal["buyer"], group_name="A", officers=["1"])
    services.profile_declare(user=member(deal["supplier"], username="s-adm"), organisation=deal["supplier"], group_name="B", officers=["2"])
    assert commit(deal).status == "committed"


def test_self_trade_is_blocked(deal, authority):
    voucher_for(authority, deal["buyer"], programme(authority))
    Contract.objects.filter(pk=deal["contract"].pk).update(seller=deal["buyer"])  # as if the venue let it through
    r = commit(deal)
    assert (r.status, r.reason) == ("blocked", "self_trade")


def test_round_trip_is_blocked(deal, authority, api):
    voucher_for(authority, deal["buyer"], programme(authority))
    back = second_contract(deal, api)
    Contract.objects.filter(pk=back.pk).update(buyer=deal["supplier"], seller=deal["buyer"])  # the supplier bought back
    r = commit(deal)
    assert (r.status, r.reason) == ("blocked", "round_trip") and f"contract {back.pk}" in r.detail


# --- One claim per contract, validity, pick-up ----------------------------------------------------------

def test_one_claim_per_contract_even_with_two_vouchers(deal, authority):
    v1 = voucher_for(authority, deal["buyer"], programme(authority, code="a"))
    v2 = voucher_for(authority, deal["buyer"], programme(authority, code="b"))
    r = commit(deal)
    assert commit(deal).pk == r.pk
    assert Redemption.objects.filter(contract=deal["contract"]).count() == 1
    assert balance(v1.account) + balance(v2.account) == v1.amount_fen + v2.amount_fen - 3000


def test_contracts_traded_before_issuance_get_nothing(deal, authority):
    v = voucher_for(authority, deal["buyer"], programme(authority), issued_at=timezone.now() + dt.timedelta(seconds=1))
    assert commit(deal) is None
    assert services.redemptions_commit_new() == {"committed": 0, "blocked": 0}
    assert balance(v.account) == v.amount_fen


def test_periodic_pickup_is_idempotent(deal, authority, api):
    voucher_for(authority, deal["buyer"], programme(authority, org_cap_per_year_fen=4000))
    second_contract(deal, api)
    second_contract(deal, api, tag="3")
    assert services.redemptions_commit_new() == {"committed": 2, "blocked": 1}
    assert services.redemptions_commit_new() == {"committed": 0, "blocked": 0}
    assert ledger_verify().ok


# --- Expiry -------------------------------------------------------------------------------------------------

def test_expiry_returns_unused_balance_and_later_releases(deal, authority, api):
    prog = programme(authority, budget_fen=100_000)
    v = voucher_for(authority, deal["buyer"], prog, amount_fen=50_000)
    commit(deal)
    post_events(api, deal["seller_user"], [event(deal, i, offset_minutes=60 * i) for i in range(5)])
    later = timezone.now() + 400 * DAY
    assert services.vouchers_expire_due(now=later) == {"expired": 1, "returned_fen": 47_000}
    assert balance(prog.budget_account) == 50_000 + 47_000
    # A contract of the expired voucher still settles; its unused commitment goes back too.
    end = deal["window_start"] + DAY
    metering.delivery_settle(contract_id=deal["contract"].pk, now=end + metering.grace_period())
    assert balance(v.account) == 1517
    assert services.vouchers_expire_due(now=later) == {"expired": 0, "returned_fen": 1517}
    assert services.vouchers_expire_due(now=later) == {"expired": 0, "returned_fen": 0}
    v.refresh_from_db()
    assert (v.status, v.returned_fen) == ("expired", 47_000 + 1517)
    assert balance(prog.budget_account) == 100_000 - 1483  # only the delivered share was spent
    assert ledger_verify().ok


def test_expired_voucher_commits_nothing(deal, authority):
    voucher_for(authority, deal["buyer"], programme(authority))
    r = services.redemption_commit(contract_id=deal["contract"].pk, now=timezone.now() + 400 * DAY)
    assert (r.status, r.reason) == ("blocked", "outside_validity")
