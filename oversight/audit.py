"""The hash-chained audit log.

Why an ingestion job and not signals: the matcher and the ledger write with bulk_create and array SQL, so
post_save never fires for most of what matters, and the order hot path must not pay for hashing. Instead an
idempotent job (`audit_ingest`, periodic) reads new rows from each source table in id order and appends one
record per row to the chain, under one lock so there is one writer. Rows that commit late with a lower id
are still found: above each source's cursor the job anti-joins against the chain instead of trusting "max id
seen", and the cursor only moves past rows older than AUDIT_INGEST_LAG_SECONDS.

hash(n) = sha256(hash(n-1) "\n" seq "\n" kind "\n" object_id "\n" payload), payload being canonical JSON
(sorted keys, no whitespace, UTC timestamps). Checkpoints sign (seq, hash, time) with HMAC-SHA256 under the
platform key. `audit_verify` recomputes the chain, checks every checkpoint, and (with sources) rebuilds each
payload from the source row as it is now, naming the first record whose source was edited or deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.db import connection, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from exchange.models import Contract, OrderEvent, Trade
from ledger.models import JournalEntry
from oversight.models import Alert, AlertReview, AuditCheckpoint, AuditCursor, AuditRecord, DeletionAttestation

GENESIS = "0" * 64
BATCH = 5000
_CHAIN_LOCK = "__chain__"


def canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(value):
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def record_hash(prev_hash: str, seq: int, kind: str, object_id: int, payload: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{kind}\n{object_id}\n{payload}".encode()).hexdigest()


# --- Sources -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    kind: str
    queryset: Callable[[], QuerySet]
    fields: tuple[str, ...]
    time_field: str = "created_at"  # empty: the source keeps no cursor
    # Extra data per batch of ids (e.g. an entry's postings), merged into each payload.
    extra: Callable[[list[int]], dict[int, dict]] | None = field(default=None)

    def rows(self, qs: QuerySet) -> Iterator[tuple[int, dict]]:
        """(id, payload dict) for the rows of `qs` (already ordered by id and sliced or iterated)."""
        for values in qs.values_list("id", *self.fields):
            yield values[0], dict(zip(("id", *self.fields), values, strict=True))

    def payloads(self, qs: QuerySet) -> list[tuple[int, str]]:
        rows = list(self.rows(qs))
        extra = self.extra([pk for pk, _ in rows]) if self.extra and rows else {}  # nosec B610 # our own callback, not QuerySet.extra
        return [(pk, canonical({**data, **extra.get(pk, {})})) for pk, data in rows]


def _postings(entry_ids: list[int]) -> dict[int, dict]:
    from ledger.models import Posting

    out: dict[int, dict] = {pk: {"postings": []} for pk in entry_ids}
    for entry_id, account_id, amount, after in Posting.objects.filter(entry_id__in=entry_ids).order_by("id").values_list("entry_id", "account_id", "amount_fen", "balance_after_fen"):
        out[entry_id]["postings"].append([account_id, amount, after])
    return out


def sources() -> list[Source]:
    """Every table whose rows enter the chain, in the order a run ingests them. Each listed field is
    immutable once written (an order's status changes, so orders enter through their events)."""
    found = [
        Source("order_event", lambda: OrderEvent.objects.all(), (
            "order_id", "kind", "quantity", "price_fen_per_lot", "reason", "trade_id", "actor_id", "created_at",
            "order__instrument_id", "order__organisation_id", "order__user_id", "order__side", "order__type",
            "order__time_in_force", "order__client_order_id")),
        Source("trade", lambda: Trade.objects.all(), (
            "instrument_id", "seq", "maker_order_id", "taker_order_id", "buyer_id", "seller_id", "price_fen_per_lot",
            "quantity", "value_fen", "taker_side", "buyer_fee_fen", "seller_fee_fen", "created_at")),
        Source("contract", lambda: Contract.objects.all(), (
            "trade_id", "instrument_id", "buyer_id", "seller_id", "listing_id", "quantity", "price_fen_per_lot",
            "value_fen", "created_at")),
        Source("journal_entry", lambda: JournalEntry.objects.all(), (
            "idempotency_key", "kind", "memo", "reference", "reverses_id", "created_by_id", "created_at"), extra=_postings),
        Source("admin_action", lambda: LogEntry.objects.all(), (
            "action_time", "user_id", "content_type_id", "object_id", "object_repr", "action_flag", "change_message"),
            time_field="action_time"),
        # An alert's opening (its evidence and status change later: those enter through reviews).
        Source("alert", lambda: Alert.objects.all(), ("kind", "fingerprint", "organisation_id", "instrument_id", "created_at")),
        Source("alert_review", lambda: AlertReview.objects.all(), (
            "alert_id", "actor_id", "from_status", "to_status", "note", "created_at")),
        Source("deletion_attestation", lambda: DeletionAttestation.objects.all(), (
            "contract_id", "supplier_id", "method", "note", "attested_by_id", "attested_at"), time_field="attested_at"),
    ]
    found.extend(_metering_and_voucher_sources())
    return found


def _metering_and_voucher_sources() -> list[Source]:
    from metering.models import UsageEvent
    from vouchers.models import Application, ApplicationStatus, Redemption, Voucher

    return [
        Source("usage_event", lambda: UsageEvent.objects.all(), (
            "supplier_id", "event_id", "contract_id", "data_centre_id", "device_model_id", "started_at", "ended_at", "device_count",
            "device_seconds", "units_micro", "credited_micro", "energy_kwh", "energy_estimated", "utilisation_pct", "received_at"),
            time_field="received_at"),
        # A voucher decision is an application once decided; one decided late may have a low id, so this
        # source keeps no cursor (applications are few) and is anti-joined whole each run.
        Source("voucher_decision", lambda: Application.objects.exclude(status=ApplicationStatus.PENDING), (
            "programme_id", "organisation_id", "applied_by_id", "requested_fen", "eligible", "status", "approved_fen", "reason",
            "decided_by_id", "decided_at"), time_field=""),
        Source("voucher", lambda: Voucher.objects.all(), (
            "application_id", "programme_id", "organisation_id", "amount_fen", "issued_at", "expires_at"), time_field="issued_at"),
        # Its status and money move as delivery is proven; what was claimed, at which rate, does not.
        Source("voucher_redemption", lambda: Redemption.objects.all(), (
            "voucher_id", "contract_id", "value_fen", "rate_bps", "rate_kind", "year", "created_at")),
    ]


# --- Ingestion -----------------------------------------------------------------------------------------

def _lag() -> dt.timedelta:
    return dt.timedelta(seconds=getattr(settings, "AUDIT_INGEST_LAG_SECONDS", 60))


def audit_ingest(*, batch: int = BATCH, now: dt.datetime | None = None) -> dict[str, int]:
    """Append every source row not yet in the chain; idempotent. Returns how many were added per kind."""
    added: dict[str, int] = {}
    for source in sources():
        after = 0  # within one run, rows up to the last id appended are done: each batch starts past them
        while True:
            n, after = _ingest_batch(source, batch, after)
            added[source.kind] = added.get(source.kind, 0) + n
            if n < batch:
                break
        _advance_cursor(source, now or timezone.now())
    if any(added.values()):
        audit_checkpoint_sign()
    return added


def _pending(source: Source, safe_id: int) -> QuerySet:
    done = AuditRecord.objects.filter(kind=source.kind, object_id__gt=safe_id).values("object_id")
    return source.queryset().filter(id__gt=safe_id).exclude(id__in=done).order_by("id")


@transaction.atomic
def _ingest_batch(source: Source, batch: int, after: int = 0) -> tuple[int, int]:
    """Append up to `batch` pending rows with id > `after`; returns (how many, the last id appended)."""
    AuditCursor.objects.get_or_create(source=_CHAIN_LOCK)
    AuditCursor.objects.select_for_update().get(source=_CHAIN_LOCK)  # one writer of the chain
    cursor, _ = AuditCursor.objects.get_or_create(source=source.kind)
    rows = source.payloads(_pending(source, max(cursor.safe_id, after))[:batch])
    if not rows:
        return 0, after
    head = AuditRecord.objects.order_by("-seq").values_list("seq", "hash").first() or (0, GENESIS)
    seq, prev = head
    records = []
    for object_id, payload in rows:
        seq += 1
        digest = record_hash(prev, seq, source.kind, object_id, payload)
        records.append((seq, source.kind, object_id, payload, prev, digest))
        prev = digest
    _insert(records)
    return len(records), rows[-1][0]


def _insert(records: list[tuple]) -> None:
    """(seq, kind, object_id, payload, prev_hash, hash) rows. COPY on PostgreSQL: bulk_create sends text
    arrays, and escaping the quotes of every JSON payload into an array literal took most of the time."""
    if connection.vendor != "postgresql":
        AuditRecord.objects.bulk_create([AuditRecord(seq=r[0], kind=r[1], object_id=r[2], payload=r[3], prev_hash=r[4], hash=r[5]) for r in records])
        return
    now = timezone.now()
    with connection.cursor() as cursor, cursor.cursor.copy(
        "COPY oversight_auditrecord (seq, kind, object_id, payload, prev_hash, hash, recorded_at) FROM STDIN"
    ) as copy:
        for r in records:
            copy.write_row((*r, now))


@transaction.atomic
def _advance_cursor(source: Source, now: dt.datetime) -> None:
    """Move the cursor over rows old enough that no transaction still writing could hold a lower id."""
    if not source.time_field:
        return
    cursor = AuditCursor.objects.select_for_update().get(source=source.kind)
    qs = source.queryset().filter(id__gt=cursor.safe_id, **{f"{source.time_field}__lte": now - _lag()})
    candidate = qs.aggregate(m=Max("id"))["m"]
    if candidate is None:
        return
    if _pending(source, cursor.safe_id).filter(id__lte=candidate).exists():
        return
    cursor.safe_id = candidate
    cursor.save(update_fields=["safe_id"])


# --- Checkpoints ---------------------------------------------------------------------------------------

def _key() -> bytes:
    configured = getattr(settings, "AUDIT_SIGNING_KEY", "")
    if configured:
        return configured.encode()
    # Embedded default: derived from SECRET_KEY, so a laptop install signs without configuration.
    return hmac.new(settings.SECRET_KEY.encode(), b"suanli-audit-checkpoint", hashlib.sha256).digest()


def key_id() -> str:
    return hashlib.sha256(b"key-id:" + _key()).hexdigest()[:16]


def _sign(seq: int, hash_: str, at: dt.datetime) -> str:
    message = f"{seq}:{hash_}:{at.astimezone(dt.UTC).isoformat()}".encode()
    return hmac.new(_key(), message, hashlib.sha256).hexdigest()


def audit_checkpoint_sign() -> AuditCheckpoint | None:
    """Sign the current head (none if the chain is empty or the head is already signed)."""
    head = AuditRecord.objects.order_by("-seq").values_list("seq", "hash").first()
    if head is None:
        return None
    last = AuditCheckpoint.objects.order_by("-id").first()
    if last and last.seq == head[0] and last.hash == head[1]:
        return last
    at = timezone.now().replace(microsecond=0)
    return AuditCheckpoint.objects.create(seq=head[0], hash=head[1], signed_at=at, key_id=key_id(), signature=_sign(head[0], head[1], at))


# --- Verification --------------------------------------------------------------------------------------

@dataclass
class VerifyResult:
    ok: bool
    records: int = 0
    checkpoints: int = 0
    first_broken_seq: int | None = None
    kind: str | None = None
    object_id: int | None = None
    reason: str = ""

    def as_dict(self) -> dict:
        return {"ok": self.ok, "records": self.records, "checkpoints": self.checkpoints, "first_broken_seq": self.first_broken_seq,
                "kind": self.kind, "object_id": self.object_id, "reason": self.reason}


def audit_verify(*, check_sources: bool = True) -> VerifyResult:
    """Recompute the chain; check the checkpoints; rebuild payloads from the sources. Names the first
    broken record (lowest seq) and why."""
    broken: list[VerifyResult] = []
    expected_seq, prev, count = 1, GENESIS, 0
    hashes_at: dict[int, str] = {}
    checkpoints = list(AuditCheckpoint.objects.order_by("id"))
    wanted = {c.seq for c in checkpoints}
    rows = AuditRecord.objects.order_by("seq").values_list("seq", "kind", "object_id", "payload", "prev_hash", "hash")
    for seq, kind, object_id, payload, prev_hash, hash_ in rows.iterator(chunk_size=BATCH):
        count += 1
        if seq != expected_seq:
            broken.append(VerifyResult(False, first_broken_seq=expected_seq, reason=f"record #{expected_seq} is missing (deleted); the chain jumps to #{seq}"))
            break
        if prev_hash != prev:
            broken.append(VerifyResult(False, first_broken_seq=seq, kind=kind, object_id=object_id, reason=f"record #{seq} does not link to the record before it"))
            break
        if record_hash(prev, seq, kind, object_id, payload) != hash_:
            broken.append(VerifyResult(False, first_broken_seq=seq, kind=kind, object_id=object_id, reason=f"record #{seq} was altered: its hash does not match its content"))
            break
        if seq in wanted:
            hashes_at[seq] = hash_
        prev, expected_seq = hash_, seq + 1
    head_seq = expected_seq - 1
    if not broken:
        for c in checkpoints:
            if not hmac.compare_digest(_sign(c.seq, c.hash, c.signed_at), c.signature):
                broken.append(VerifyResult(False, first_broken_seq=c.seq, reason=f"checkpoint {c.pk} at #{c.seq} has a bad signature (key {c.key_id})"))
                break
            if c.seq > head_seq:
                broken.append(VerifyResult(False, first_broken_seq=head_seq + 1, reason=f"record #{head_seq + 1} is missing (deleted): checkpoint {c.pk} signed the chain up to #{c.seq}"))
                break
            if hashes_at.get(c.seq) != c.hash:
                broken.append(VerifyResult(False, first_broken_seq=c.seq, reason=f"record #{c.seq} differs from what checkpoint {c.pk} signed"))
                break
    if check_sources:
        mismatch = _verify_sources()
        if mismatch:
            broken.append(mismatch)
    if broken:
        first = min(broken, key=lambda r: r.first_broken_seq or 0)
        first.records, first.checkpoints = count, len(checkpoints)
        return first
    return VerifyResult(True, records=count, checkpoints=len(checkpoints))


def _verify_sources() -> VerifyResult | None:
    """Merge-join each source (by id) with its records (by object_id): a record whose source row is gone
    or now reads differently is broken. Returns the one with the lowest seq."""
    worst: VerifyResult | None = None
    for source in sources():
        records = AuditRecord.objects.filter(kind=source.kind).order_by("object_id").values_list("object_id", "seq", "payload")
        last = records.aggregate(m=Max("object_id"))["m"]
        if last is None:
            continue
        current = _source_stream(source, last)
        nxt = next(current, None)
        for object_id, seq, payload in records.iterator(chunk_size=BATCH):
            if worst and seq >= worst.first_broken_seq:
                continue
            while nxt is not None and nxt[0] < object_id:
                nxt = next(current, None)
            if nxt is None or nxt[0] != object_id:
                worst = VerifyResult(False, first_broken_seq=seq, kind=source.kind, object_id=object_id, reason=f"record #{seq}: {source.kind} {object_id} was deleted from the source table")
            elif nxt[1] != payload:
                worst = VerifyResult(False, first_broken_seq=seq, kind=source.kind, object_id=object_id, reason=f"record #{seq}: {source.kind} {object_id} was changed in the source table since it was recorded")
    return worst


def _source_stream(source: Source, last_id: int) -> Iterator[tuple[int, str]]:
    after = 0
    while True:
        chunk = source.payloads(source.queryset().filter(id__gt=after, id__lte=last_id).order_by("id")[:BATCH])
        yield from chunk
        if len(chunk) < BATCH:
            return
        after = chunk[-1][0]
