"""PostgreSQL: two clients sending the same batch at once count it once."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from metering.models import ContractDelivery, UsageEvent
from tests.metering.conftest import event

pytestmark = pytest.mark.postgres


@pytest.mark.django_db(transaction=True)
def test_two_clients_ingest_the_same_batch_at_once_without_double_count(deal):
    batch = [event(deal, i, devices=1 + i % 3, hours=0.01, offset_minutes=i % 600) for i in range(300)]
    answers: list[dict] = []
    barrier = threading.Barrier(2)
    lock = threading.Lock()

    def client(k: int) -> None:
        try:
            api = APIClient()
            api.force_authenticate(deal["seller_user"])
            barrier.wait()
            r = api.post("/api/v1/metering/events/", {"events": batch}, format="json")
            with lock:
                answers.append(r.json())
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((a["accepted"], a["duplicates"], a["rejected"]) for a in answers) == [(0, 300, 0), (300, 0, 0)]
    expected = sum(1 + i % 3 for i in range(300)) * 9_890  # 36 s of an H100 = 0.00989 units
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert (UsageEvent.objects.count(), d.events, d.delivered_micro) == (300, 300, expected)
    assert d.released_fen == 15000 * expected // 10_000_000
    assert balances_get(organisation=deal["supplier"])["available"] == d.released_fen - d.fee_fen
    assert ledger_verify().ok


@pytest.mark.django_db(transaction=True)
def test_overlapping_batches_for_two_contracts_retry_and_count_once(deal, api):
    """One event id sent for two different contracts by two clients: the contracts are locked separately,
    so the second insert finds the id taken, retries, and answers it as a duplicate."""
    from tests.metering.conftest import trade

    second = trade(api, deal["seller_user"], deal["buyer_user"], deal["contract"].instrument, 4, tag="2")
    shared = [event(deal, f"shared-{i}", hours=0.01, offset_minutes=i) for i in range(50)]
    batches = [shared, [dict(e, contract=second.pk) for e in shared]]
    answers: list[dict] = []
    barrier = threading.Barrier(2)

    def client(k: int) -> None:
        try:
            c = APIClient()
            c.force_authenticate(deal["seller_user"])
            barrier.wait()
            answers.append(c.post("/api/v1/metering/events/", {"events": batches[k]}, format="json").json())
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a["accepted"] for a in answers) == 50
    assert sum(a["duplicates"] for a in answers) == 50
    assert UsageEvent.objects.count() == 50
    assert sum(ContractDelivery.objects.values_list("events", flat=True)) == 50
    assert ledger_verify().ok
