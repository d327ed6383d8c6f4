"""Fault drill, double spend: many concurrent attempts to spend the same money, each on its own database
connection, through the real paths. Exactly one may win; the others get a clear refusal; nothing goes
below zero at any moment; the ledger still verifies.

- 100 payouts of a supplier's whole balance through POST /api/v1/ledger/payouts/, distinct Idempotency-Keys
  (bank transfer, then an operator pays it; and Stripe, which must be asked to transfer exactly once).
- A voucher whose balance covers exactly one of 50 new contracts, committed for all 50 at once
  (vouchers.services.redemption_commit); and 50 concurrent commits of one contract.

Concurrency is THREADS workers started together on a barrier (not 100 connections: the shared PostgreSQL
allows 100 in all); each worker has its own connection and sends its share back to back.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from ledger.models import Account, AccountKind, Hold, JournalEntry, Payout, PayoutStatus
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from marketplace.models import MemberRole, Membership, User
from tests.factories import OrganisationFactory
from tests.ledger.payments_helpers import clearing_balance, fake_stripe, fund
from tests.vouchers import conftest as voucher_fixtures
from tests.vouchers.conftest import programme, voucher_for
from vouchers import services as vouchers
from vouchers.models import Redemption, RedemptionStatus

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
deal, authority = voucher_fixtures.deal, voucher_fixtures.authority  # the vouchers tests' fixtures

THREADS = 16
PAYOUTS = "/api/v1/ledger/payouts/"


def race(jobs: list[Callable[[], object]], workers: int = THREADS) -> list:
    """Run every job once on `workers` threads released together; results (or exceptions) in job order."""
    barrier = threading.Barrier(workers)
    results: list = [None] * len(jobs)

    def work(w: int) -> None:
        try:
            barrier.wait()
            for i in range(w, len(jobs), workers):
                try:
                    results[i] = jobs[i]()
                except Exception as exc:  # the assertions look at it
                    results[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return results


class Sampler:
    """Reads an organisation's available and held balances in one statement, over and over, on its own
    connection, while a race runs: every state it sees must be one of the legal ones."""

    def __init__(self, account_ids: list[int]):
        self.ids, self.seen, self._stop = account_ids, set(), threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with connection.cursor() as cur:
                    cur.execute("SELECT array_agg(balance_fen ORDER BY id) FROM ledger_account WHERE id = ANY(%s)", [self.ids])
                    self.seen.add(tuple(cur.fetchone()[0]))
        finally:
            connections.close_all()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class People:
    supplier: object
    supplier_admin: User
    operator: User


def _people() -> People:
    """A supplier with its admin, and an operator. Users without passwords: hashing one costs a second or
    more on a busy machine, and these log in through force_authenticate."""
    supplier = OrganisationFactory(kind="supplier")
    admin = User.objects.create(username=f"admin-{supplier.pk}")
    Membership.objects.create(user=admin, organisation=supplier, role=MemberRole.ADMIN)
    return People(supplier, admin, User.objects.create(username=f"operator-{supplier.pk}", platform_role="operator"))


def _payout_storm(people, *, amount: str, provider: str, destination: str, n: int = 100) -> list:
    # One request handler shared by the threads' clients, as a WSGI server shares one application: a new
    # handler loads the middleware again, and whitenoise's scan of the static files costs ~0.3 s each time.
    shared = APIClient()
    shared.force_authenticate(people.supplier_admin)
    assert shared.get(PAYOUTS).status_code == 200  # loads the middleware once, before the threads start

    def request(i: int):
        def go():
            api = APIClient()
            api.handler = shared.handler
            return api.post(PAYOUTS, {"amount": amount, "destination": destination, "provider": provider}, format="json",
                            HTTP_IDEMPOTENCY_KEY=f"withdraw-all-{i}")
        return go

    return race([request(i) for i in range(n)])


def _refusals_are_clear(responses: list) -> None:
    for r in responses:
        assert not isinstance(r, Exception), repr(r)
        assert r.status_code == 400, (r.status_code, r.content[:300])
        assert list(r.json()) == ["amount"] and r.json()["amount"][0].startswith("Insufficient funds in available"), r.json()


def test_100_concurrent_bank_payouts_of_the_whole_balance_pay_once():
    people = _people()
    fund(people.supplier, 100_000)
    available, held = (Account.objects.get(organisation=people.supplier, kind=k).pk for k in (AccountKind.AVAILABLE, AccountKind.HELD))
    with Sampler(sorted([available, held])) as sampler:
        responses = _payout_storm(people, amount="1000.00", provider="offline", destination="CMB 6214 0000 0000 0001")
    won = [r for r in responses if not isinstance(r, Exception) and r.status_code == 201]
    assert len(won) == 1
    _refusals_are_clear([r for r in responses if r not in won])
    # Every state anyone could see: all available, or all held; never both, never more, never below zero.
    legal = {(100_000, 0), (0, 100_000)}
    assert sampler.seen and sampler.seen <= {tuple(x if pk == available else y for pk in sorted([available, held])) for x, y in legal}
    assert balances_get(organisation=people.supplier) == {"available": 0, "held": 100_000, "escrow": 0, "receivable": 0}
    assert Payout.objects.count() == 1 and Hold.objects.count() == 1
    # The operator sends the bank transfer: the wallet is empty, the money left once.
    operator = APIClient()
    operator.force_authenticate(people.operator)
    paid = operator.post(f"{PAYOUTS}{won[0].json()['id']}/pay/", {"reference": "CMB-20261129-1"}, format="json")
    assert paid.status_code == 200 and paid.json()["status"] == PayoutStatus.PAID
    assert balances_get(organisation=people.supplier) == {"available": 0, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("offline") == 0  # -100000 when funded, +100000 when paid out
    assert JournalEntry.objects.filter(kind="payout").count() == 1
    assert ledger_verify().ok, ledger_verify().problems


def test_100_concurrent_stripe_payouts_of_the_whole_balance_transfer_once():
    people = _people()
    fund(people.supplier, 100_000, provider="stripe")
    with fake_stripe() as stripe_api:
        responses = _payout_storm(people, amount="1000.00", provider="stripe", destination="acct_1Qsupplier")
        transfers = stripe_api.posts("/v1/transfers")
    won = [r for r in responses if not isinstance(r, Exception) and r.status_code == 201]
    assert len(won) == 1 and won[0].json()["status"] == PayoutStatus.PAID
    _refusals_are_clear([r for r in responses if r not in won])
    # Stripe was asked to move the money exactly once.
    assert len(transfers) == 1 and transfers[0].form["amount"] == "100000"
    assert balances_get(organisation=people.supplier) == {"available": 0, "held": 0, "escrow": 0, "receivable": 0}
    assert clearing_balance("stripe") == 0
    assert ledger_verify().ok, ledger_verify().problems


# --- Vouchers --------------------------------------------------------------------------------------------

def _one_lot_contracts(the_deal, api, settings, n: int) -> list:
    """n contracts of one lot each (1500 fen) between the deal's parties: the supplier rests n one-lot asks,
    the buyer lifts them with one order. The deal's instrument is reopened for the trade and put back.
    The order rate limit is lifted for the set-up: n asks in well under a second is what a market maker does,
    and the default 50/s window (shared through Redis in CI) would refuse the tail of them."""
    from exchange import selectors as exchange_selectors
    from exchange.models import Contract
    from marketplace.models import Instrument

    inst = Instrument.objects.get(pk=the_deal["instrument"].pk)
    saved = {f: getattr(inst, f) for f in ("status", "gate_closure", "delivery_start", "delivery_end")}
    now = timezone.now()
    Instrument.objects.filter(pk=inst.pk).update(status="open", gate_closure=now + dt.timedelta(hours=1),
                                                 delivery_start=now + dt.timedelta(hours=2), delivery_end=now + dt.timedelta(hours=26))
    exchange_selectors.caches_clear()
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"orders": "100000/s"}}
    try:
        api.force_authenticate(the_deal["seller_user"])
        for i in range(n):
            r = api.post("/api/v1/orders/", {"instrument": inst.pk, "side": "sell", "price": "15.00", "quantity": 1,
                                             "client_order_id": f"ask-{i}"}, format="json")
            assert r.status_code == 201, r.json()
        api.force_authenticate(the_deal["buyer_user"])
        r = api.post("/api/v1/orders/", {"instrument": inst.pk, "side": "buy", "price": "15.00", "quantity": n,
                                         "client_order_id": "lift-all"}, format="json")
        assert r.status_code == 201 and r.json()["status"] == "filled", r.json()
        api.force_authenticate(None)
        contracts = list(Contract.objects.filter(trade_id__in=[f["trade"] for f in r.json()["fills"]]).order_by("pk"))
    finally:
        Instrument.objects.filter(pk=inst.pk).update(**saved)
        exchange_selectors.caches_clear()
    assert len(contracts) == n and {c.value_fen for c in contracts} == {1500}
    return contracts


def _voucher_balances(v) -> tuple[int, int]:
    return tuple(Account.objects.get(pk=pk).balance_fen for pk in (v.account_id, v.committed_account_id))


def _buyer_funds(org) -> int:
    b = balances_get(organisation=org)
    return b["available"] + b["escrow"] + b["held"]


def test_a_voucher_that_covers_one_contract_is_redeemed_once_by_50_concurrent_commits(deal, authority, api, settings):
    contracts = _one_lot_contracts(deal, api, settings, 50)
    # 20% of a 1500-fen contract is 300 fen: the voucher covers exactly one of them.
    v = voucher_for(authority, deal["buyer"], programme(authority, rate_bps=2000), amount_fen=300)
    buyer_before = _buyer_funds(deal["buyer"])
    with Sampler([v.account_id]) as sampler:
        results = race([lambda c=c: vouchers.redemption_commit(contract_id=c.pk) for c in contracts])
    assert not [r for r in results if isinstance(r, Exception)], [r for r in results if isinstance(r, Exception)][:3]
    committed = [r for r in results if r.status == RedemptionStatus.COMMITTED]
    assert len(committed) == 1 and committed[0].committed_fen == 300
    assert {(r.status, r.reason) for r in results if r is not committed[0]} == {(RedemptionStatus.BLOCKED, "voucher_empty")}
    assert Redemption.objects.filter(contract__in=contracts).count() == 50
    assert sampler.seen <= {(300,), (0,)}  # never below zero, never half-spent
    assert _voucher_balances(v) == (0, 300)
    # The buyer's escrow now holds only its own part of that contract; its money is otherwise unchanged.
    assert _buyer_funds(deal["buyer"]) == buyer_before
    assert JournalEntry.objects.filter(idempotency_key__startswith="redemption:", idempotency_key__endswith=":commit").count() == 1
    assert ledger_verify().ok, ledger_verify().problems


def test_50_concurrent_commits_of_one_contract_redeem_it_once(deal, authority):
    v = voucher_for(authority, deal["buyer"], programme(authority, rate_bps=2000), amount_fen=1_000_000)
    contract = deal["contract"]  # 10 lots, 15000 fen: a share of 3000
    results = race([lambda: vouchers.redemption_commit(contract_id=contract.pk)] * 50)
    assert not [r for r in results if isinstance(r, Exception)], [r for r in results if isinstance(r, Exception)][:3]
    assert {r.pk for r in results} == {Redemption.objects.get(contract=contract).pk}
    assert Redemption.objects.filter(voucher=v).count() == 1
    assert _voucher_balances(v) == (1_000_000 - 3000, 3000)
    assert JournalEntry.objects.filter(reference=f"contract:{contract.pk}", kind="voucher").count() == 1
    assert ledger_verify().ok, ledger_verify().problems


# --- Reversals -------------------------------------------------------------------------------------------

def test_concurrent_reversals_of_one_entry_reverse_it_once():
    from ledger import services as ledger
    from ledger.services import IdempotencyConflict

    org = OrganisationFactory(kind="buyer")
    fund(org, 10_000)
    fees = ledger.platform_account(kind=AccountKind.FEES)
    entry = ledger.transfer(source=ledger.account_for(organisation=org, kind=AccountKind.AVAILABLE), destination=fees, amount_fen=2_500,
                            idempotency_key="fee-to-refund", kind="fee")
    # 20 operators reverse the fee at once, each with a key of its own; then 20 retries of one request.
    distinct = race([lambda i=i: ledger.entry_reverse(entry=entry, idempotency_key=f"reverse-{i}") for i in range(20)])
    reversals = [r for r in distinct if isinstance(r, JournalEntry)]
    assert len(reversals) == 1, [type(r).__name__ for r in distinct]
    assert all(isinstance(r, IdempotencyConflict) for r in distinct if r is not reversals[0]), {repr(r) for r in distinct}
    same = race([lambda: ledger.entry_reverse(entry=entry, idempotency_key=reversals[0].idempotency_key)] * 20)
    assert {getattr(r, "pk", repr(r)) for r in same} == {reversals[0].pk}
    assert balances_get(organisation=org)["available"] == 10_000
    assert Account.objects.get(pk=fees.pk).balance_fen == 0
    assert JournalEntry.objects.filter(reverses=entry).count() == 1
    assert ledger_verify().ok, ledger_verify().problems
