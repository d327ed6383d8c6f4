"""PostgreSQL: concurrent approvals never over-commit a budget; concurrent commitments and deliveries never
take a voucher below zero, claim a contract twice, or lose a fen."""

import threading

import pytest
from django.db import connections
from django.db.models import Sum

from common.errors import ServiceError
from ledger.verify import ledger_verify
from metering import services as metering
from tests.factories import OrganisationFactory, member
from tests.vouchers.conftest import DAY, balance, event, more_contract, programme, voucher_for
from vouchers import services
from vouchers.models import Redemption, Voucher

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_all(jobs, workers=8):
    """Run the callables on `workers` threads started together; returns their results (or exceptions)."""
    barrier = threading.Barrier(workers)
    results, lock = [], threading.Lock()

    def work(w: int) -> None:
        barrier.wait()
        try:
            for i in range(w, len(jobs), workers):
                try:
                    out = jobs[i]()
                except ServiceError as e:
                    out = e
                with lock:
                    results.append(out)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_approvals_never_over_commit_the_budget(authority):
    prog = programme(authority, budget_fen=100_000)
    apps = []
    for i in range(12):
        org = OrganisationFactory(kind="buyer")
        app, _ = services.application_submit(user=member(org, username=f"adm{i}"), programme=prog, organisation=org,
                                             credit_code=org.credit_code, declared_size_class="small", requested_fen=15_000, idempotency_key="k")
        apps.append(app.pk)
    # Each application approved twice at once: only one approval may win.
    jobs = [lambda pk=pk: services.application_approve(user=authority, application_id=pk) for pk in apps * 2]
    results = run_all(jobs)
    issued = [r for r in results if isinstance(r, Voucher)]
    assert len(issued) == 6 == Voucher.objects.count()
    assert {r.status_code for r in results if isinstance(r, ServiceError)} == {400, 409}
    assert balance(prog.budget_account) == 10_000
    assert sum(balance(v.account) for v in Voucher.objects.all()) == 90_000
    assert ledger_verify().ok


def test_concurrent_commitments_and_deliveries_never_overdraw_a_voucher(deal, authority, api):
    v = voucher_for(authority, deal["buyer"], programme(authority), amount_fen=10_000)
    contracts = [deal["contract"]] + [more_contract(deal, api, tag=str(i)) for i in range(2, 7)]
    supplier_ids = {deal["supplier"].pk}

    def deliver(c, n):
        return lambda: metering.usage_batch_ingest(supplier_ids=supplier_ids, now=deal["now"], events=[
            {**event(deal, f"{c.pk}-{n}-{k}", offset_minutes=60 * k + n), "contract": c.pk} for k in range(3)])

    jobs = []
    for c in contracts:
        jobs += [lambda c=c: services.redemption_commit(contract_id=c.pk)] * 2 + [deliver(c, 0), deliver(c, 1)]
    jobs.append(lambda: services.redemptions_commit_new())
    run_all(jobs)

    rs = Redemption.objects.filter(contract__in=contracts)
    assert rs.count() == len(contracts)  # one claim per contract
    committed = rs.aggregate(s=Sum("committed_fen"))["s"]
    assert committed == 10_000  # the whole voucher, never more: 3000 + 3000 + 3000 + 1000
    assert sorted(rs.values_list("committed_fen", flat=True)) == [0, 0, 1000, 3000, 3000, 3000]
    assert set(rs.filter(committed_fen=0).values_list("reason", flat=True)) == {"voucher_empty"}
    assert balance(v.account) == 0 and balance(v.committed_account) == committed - rs.aggregate(s=Sum("paid_fen"))["s"]
    metering.deliveries_settle_due(now=deal["window_start"] + DAY + metering.grace_period())
    for r in rs.exclude(committed_fen=0):
        assert r.status == "settled" and r.paid_fen + r.released_fen == r.committed_fen
        assert r.paid_fen == r.committed_fen * r.contract.delivery.released_fen // r.value_fen
    assert balance(v.committed_account) == 0
    assert balance(v.account) == 10_000 - rs.aggregate(s=Sum("paid_fen"))["s"]
    assert ledger_verify().ok
