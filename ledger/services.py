"""Ledger writes: the only code that changes balances.

Every movement is a balanced journal entry posted by `entries_post`, which locks the accounts it touches
(in primary-key order, so concurrent posters never deadlock), refuses any entry that would take a
non-negative account below zero, writes the entry and its postings, and updates the cached balances in the
same transaction. Entries are idempotent on the caller's key: the same key with the same request returns
the original entry; the same key with a different request raises IdempotencyConflict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from common.db import bulk_update_rows, fetch_rows, fetch_together, in_lists, new, pg_array
from common.errors import ServiceError
from ledger.models import (
    NON_NEGATIVE_KINDS,
    ORGANISATION_KINDS,
    Account,
    AccountKind,
    EntryKind,
    Hold,
    HoldStatus,
    JournalEntry,
    Posting,
)
from marketplace.models import Organisation, User

_NON_NEGATIVE = frozenset(k.value for k in NON_NEGATIVE_KINDS)


class LedgerError(ServiceError):
    """A refused ledger operation; `field` names the input at fault for API error messages."""


class InsufficientFunds(LedgerError):
    field = "amount"


class IdempotencyConflict(LedgerError):
    status_code = 409
    field = "idempotency_key"


class InvalidEntry(LedgerError):
    pass


@dataclass(frozen=True)
class EntryRequest:
    idempotency_key: str
    kind: str
    postings: Sequence[tuple[int, int]]  # (account id, amount in fen)
    memo: str = ""
    reference: str = ""
    reverses_id: int | None = None
    created_by_id: int | None = None
    digest: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(_canonical([self.kind, sorted(self.postings), self.reference, self.reverses_id])).hexdigest())


def _canonical(value: list) -> bytes:
    """`json.dumps(value, separators=(",", ":"))`, the form stored digests were made of, as bytes. orjson
    writes the same for ASCII text without DEL (which json escapes and orjson does not) and 64-bit integers,
    twenty times faster (a matcher batch makes ~3 entries an order); anything else goes to json."""
    if all(not isinstance(v, str) or (v.isascii() and "\x7f" not in v) for v in value):
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(value, separators=(",", ":")).encode()


# --- Accounts --------------------------------------------------------------------------------------------

def accounts_open(*, organisation: Organisation) -> dict[str, Account]:
    """The organisation's four accounts, created on first use."""
    existing = {a.kind: a for a in Account.objects.filter(organisation=organisation)}
    for kind in ORGANISATION_KINDS:
        if kind not in existing:
            existing[kind], _ = Account.objects.get_or_create(organisation=organisation, kind=kind)
    return existing


def account_for(*, organisation: Organisation, kind: str) -> Account:
    return accounts_open(organisation=organisation)[kind]


def platform_account(*, kind: str, name: str = "") -> Account:
    account, _ = Account.objects.get_or_create(organisation=None, kind=kind, name=name)
    return account


# --- Posting ---------------------------------------------------------------------------------------------

def _validate(request: EntryRequest) -> None:
    if not request.idempotency_key or len(request.idempotency_key) > 200:
        raise InvalidEntry("An idempotency key of 1 to 200 characters is required.", field="idempotency_key")
    if len(request.postings) < 2:
        raise InvalidEntry("An entry needs at least two postings.")
    for _, amount in request.postings:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise InvalidEntry("Amounts are integer fen.", field="amount")
        if amount == 0:
            raise InvalidEntry("A posting of zero moves nothing.", field="amount")
    if sum(amount for _, amount in request.postings) != 0:
        raise InvalidEntry("Postings must sum to zero.")
    if len({account_id for account_id, _ in request.postings}) != len(request.postings):
        raise InvalidEntry("An account appears twice in one entry.")


def entries_post(requests: Sequence[EntryRequest], *, savepoint: bool = True, returning: bool = True) -> list[JournalEntry]:
    """Post several entries in one transaction (all or nothing). Returns the entries in request order;
    a replayed request returns the entry stored under its key. Locks every account involved, by id.

    savepoint=False, inside a transaction that is itself all or nothing (the matcher's batch): no savepoint
    and no retry; a key stored concurrently between check and insert fails the caller's transaction.
    returning=False: returns [] (a caller that does not use the entries saves building a model per entry)."""
    return _entries_post(requests, savepoint=savepoint, returning=returning)


def _entries_post(requests: Sequence[EntryRequest], *, savepoint: bool, existing: dict | None = None, returning: bool = True) -> list[JournalEntry]:
    for request in requests:
        _validate(request)
    keys = [r.idempotency_key for r in requests]
    if len(set(keys)) != len(keys):
        raise IdempotencyConflict("The same idempotency key appears twice in one batch.")
    if not savepoint:
        with transaction.atomic(savepoint=False):
            return _post_locked(requests, existing, returning)
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _post_locked(requests, existing if not attempt else None, returning)
        except IntegrityError:
            # A concurrent poster stored one of these keys between our check and our insert; on the retry
            # the key is found and answered as a replay or a conflict.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _store() -> _OrmStore:
    return _PostgresStore() if connection.vendor == "postgresql" else _OrmStore()


def _post_locked(requests: Sequence[EntryRequest], existing: dict[str, tuple[int, str]] | None = None, returning: bool = True) -> list[JournalEntry]:
    """`existing`: what the caller already read of these keys in this transaction ({key: (id, digest)})."""
    store = _store()
    account_ids = sorted({account_id for r in requests for account_id, _ in r.postings})
    accounts = store.lock_accounts(account_ids)  # {id: (kind, balance)}, locked in id order
    missing = set(account_ids) - set(accounts)
    if missing:
        raise InvalidEntry(f"Unknown account {min(missing)}.", field="account")

    if existing is None:
        existing = store.find_entries([r.idempotency_key for r in requests])  # {key: (id, digest)}
    fresh: list[EntryRequest] = []
    for request in requests:
        found = existing.get(request.idempotency_key)
        if found is None:
            fresh.append(request)
        elif found[1] != request.digest:
            raise IdempotencyConflict(
                f"Idempotency key {request.idempotency_key!r} was already used for a different request."
            )

    balances = {pk: balance for pk, (_, balance) in accounts.items()}
    after: list[list[int]] = []
    for request in fresh:
        row = []
        for account_id, amount in request.postings:
            balances[account_id] += amount
            row.append(balances[account_id])
        after.append(row)
    for pk, balance in balances.items():
        kind, old = accounts[pk]
        if balance < 0 and kind in _NON_NEGATIVE:
            short = -balance
            raise InsufficientFunds(
                f"Insufficient funds in {kind}: short by {short // 100}.{short % 100:02d} CNY "
                f"(balance {old // 100}.{old % 100:02d} CNY)."
            )
    if not fresh:
        return store.load_entries([existing[r.idempotency_key][0] for r in requests]) if returning else []

    now = timezone.now()
    ids = store.insert_entries(fresh, after, now, returning=returning)  # {key: id}, the postings with them
    store.update_balances({pk: bal for pk, bal in balances.items() if bal != accounts[pk][1]})
    if not returning:
        return []
    by_key = {r.idempotency_key: r for r in fresh}
    out = []
    for request in requests:
        if request.idempotency_key in ids:
            r = by_key[request.idempotency_key]
            out.append(
                JournalEntry(
                    pk=ids[r.idempotency_key], idempotency_key=r.idempotency_key, request_digest=r.digest, kind=r.kind,
                    memo=r.memo[:300], reference=r.reference[:100], reverses_id=r.reverses_id,
                    created_by_id=r.created_by_id, created_at=now,
                )
            )
        else:
            out.extend(store.load_entries([existing[request.idempotency_key][0]]))
    for entry in out:
        entry._state.adding = False
        entry._state.db = "default"
    return out


class _OrmStore:
    """Portable statements through the ORM (SQLite, the embedded default)."""

    def lock_accounts(self, ids: list[int]) -> dict[int, tuple[str, int]]:
        rows = Account.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", "kind", "balance_fen")
        return {pk: (kind, balance) for pk, kind, balance in rows}

    def lock_holds_find_entries(self, hold_ids: list[int], keys: list[str]) -> tuple[list[tuple], dict[str, tuple[int, str]]]:
        """The holds' rows, locked in id order (id, organisation, reference, amount, captured, released,
        status), and find_entries(keys)."""
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        return fetch_rows(*in_lists(f"{_HOLD_ROWS}{lock}", hold_ids)), self.find_entries(keys)

    def find_entries(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        rows = JournalEntry.objects.filter(idempotency_key__in=keys).values_list("idempotency_key", "pk", "request_digest")
        return {key: (pk, digest) for key, pk, digest in rows}

    def load_entries(self, ids: list[int]) -> list[JournalEntry]:
        found = JournalEntry.objects.in_bulk(ids)
        return [found[pk] for pk in ids]

    def insert_entries(self, fresh: list[EntryRequest], after: list[list[int]], now, *, returning: bool = True) -> dict[str, int]:
        """The entries and their postings (`after`: each posting's balance after it, per entry). Returns {key:
        id}, or {} when not `returning` and the backend need not read the ids back."""
        ids = self._insert_entries(fresh, now)
        Posting.objects.bulk_create([
            Posting(entry_id=ids[r.idempotency_key], account_id=account_id, amount_fen=amount, balance_after_fen=bal)
            for r, row in zip(fresh, after, strict=True)
            for (account_id, amount), bal in zip(r.postings, row, strict=True)
        ])
        return ids

    def _insert_entries(self, fresh: list[EntryRequest], now) -> dict[str, int]:
        created = JournalEntry.objects.bulk_create(
            [
                JournalEntry(
                    idempotency_key=r.idempotency_key, request_digest=r.digest, kind=r.kind, memo=r.memo[:300],
                    reference=r.reference[:100], reverses_id=r.reverses_id, created_by_id=r.created_by_id, created_at=now,
                )
                for r in fresh
            ]
        )
        if any(e.pk is None for e in created):  # backends that cannot return ids from a bulk insert
            return dict(JournalEntry.objects.filter(idempotency_key__in=[r.idempotency_key for r in fresh]).values_list("idempotency_key", "pk"))
        return {e.idempotency_key: e.pk for e in created}

    def update_balances(self, balances: dict[int, int]) -> None:
        for pk, balance in balances.items():
            Account.objects.filter(pk=pk).update(balance_fen=balance)


_HOLD_ROWS = "SELECT id, organisation_id, reference, amount_fen, captured_fen, released_fen, status FROM ledger_hold WHERE id IN ({}) ORDER BY id"
_FIND_ENTRIES = "SELECT idempotency_key, id, request_digest FROM ledger_journalentry WHERE idempotency_key = ANY(%s)"


class _PostgresStore(_OrmStore):
    """The same statements as array-parameter SQL, whatever the batch size: the holds and the keys are read in
    one round trip, entries and postings written in one statement. The ORM spent most of a transfer's CPU
    building per-row expressions (bench/RESULTS.md, ledger section)."""

    def lock_accounts(self, ids: list[int]) -> dict[int, tuple[str, int]]:
        with connection.cursor() as cur:
            cur.execute("SELECT id, kind, balance_fen FROM ledger_account WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
            return {pk: (kind, balance) for pk, kind, balance in cur.fetchall()}

    def lock_holds_find_entries(self, hold_ids: list[int], keys: list[str]) -> tuple[list[tuple], dict[str, tuple[int, str]]]:
        holds, found = fetch_together([
            in_lists(f"{_HOLD_ROWS} FOR UPDATE", hold_ids),
            (_FIND_ENTRIES, [keys]),
        ])
        return holds, {key: (pk, digest) for key, pk, digest in found}

    def find_entries(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        with connection.cursor() as cur:
            cur.execute(_FIND_ENTRIES, [keys])
            return {key: (pk, digest) for key, pk, digest in cur.fetchall()}

    def insert_entries(self, fresh: list[EntryRequest], after: list[list[int]], now, *, returning: bool = True) -> dict[str, int]:
        """One statement: the entries, and their postings joined to them by key (unique in a batch). Not
        `returning`, nothing is read back: in the matcher's pipeline (exchange.matcher._pipeline) the
        statement then waits for no round trip of its own."""
        postings = [
            (r.idempotency_key, account_id, amount, bal)
            for r, row in zip(fresh, after, strict=True)
            for (account_id, amount), bal in zip(r.postings, row, strict=True)
        ]
        with connection.cursor() as cur:
            cur.execute(
                "WITH e AS (INSERT INTO ledger_journalentry "
                "(idempotency_key, request_digest, kind, memo, reference, reverses_id, created_by_id, created_at) "
                "SELECT k, d, kd, m, r, rv, cb, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::text[], %s::bigint[], %s::bigint[]) AS v(k, d, kd, m, r, rv, cb) RETURNING idempotency_key, id), "
                "p AS (INSERT INTO ledger_posting (entry_id, account_id, amount_fen, balance_after_fen) "
                "SELECT e.id, v.a, v.amt, v.bal FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[]) "
                "WITH ORDINALITY AS v(k, a, amt, bal, n) JOIN e ON e.idempotency_key = v.k ORDER BY v.n) "  # ids in posting order: balances run in it
                "SELECT idempotency_key, id FROM e",
                [
                    now, *(pg_array(column) for column in (
                        [r.idempotency_key for r in fresh], [r.digest for r in fresh], [str(r.kind) for r in fresh],
                        [r.memo[:300] for r in fresh], [r.reference[:100] for r in fresh], [r.reverses_id for r in fresh],
                        [r.created_by_id for r in fresh])),
                    *(pg_array([p[n] for p in postings]) for n in range(4)),
                ],
            )
            return dict(cur.fetchall()) if returning else {}

    def update_balances(self, balances: dict[int, int]) -> None:
        if not balances:
            return
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE ledger_account AS a SET balance_fen = v.bal "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, bal) WHERE a.id = v.id",
                [pg_array(list(balances)), pg_array(list(balances.values()))],
            )


def entry_post(
    *,
    idempotency_key: str,
    kind: str,
    postings: Iterable[tuple[Account, int]],
    memo: str = "",
    reference: str = "",
    created_by: User | None = None,
) -> JournalEntry:
    request = EntryRequest(
        idempotency_key=idempotency_key, kind=kind, postings=[(a.pk, amount) for a, amount in postings], memo=memo,
        reference=reference, created_by_id=created_by.pk if created_by else None,
    )
    return entries_post([request])[0]


def transfer(
    *,
    source: Account,
    destination: Account,
    amount_fen: int,
    idempotency_key: str,
    kind: str = EntryKind.TRANSFER,
    memo: str = "",
    reference: str = "",
    created_by: User | None = None,
) -> JournalEntry:
    """Move a positive amount from one account to another."""
    if not isinstance(amount_fen, int) or amount_fen <= 0:
        raise InvalidEntry("The amount must be a positive number of fen.", field="amount")
    return entry_post(
        idempotency_key=idempotency_key, kind=kind, postings=[(source, -amount_fen), (destination, amount_fen)],
        memo=memo, reference=reference, created_by=created_by,
    )


@transaction.atomic
def entry_reverse(*, entry: JournalEntry, idempotency_key: str, memo: str = "", created_by: User | None = None) -> JournalEntry:
    """Correct an entry by posting its mirror image; the original stays as it was. Locks the original entry's
    row (FOR NO KEY UPDATE: the immutability trigger fires on UPDATE, not on a lock), so concurrent reversals
    queue and all but the first are told it is reversed, not refused by the ledger or the unique constraint."""
    list(JournalEntry.objects.select_for_update(no_key=True).filter(pk=entry.pk).values_list("pk", flat=True))
    if JournalEntry.objects.filter(reverses=entry).exclude(idempotency_key=idempotency_key).exists():
        raise IdempotencyConflict(f"Entry {entry.pk} is already reversed.", field="entry")
    postings = [(p.account_id, -p.amount_fen) for p in entry.postings.all()]
    request = EntryRequest(
        idempotency_key=idempotency_key, kind=EntryKind.REVERSAL, postings=postings,
        memo=memo or f"reversal of entry {entry.pk}", reference=entry.reference, reverses_id=entry.pk,
        created_by_id=created_by.pk if created_by else None,
    )
    return entries_post([request])[0]


# --- Holds -----------------------------------------------------------------------------------------------

def hold_place(*, organisation: Organisation, amount_fen: int, reference: str, memo: str = "", new_reference: bool = False) -> Hold:
    """Reserve funds: available -> held. Idempotent on `reference` (one hold per purpose).

    `new_reference=True` is for a caller inside the transaction that creates the purpose's own unique row
    (an order): no hold can exist for the reference yet, so the look-ups are skipped. A concurrent duplicate
    still cannot hold twice: the entry key replays and the hold's unique reference fails the second insert."""
    if not isinstance(amount_fen, int) or amount_fen <= 0:
        raise InvalidEntry("A hold must be a positive number of fen.", field="amount")
    accounts = accounts_open(organisation=organisation)
    if new_reference:
        transfer(
            source=accounts[AccountKind.AVAILABLE], destination=accounts[AccountKind.HELD], amount_fen=amount_fen,
            idempotency_key=f"hold:{reference}:place", kind=EntryKind.HOLD, memo=memo or f"hold for {reference}",
            reference=reference,
        )
        return Hold.objects.create(organisation=organisation, reference=reference, amount_fen=amount_fen)
    with transaction.atomic():
        existing = Hold.objects.filter(reference=reference).first()
        if existing is not None:
            if existing.organisation_id != organisation.pk or existing.amount_fen != amount_fen:
                raise IdempotencyConflict(f"A different hold already exists for {reference!r}.", field="reference")
            return existing
        transfer(
            source=accounts[AccountKind.AVAILABLE], destination=accounts[AccountKind.HELD], amount_fen=amount_fen,
            idempotency_key=f"hold:{reference}:place", kind=EntryKind.HOLD, memo=memo or f"hold for {reference}",
            reference=reference,
        )
        # A concurrent call with the same reference waited on the account lock and replayed the entry above;
        # the hold it created is now visible and is the answer.
        return Hold.objects.filter(reference=reference).first() or Hold.objects.create(
            organisation=organisation, reference=reference, amount_fen=amount_fen
        )


def _hold_locked(hold: Hold) -> Hold:
    return Hold.objects.select_for_update().get(pk=hold.pk)


@transaction.atomic
def hold_release(*, hold: Hold, idempotency_key: str, amount_fen: int | None = None) -> Hold:
    """Give back part (or, by default, all that remains) of a hold: held -> available."""
    hold = _hold_locked(hold)
    if JournalEntry.objects.filter(idempotency_key=idempotency_key).exists():
        return hold  # a replay: already applied
    amount = hold.remaining_fen if amount_fen is None else amount_fen
    if amount == 0 and amount_fen is None:
        return hold
    _check_hold_amount(hold, amount)
    accounts = accounts_open(organisation=hold.organisation)
    transfer(
        source=accounts[AccountKind.HELD], destination=accounts[AccountKind.AVAILABLE], amount_fen=amount,
        idempotency_key=idempotency_key, kind=EntryKind.RELEASE, memo=f"release of {hold.reference}", reference=hold.reference,
    )
    Hold.objects.filter(pk=hold.pk).update(released_fen=F("released_fen") + amount)
    return _close_if_spent(hold)


@transaction.atomic
def hold_capture(
    *,
    hold: Hold,
    amount_fen: int,
    destination: Account,
    idempotency_key: str,
    kind: str = EntryKind.CAPTURE,
    memo: str = "",
) -> Hold:
    """Take part or all of a hold: held -> destination (escrow for a trade, the fee account, a provider)."""
    hold = _hold_locked(hold)
    if JournalEntry.objects.filter(idempotency_key=idempotency_key).exists():
        return hold
    _check_hold_amount(hold, amount_fen)
    accounts = accounts_open(organisation=hold.organisation)
    transfer(
        source=accounts[AccountKind.HELD], destination=destination, amount_fen=amount_fen,
        idempotency_key=idempotency_key, kind=kind, memo=memo or f"capture of {hold.reference}", reference=hold.reference,
    )
    Hold.objects.filter(pk=hold.pk).update(captured_fen=F("captured_fen") + amount_fen)
    return _close_if_spent(hold)


def _check_hold_amount(hold: Hold, amount: int) -> None:
    if hold.status != HoldStatus.OPEN:
        raise InvalidEntry(f"Hold {hold.reference} is closed.", field="hold")
    if not isinstance(amount, int) or amount <= 0:
        raise InvalidEntry("The amount must be a positive number of fen.", field="amount")
    if amount > hold.remaining_fen:
        raise InsufficientFunds(f"Hold {hold.reference} has {hold.remaining_fen} fen left, not {amount}.")


def _close_if_spent(hold: Hold) -> Hold:
    hold.refresh_from_db()
    if hold.remaining_fen == 0 and hold.status == HoldStatus.OPEN:
        hold.status = HoldStatus.CLOSED
        hold.save(update_fields=["status", "updated_at"])
    return hold


# --- Fees ------------------------------------------------------------------------------------------------

def fee_amount(*, notional_fen: int, bps: int) -> int:
    """A fee in whole fen: notional x bps / 10,000, rounded half up (never float)."""
    if notional_fen < 0 or bps < 0:
        raise ValueError("notional and bps are non-negative")
    return (notional_fen * bps + 5_000) // 10_000


def fee_charge(*, organisation: Organisation, amount_fen: int, idempotency_key: str, reference: str = "", hold: Hold | None = None) -> JournalEntry | Hold:
    """Charge a fee into the platform fee account, from a hold when given (a buyer's order hold covers its
    maximum fee), else from available funds."""
    fees = platform_account(kind=AccountKind.FEES)
    if hold is not None:
        return hold_capture(hold=hold, amount_fen=amount_fen, destination=fees, idempotency_key=idempotency_key, kind=EntryKind.FEE, memo=f"fee {reference}")
    return transfer(
        source=account_for(organisation=organisation, kind=AccountKind.AVAILABLE), destination=fees, amount_fen=amount_fen,
        idempotency_key=idempotency_key, kind=EntryKind.FEE, memo=f"fee {reference}", reference=reference,
    )


# --- Batched hold movements (the matcher settles a whole batch of trades at once) -------------------------

@dataclass(frozen=True)
class HoldMovement:
    """Capture part of a hold into `destination_id`, or release it back to available when that is None.
    A release with `amount_fen=None` gives back whatever the hold has left after the batch's captures, less
    `keep_fen` (an order amended down, or whose amend was refused, keeps what its open part needs).
    A capture may also take `fee_fen` from the hold into `fee_destination_id` in the same journal entry (one
    entry of three postings for a trade and its fee, rather than two entries)."""

    hold_id: int
    amount_fen: int | None
    idempotency_key: str
    destination_id: int | None = None
    kind: str = EntryKind.CAPTURE
    memo: str = ""
    keep_fen: int = 0
    fee_fen: int = 0
    fee_destination_id: int | None = None


def holds_move(
    movements: Sequence[HoldMovement], *, entries: Sequence[EntryRequest] = (), savepoint: bool = True,
    account_ids: dict[tuple[int, str], int] | None = None,
) -> None:
    """Apply captures and releases to several holds in one transaction, all or nothing. A movement whose
    key is already in the journal is skipped (a replay). Locks the holds (by id), then every account in one
    statement (by id): one lock phase, so it cannot deadlock with hold_place or another batch.

    `entries` are posted first, in the same call (the matcher's new holds of the batch: their funds reach
    the held accounts before the captures take them out). savepoint=False: as for `entries_post`.
    `account_ids`: the caller's cache of held/available account ids by (organisation id, kind), read and
    filled here (an account's id never changes)."""
    movements = [m for m in movements if m.amount_fen != 0 or m.fee_fen]
    if not movements:
        if entries:
            entries_post(entries, savepoint=savepoint, returning=False)
        return
    with transaction.atomic(savepoint=savepoint):
        # Raw statements: this runs once per matcher batch, and building them through the ORM cost more CPU
        # than the database spent on them.
        # The holds locked and, in the same round trip, one read of every key, the new holds' entries
        # included: entries_post needs no second look.
        rows, existing = _store().lock_holds_find_entries(
            sorted({m.hold_id for m in movements}), [m.idempotency_key for m in movements] + [r.idempotency_key for r in entries])
        holds = {
            row[0]: new(Hold, id=row[0], organisation_id=row[1], reference=row[2], amount_fen=row[3], captured_fen=row[4], released_fen=row[5], status=row[6])
            for row in rows
        }
        for hold in holds.values():
            hold._state.adding = False
            hold._state.db = "default"
        accounts = account_ids if account_ids is not None else {}
        unknown = sorted({h.organisation_id for h in holds.values()} - {org for org, _ in accounts})
        if unknown:
            accounts.update(
                ((org, kind), pk)
                for pk, org, kind in fetch_rows(*in_lists("SELECT id, organisation_id, kind FROM ledger_account WHERE organisation_id IN ({}) AND kind IN (%s, %s)", unknown, extra=[AccountKind.HELD.value, AccountKind.AVAILABLE.value]))
            )
        captured: dict[int, int] = {}
        released: dict[int, int] = {}
        requests = []
        for m in movements:
            if m.idempotency_key in existing:
                continue
            hold = holds.get(m.hold_id)
            if hold is None:
                raise InvalidEntry(f"Unknown hold {m.hold_id}.", field="hold")
            if m.fee_fen and (m.destination_id is None or m.fee_destination_id is None):
                raise InvalidEntry("A fee is taken only by a capture, into a fee account.", field="fee")
            left = hold.remaining_fen - captured.get(hold.id, 0) - released.get(hold.id, 0)
            amount = m.amount_fen
            if amount is None:
                if m.destination_id is not None:
                    raise InvalidEntry("Only a release may take whatever is left.", field="amount")
                if left <= m.keep_fen or hold.status != HoldStatus.OPEN:
                    continue
                amount = left - m.keep_fen
            fee = m.fee_fen
            if amount < 0 or fee < 0:
                raise InvalidEntry("The amount must be a positive number of fen.", field="amount")
            taken = amount + fee
            if hold.status != HoldStatus.OPEN or taken > left:
                raise InsufficientFunds(f"Hold {hold.reference} has {left} fen left, not {taken}.")
            held = accounts[(hold.organisation_id, AccountKind.HELD)]
            if m.destination_id is None:
                destination, kind, bucket = accounts[(hold.organisation_id, AccountKind.AVAILABLE)], EntryKind.RELEASE, released
            else:
                destination, kind, bucket = m.destination_id, m.kind, captured
            bucket[hold.id] = bucket.get(hold.id, 0) + taken
            postings = [(held, -taken), (destination, amount)]
            if fee:
                postings.append((m.fee_destination_id, fee))
            requests.append(
                EntryRequest(
                    idempotency_key=m.idempotency_key, kind=kind, postings=[p for p in postings if p[1]],
                    memo=m.memo or f"{kind} {hold.reference}", reference=hold.reference,
                )
            )
        if not requests and not entries:
            return
        _entries_post([*entries, *requests], savepoint=savepoint, existing=existing, returning=False)
        changed = []
        for pk in set(captured) | set(released):
            hold = holds[pk]
            hold.captured_fen += captured.get(pk, 0)
            hold.released_fen += released.get(pk, 0)
            if hold.remaining_fen == 0:
                hold.status = HoldStatus.CLOSED
            hold.updated_at = timezone.now()
            changed.append(hold)
        bulk_update_rows(Hold, changed, ["captured_fen", "released_fen", "status", "updated_at"])

