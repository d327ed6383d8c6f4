"""PostgreSQL-only guarantees: the database refuses journal edits, and concurrent posting loses nothing."""

import random
import threading

import pytest
from django.db import connection, connections
from django.db.utils import DatabaseError

from ledger import services
from ledger.models import AccountKind, Hold, JournalEntry, Posting
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.postgres


@pytest.mark.django_db
def test_database_refuses_update_and_delete_of_journal_rows():
    org = OrganisationFactory()
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    entry = services.transfer(source=clearing, destination=services.account_for(organisation=org, kind="available"), amount_fen=100, idempotency_key="k")
    for sql in (
        "UPDATE ledger_posting SET amount_fen = amount_fen * 100",
        "DELETE FROM ledger_posting",
        "UPDATE ledger_journalentry SET memo = 'edited'",
        "DELETE FROM ledger_journalentry",
    ):
        with pytest.raises(DatabaseError, match="immutable"), connection.cursor() as cursor:
            from django.db import transaction

            with transaction.atomic():
                cursor.execute(sql)
    assert sorted(Posting.objects.filter(entry=entry).values_list("amount_fen", flat=True)) == [-100, 100]


@pytest.mark.django_db(transaction=True)
def test_concurrent_holds_captures_and_transfers_lose_and_double_nothing():
    orgs = [OrganisationFactory() for _ in range(4)]
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    for org in orgs:
        services.transfer(source=clearing, destination=services.account_for(organisation=org, kind="available"), amount_fen=50_000, idempotency_key=f"fund-{org.pk}", kind="top_up")
    workers, per_worker = 8, 40
    barrier = threading.Barrier(workers)
    done: list[tuple[str, int, int, int]] = []  # (kind, from org, to org, amount) of operations that succeeded
    lock = threading.Lock()

    def work(w: int) -> None:
        rng = random.Random(w)
        barrier.wait()
        try:
            for i in range(per_worker):
                a, b = rng.sample(range(4), 2)
                amount = rng.randint(1, 4_000)
                key = f"w{w}-{i}"
                try:
                    if rng.random() < 0.5:
                        services.transfer(source=services.account_for(organisation=orgs[a], kind="available"),
                                          destination=services.account_for(organisation=orgs[b], kind="available"),
                                          amount_fen=amount, idempotency_key=key)
                        # A retry of the same transfer must not move money twice.
                        services.transfer(source=services.account_for(organisation=orgs[a], kind="available"),
                                          destination=services.account_for(organisation=orgs[b], kind="available"),
                                          amount_fen=amount, idempotency_key=key)
                        with lock:
                            done.append(("transfer", a, b, amount))
                    else:
                        hold = services.hold_place(organisation=orgs[a], amount_fen=amount, reference=key)
                        part = amount // 2 or amount
                        services.hold_capture(hold=hold, amount_fen=part, destination=services.account_for(organisation=orgs[b], kind="available"), idempotency_key=f"{key}-cap")
                        services.hold_release(hold=hold, idempotency_key=f"{key}-rel")
                        with lock:
                            done.append(("capture", a, b, part))
                except services.InsufficientFunds:
                    pass
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    expected = {org.pk: 50_000 for org in orgs}
    for _, a, b, amount in done:
        expected[orgs[a].pk] -= amount
        expected[orgs[b].pk] += amount
    for org in orgs:
        balances = balances_get(organisation=org)
        assert balances["available"] == expected[org.pk]
        assert balances["held"] == 0
    assert ledger_verify().ok, ledger_verify().problems
    assert len(done) > workers * per_worker // 2
    assert JournalEntry.objects.filter(kind="transfer").count() == sum(1 for d in done if d[0] == "transfer")
    assert Hold.objects.filter(status="open").count() == 0
