"""Property: after any sequence of ledger operations the books balance and replaying them agrees."""

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from ledger import services
from ledger.models import NON_NEGATIVE_KINDS, Account, AccountKind, Hold, JournalEntry, Posting
from ledger.verify import ledger_verify
from marketplace.models import Organisation
from tests.factories import credit_code

N_ORGS = 3
amounts = st.integers(min_value=-50, max_value=60_000)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("top_up"), st.integers(0, N_ORGS - 1), amounts),
        st.tuples(st.just("transfer"), st.integers(0, N_ORGS - 1), st.integers(0, N_ORGS - 1), amounts),
        st.tuples(st.just("hold"), st.integers(0, N_ORGS - 1), amounts),
        st.tuples(st.just("capture"), st.integers(0, 20), amounts),
        st.tuples(st.just("release"), st.integers(0, 20), st.one_of(st.none(), amounts)),
        st.tuples(st.just("fee"), st.integers(0, N_ORGS - 1), amounts),
        st.tuples(st.just("reverse"), st.integers(0, 40)),
        st.tuples(st.just("replay"), st.integers(0, 40)),
    ),
    max_size=40,
)


class LedgerProperties(TestCase):
    def setUp(self):
        self.orgs = [
            Organisation.objects.create(name=f"Org {i}", credit_code=credit_code(9000 + i), kind="both", size_class="small",
                                        founded_on="2020-01-01", registration_region="Shanghai")
            for i in range(N_ORGS)
        ]
        self.clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
        self.fees = services.platform_account(kind=AccountKind.FEES)

    def apply(self, op, n):
        name, *args = op
        key = f"op-{n}"
        org = lambda i: self.orgs[i]  # noqa: E731
        acc = lambda i, kind: services.account_for(organisation=self.orgs[i], kind=kind)  # noqa: E731
        holds = list(Hold.objects.order_by("pk"))
        entries = list(JournalEntry.objects.order_by("pk"))
        if name == "top_up":
            services.transfer(source=self.clearing, destination=acc(args[0], "available"), amount_fen=args[1], idempotency_key=key, kind="top_up")
        elif name == "transfer":
            services.transfer(source=acc(args[0], "available"), destination=acc(args[1], "escrow"), amount_fen=args[2], idempotency_key=key)
        elif name == "hold":
            services.hold_place(organisation=org(args[0]), amount_fen=args[1], reference=key)
        elif name == "capture" and holds:
            hold = holds[args[0] % len(holds)]
            services.hold_capture(hold=hold, amount_fen=args[1], destination=services.account_for(organisation=hold.organisation, kind="escrow"), idempotency_key=key)
        elif name == "release" and holds:
            services.hold_release(hold=holds[args[0] % len(holds)], amount_fen=args[1], idempotency_key=key)
        elif name == "fee":
            services.fee_charge(organisation=org(args[0]), amount_fen=args[1], idempotency_key=key)
        elif name == "reverse" and entries:
            entry = entries[args[0] % len(entries)]
            if entry.kind in ("top_up", "fee"):  # reversible kinds with no hold bookkeeping attached
                services.entry_reverse(entry=entry, idempotency_key=f"{key}-rev")
        elif name == "replay" and entries:
            entry = entries[args[0] % len(entries)]
            request = services.EntryRequest(entry.idempotency_key, entry.kind, [(p.account_id, p.amount_fen) for p in entry.postings.all()],
                                            reference=entry.reference, reverses_id=entry.reverses_id)
            assert services.entries_post([request])[0].pk == entry.pk

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(operations)
    def test_books_always_balance(self, ops):
        for n, op in enumerate(ops):
            before = dict(Account.objects.values_list("pk", "balance_fen"))
            try:
                self.apply(op, n)
            except services.LedgerError:
                # A refused operation changes nothing.
                assert dict(Account.objects.values_list("pk", "balance_fen")) == before
            self.check_invariants()

    def check_invariants(self):
        report = ledger_verify()
        assert report.ok, report.problems
        non_negative = {k.value for k in NON_NEGATIVE_KINDS}
        assert not Account.objects.filter(kind__in=non_negative, balance_fen__lt=0).exists()
        # Replaying the journal in order gives the same balances and the same running balances.
        replay = defaultdict(int)
        for account_id, amount, after in Posting.objects.order_by("pk").values_list("account_id", "amount_fen", "balance_after_fen"):
            replay[account_id] += amount
            assert replay[account_id] == after
        assert {pk: bal for pk, bal in Account.objects.values_list("pk", "balance_fen") if bal or pk in replay} == dict(replay)
        assert sum(replay.values()) == 0
