"""Check the ledger against its own postings: the proof that cached balances and holds tell the truth."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Sum

from ledger.models import NON_NEGATIVE_KINDS, Account, AccountKind, Hold, HoldStatus, JournalEntry, Posting


@dataclass
class VerifyReport:
    accounts: int = 0
    entries: int = 0
    postings: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def ledger_verify() -> VerifyReport:
    """Every entry sums to zero with at least two postings; all postings sum to zero; each cached balance
    equals its postings; no non-negative account is below zero; each organisation's held balance equals
    the remainder of its open holds."""
    report = VerifyReport(
        accounts=Account.objects.count(), entries=JournalEntry.objects.count(), postings=Posting.objects.count()
    )
    unbalanced = (
        Posting.objects.values("entry_id").annotate(total=Sum("amount_fen")).exclude(total=0).values_list("entry_id", "total")
    )
    for entry_id, total in unbalanced[:20]:
        report.problems.append(f"entry {entry_id} postings sum to {total}, not 0")
    thin = JournalEntry.objects.filter(postings__isnull=True).values_list("pk", flat=True)
    for entry_id in thin[:20]:
        report.problems.append(f"entry {entry_id} has no postings")
    grand = Posting.objects.aggregate(total=Sum("amount_fen"))["total"] or 0
    if grand != 0:
        report.problems.append(f"all postings sum to {grand}, not 0")
    sums = dict(Posting.objects.values("account_id").annotate(total=Sum("amount_fen")).values_list("account_id", "total"))
    non_negative = {k.value for k in NON_NEGATIVE_KINDS}
    held_by_org: dict[int, int] = {}
    for account in Account.objects.all().iterator():
        derived = sums.get(account.pk, 0)
        if derived != account.balance_fen:
            report.problems.append(f"account {account.pk} ({account}) caches {account.balance_fen} but its postings sum to {derived}")
        if account.kind in non_negative and derived < 0:
            report.problems.append(f"account {account.pk} ({account}) is below zero: {derived}")
        if account.kind == AccountKind.HELD:
            held_by_org[account.organisation_id] = derived
    open_holds: dict[int, int] = defaultdict(int)
    for hold in Hold.objects.filter(status=HoldStatus.OPEN).only("organisation_id", "amount_fen", "captured_fen", "released_fen"):
        open_holds[hold.organisation_id] += hold.remaining_fen
    for org_id in set(held_by_org) | set(open_holds):
        if held_by_org.get(org_id, 0) != open_holds.get(org_id, 0):
            report.problems.append(
                f"organisation {org_id} holds {held_by_org.get(org_id, 0)} in its held account but its open holds total {open_holds.get(org_id, 0)}"
            )
    return report
