"""Posting, holds and fees: exact fen, idempotent, and nothing written when refused."""

import hashlib
import itertools
import json

import pytest
from django.db import IntegrityError, transaction

from ledger import services
from ledger.models import AccountKind, EntryKind, Hold, JournalEntry, Posting
from ledger.selectors import balances_get
from ledger.verify import ledger_verify
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def buyer():
    org = OrganisationFactory(kind="buyer")
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    services.transfer(source=clearing, destination=services.account_for(organisation=org, kind="available"),
                      amount_fen=100_000, idempotency_key=f"fund:{org.pk}", kind="top_up")
    return org


def snapshot():
    return JournalEntry.objects.count(), Posting.objects.count(), Hold.objects.count()


def test_organisations_get_their_four_accounts_when_registered():
    org = OrganisationFactory()
    assert sorted(org.accounts.values_list("kind", flat=True)) == ["available", "escrow", "held", "receivable"]
    assert balances_get(organisation=org) == {"available": 0, "held": 0, "escrow": 0, "receivable": 0}


def test_transfer_is_balanced_and_replays_on_the_same_key(buyer):
    seller = OrganisationFactory()
    src = services.account_for(organisation=buyer, kind="available")
    dst = services.account_for(organisation=seller, kind="available")
    entry = services.transfer(source=src, destination=dst, amount_fen=2_500, idempotency_key="pay-1")
    assert sorted(entry.postings.values_list("amount_fen", flat=True)) == [-2_500, 2_500]
    again = services.transfer(source=src, destination=dst, amount_fen=2_500, idempotency_key="pay-1")
    assert again.pk == entry.pk
    assert balances_get(organisation=buyer)["available"] == 97_500
    assert balances_get(organisation=seller)["available"] == 2_500
    assert ledger_verify().ok


def test_same_key_with_a_different_request_is_a_conflict_and_writes_nothing(buyer):
    seller = OrganisationFactory()
    src = services.account_for(organisation=buyer, kind="available")
    dst = services.account_for(organisation=seller, kind="available")
    services.transfer(source=src, destination=dst, amount_fen=2_500, idempotency_key="pay-1")
    before = snapshot()
    with pytest.raises(services.IdempotencyConflict) as excinfo:
        services.transfer(source=src, destination=dst, amount_fen=2_501, idempotency_key="pay-1")
    assert excinfo.value.status_code == 409
    assert snapshot() == before
    assert balances_get(organisation=seller)["available"] == 2_500


def test_overdraft_is_refused_with_the_shortfall_and_writes_nothing(buyer):
    seller = OrganisationFactory()
    before = snapshot()
    with pytest.raises(services.InsufficientFunds) as excinfo:
        services.transfer(source=services.account_for(organisation=buyer, kind="available"),
                          destination=services.account_for(organisation=seller, kind="available"),
                          amount_fen=100_001, idempotency_key="too-much")
    assert str(excinfo.value) == "Insufficient funds in available: short by 0.01 CNY (balance 1000.00 CNY)."
    assert snapshot() == before
    assert balances_get(organisation=buyer)["available"] == 100_000


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
def test_non_positive_or_non_integer_amounts_are_refused(buyer, amount):
    before = snapshot()
    with pytest.raises(services.InvalidEntry):
        services.transfer(source=services.account_for(organisation=buyer, kind="available"),
                          destination=services.platform_account(kind=AccountKind.FEES), amount_fen=amount, idempotency_key="x")
    assert snapshot() == before


def test_unbalanced_or_unknown_postings_are_refused(buyer):
    available = services.account_for(organisation=buyer, kind="available")
    with pytest.raises(services.InvalidEntry, match="sum to zero"):
        services.entries_post([services.EntryRequest("k1", "transfer", [(available.pk, -5), (available.pk + 1, 4)])])
    with pytest.raises(services.InvalidEntry, match="Unknown account"):
        services.entries_post([services.EntryRequest("k2", "transfer", [(available.pk, -5), (999_999, 5)])])
    with pytest.raises(services.InvalidEntry, match="at least two"):
        services.entries_post([services.EntryRequest("k3", "transfer", [(available.pk, 0)])])


def test_a_batch_is_all_or_nothing(buyer):
    seller = OrganisationFactory()
    src = services.account_for(organisation=buyer, kind="available").pk
    dst = services.account_for(organisation=seller, kind="available").pk
    before = snapshot()
    with pytest.raises(services.InsufficientFunds):
        services.entries_post([
            services.EntryRequest("b1", "transfer", [(src, -60_000), (dst, 60_000)]),
            services.EntryRequest("b2", "transfer", [(src, -60_000), (dst, 60_000)]),
        ])
    assert snapshot() == before
    entries = services.entries_post([
        services.EntryRequest("b1", "transfer", [(src, -60_000), (dst, 60_000)]),
        services.EntryRequest("b2", "transfer", [(dst, -10_000), (src, 10_000)]),
    ])
    assert [e.idempotency_key for e in entries] == ["b1", "b2"]
    assert balances_get(organisation=buyer)["available"] == 50_000
    assert list(Posting.objects.filter(entry__idempotency_key="b2").order_by("id").values_list("balance_after_fen", flat=True)) == [50_000, 50_000]


def test_postings_of_one_batch_read_as_a_running_balance_in_id_order(buyer):
    """An account's statement is its postings in id order, each with the balance after it: a batch of many
    entries on the same accounts (one statement on PostgreSQL) must number them in the order posted."""
    seller = OrganisationFactory()
    src = services.account_for(organisation=buyer, kind="available").pk
    dst = services.account_for(organisation=seller, kind="available").pk
    # Mostly buyer to seller, every third entry one fen back: each account's balance goes up and down.
    services.entries_post([
        services.EntryRequest(f"run:{n}", "transfer", [(dst, -1), (src, 1)] if n % 3 == 2 else [(src, -(n * 37 % 500 + 1)), (dst, n * 37 % 500 + 1)])
        for n in range(40)
    ])
    for account in (src, dst):
        rows = list(Posting.objects.filter(account_id=account, entry__idempotency_key__startswith="run:").order_by("id").values_list("amount_fen", "balance_after_fen"))
        assert len(rows) == 40
        for (_, before), (amount, after) in itertools.pairwise(rows):
            assert after == before + amount
    assert ledger_verify().ok


def test_hold_place_capture_release(buyer):
    seller = OrganisationFactory()
    escrow = services.account_for(organisation=buyer, kind="escrow")
    hold = services.hold_place(organisation=buyer, amount_fen=30_000, reference="order:1")
    assert balances_get(organisation=buyer) == {"available": 70_000, "held": 30_000, "escrow": 0, "receivable": 0}
    assert services.hold_place(organisation=buyer, amount_fen=30_000, reference="order:1").pk == hold.pk  # replay
    hold = services.hold_capture(hold=hold, amount_fen=12_000, destination=escrow, idempotency_key="trade:1:buyer")
    hold = services.hold_capture(hold=hold, amount_fen=12_000, destination=escrow, idempotency_key="trade:1:buyer")  # replay
    assert hold.captured_fen == 12_000 and hold.status == "open"
    services.fee_charge(organisation=buyer, amount_fen=12, idempotency_key="trade:1:fee", hold=hold)
    hold = services.hold_release(hold=hold, idempotency_key="order:1:done")
    assert (hold.captured_fen, hold.released_fen, hold.status) == (12_012, 17_988, "closed")
    assert balances_get(organisation=buyer) == {"available": 87_988, "held": 0, "escrow": 12_000, "receivable": 0}
    assert services.platform_account(kind=AccountKind.FEES).balance_fen == 12
    assert balances_get(organisation=seller)["available"] == 0
    assert ledger_verify().ok


def test_holds_move_takes_a_capture_and_its_fee_in_one_entry(buyer):
    escrow = services.account_for(organisation=buyer, kind="escrow")
    fees = services.platform_account(kind=AccountKind.FEES)
    hold = services.hold_place(organisation=buyer, amount_fen=1_000, reference="order:9")

    def move(amount, fee, key, **kw):
        services.holds_move([services.HoldMovement(hold_id=hold.pk, amount_fen=amount, idempotency_key=key, destination_id=escrow.pk,
                                                   fee_fen=fee, fee_destination_id=fees.pk, **kw)])

    before = snapshot()
    with pytest.raises(services.InsufficientFunds):  # 995 + 6 is more than the hold has
        move(995, 6, "t:1")
    with pytest.raises(services.InvalidEntry):
        move(10, -1, "t:1")
    assert snapshot() == before
    move(995, 5, "t:1")
    move(995, 5, "t:1")  # a replay: nothing more
    entry = JournalEntry.objects.get(idempotency_key="t:1")
    assert sorted(entry.postings.values_list("account_id", "amount_fen")) == sorted(
        [(services.account_for(organisation=buyer, kind="held").pk, -1_000), (escrow.pk, 995), (fees.pk, 5)])
    hold.refresh_from_db()
    assert (hold.captured_fen, hold.released_fen, hold.status) == (1_000, 0, "closed")
    escrow.refresh_from_db()
    assert (escrow.balance_fen, services.platform_account(kind=AccountKind.FEES).balance_fen) == (995, 5)
    with pytest.raises(services.InvalidEntry):  # a fee rides on a capture, never on a release
        services.holds_move([services.HoldMovement(hold_id=hold.pk, amount_fen=None, idempotency_key="r:1", fee_fen=1, fee_destination_id=fees.pk)])
    assert ledger_verify().ok


def test_hold_cannot_be_overdrawn_or_placed_beyond_funds(buyer):
    hold = services.hold_place(organisation=buyer, amount_fen=1_000, reference="order:2")
    with pytest.raises(services.InsufficientFunds):
        services.hold_capture(hold=hold, amount_fen=1_001, destination=services.platform_account(kind="fees"), idempotency_key="c")
    with pytest.raises(services.InsufficientFunds):
        services.hold_place(organisation=buyer, amount_fen=99_001, reference="order:3")
    with pytest.raises(services.IdempotencyConflict):
        services.hold_place(organisation=buyer, amount_fen=999, reference="order:2")
    assert balances_get(organisation=buyer) == {"available": 99_000, "held": 1_000, "escrow": 0, "receivable": 0}
    assert not Hold.objects.filter(reference="order:3").exists()


@pytest.mark.parametrize(("notional", "bps", "fee"), [(1_000_000, 10, 1_000), (12_345, 10, 12), (15, 5_000, 8), (1, 1, 0), (0, 10, 0)])
def test_fee_amount_rounds_half_up_in_whole_fen(notional, bps, fee):
    assert services.fee_amount(notional_fen=notional, bps=bps) == fee


def test_reversal_mirrors_the_entry_once(buyer):
    fees = services.platform_account(kind=AccountKind.FEES)
    entry = services.fee_charge(organisation=buyer, amount_fen=500, idempotency_key="fee-1")
    reversal = services.entry_reverse(entry=entry, idempotency_key="fee-1:reverse")
    assert reversal.reverses_id == entry.pk
    assert sorted(reversal.postings.values_list("amount_fen", flat=True)) == [-500, 500]
    assert balances_get(organisation=buyer)["available"] == 100_000 and fees.postings.count() == 2
    assert services.entry_reverse(entry=entry, idempotency_key="fee-1:reverse").pk == reversal.pk
    with pytest.raises(services.IdempotencyConflict):
        services.entry_reverse(entry=entry, idempotency_key="fee-1:reverse-again")


def test_ledger_verify_names_a_corrupted_balance(buyer):
    from django.core.management import CommandError, call_command

    from ledger.models import Account

    Account.objects.filter(organisation=buyer, kind="available").update(balance_fen=100_100)
    report = ledger_verify()
    assert not report.ok
    assert "caches 100100 but its postings sum to 100000" in report.problems[0]
    with pytest.raises(CommandError, match="FAILED"):
        call_command("ledger_verify", stdout=open("/dev/null", "w"), stderr=open("/dev/null", "w"))


def test_the_database_allows_one_reversal_per_entry_and_one_hold_per_reference(buyer):
    fees = services.platform_account(kind=AccountKind.FEES)
    entry = services.fee_charge(organisation=buyer, amount_fen=500, idempotency_key="fee-9")
    services.entry_reverse(entry=entry, idempotency_key="fee-9:reverse")
    with pytest.raises(IntegrityError), transaction.atomic():  # past the service's own check
        JournalEntry.objects.create(idempotency_key="fee-9:again", request_digest="-", kind="reversal", reverses=entry)
    services.hold_place(organisation=buyer, amount_fen=1_000, reference="order:9")
    with pytest.raises(IntegrityError), transaction.atomic():
        Hold.objects.create(organisation=buyer, reference="order:9", amount_fen=1)
    assert JournalEntry.objects.filter(reverses__isnull=True).count() >= 3
    assert fees.postings.count() == 2 and Hold.objects.filter(reference="order:9").count() == 1


@pytest.mark.parametrize("reference, postings, reverses_id", [
    ("order:12:c-1", [(7, -500), (3, 500)], None),
    ("", [(1, 2**40), (2, -(2**40))], 99),
    ("券 voucher:7", [(1, -5), (2, 5)], None),  # non-ASCII: json's \\u escapes, not UTF-8
    ('quote " back\\slash \n\t\x01 \x7f', [(1, -5), (2, 5)], None),
    ("big", [(1, -(2**70)), (2, 2**70)], None),  # past 64 bits
])
@pytest.mark.django_db(databases=[])
def test_an_entrys_digest_is_the_sha256_of_the_json_it_was_always_made_of(reference, postings, reverses_id):
    """Stored entries' digests are compared with a retry's: a change of form would answer every retry of an
    older entry with 409. The form is json.dumps with compact separators, whatever writes it."""
    request = services.EntryRequest(idempotency_key="k", kind=EntryKind.CAPTURE, postings=postings, reference=reference, reverses_id=reverses_id)
    canonical = json.dumps(["capture", sorted(postings), reference, reverses_id], separators=(",", ":"))
    assert request.digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert services.EntryRequest(idempotency_key="k2", kind="capture", postings=postings[::-1], reference=reference, reverses_id=reverses_id).digest == request.digest
