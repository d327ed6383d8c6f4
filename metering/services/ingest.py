"""Usage ingestion: a supplier's batch of events in, one answer per event out, rated and paid in the same
transaction (rating lag is the request's own latency).

The batch is validated in Python in one pass (no serializer per event: 10,000 of them cost more than the
whole insert), then, in one transaction:

1. the deliveries of the contracts named are created if missing and locked (`SELECT ... FOR UPDATE` in
   contract id order), so two clients sending the same batch are serialised per contract;
2. event ids already stored for the supplier are looked up in one statement (duplicates);
3. each new event is credited in batch order up to the contract's remaining quantity;
4. the events are inserted in one statement (`COPY` on PostgreSQL, bulk_create elsewhere); if a concurrent
   batch stored one of the ids under a contract we did not lock, the unique key refuses the insert and the
   whole transaction is retried (the lookup then answers them as duplicates);
5. each contract's delivered quantity and escrow release are updated, with one ledger entry per contract.

One bad event never rejects its neighbours: it is answered `rejected` with a reason code and a message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from common.db import bulk_update_rows
from exchange.models import Contract
from ledger import services as ledger
from marketplace.models import DeviceInventory, DeviceModel, Product
from marketplace.units import UNIT_RATING_FIELD
from metering import funding
from metering.models import MICRO, ContractDelivery, DeliveryStatus, UsageEvent
from metering.services.money import fee_for, movement_request, parties_for, released_for

MAX_BATCH = 10_000
_US = dt.timedelta(microseconds=1)
# device-microseconds x (TFLOPS x 100) / this = micro PFLOPS-hours
_RATING_DIVISOR = 360_000_000
_WH_DIVISOR = 3_600_000_000  # watt x device-microseconds / this = watt-hours

FIELDS = frozenset({"event_id", "contract", "data_centre", "device_model", "start", "end", "device_count", "energy_kwh", "utilisation_pct"})
REQUIRED = ("event_id", "contract", "data_centre", "device_model", "start", "end", "device_count")

# Reason codes, with the message a supplier sees.
REASONS = {
    "invalid": "The event is malformed; see errors.",
    "unknown_contract": "No such contract among your organisation's sales.",
    "contract_settled": "The contract is settled; it takes no more usage.",
    "outside_window": "The usage is outside the contract's delivery window.",
    "late": "The contract's window and grace period are over; late usage is no longer accepted.",
    "in_future": "The usage ends in the future.",
    "wrong_data_centre": "The data centre does not back this contract.",
    "device_model_not_eligible": "The device model is not installed in the data centre or cannot deliver the contract's product.",
    "too_many_devices": "More devices than the listing behind the contract offers.",
    "over_quantity": "The contract's quantity is already fully delivered.",
}


def grace_period() -> dt.timedelta:
    return dt.timedelta(seconds=int(getattr(settings, "METERING_GRACE_SECONDS", 6 * 3600)))


def clock_skew() -> dt.timedelta:
    return dt.timedelta(seconds=int(getattr(settings, "METERING_CLOCK_SKEW_SECONDS", 300)))


class BatchTooLarge(ValueError):
    pass


@dataclass
class IngestResult:
    results: list[dict]
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    credited_micro: int = 0
    contracts: dict[int, dict] = field(default_factory=dict)


@dataclass(slots=True)
class _ContractInfo:
    pk: int
    seller_id: int
    buyer_id: int
    quantity_micro: int
    value_fen: int
    seller_fee_fen: int
    start: dt.datetime
    end: dt.datetime
    product_id: int
    data_centre_id: int
    device_count: int


def _rejected(event_id: Any, reason: str, errors: dict | None = None) -> dict:
    out = {"event_id": event_id, "status": "rejected", "reason": reason, "message": REASONS[reason]}
    if errors:
        out["errors"] = errors
    return out


def _when(value: Any) -> dt.datetime | str:
    if type(value) is not str:
        return "An ISO 8601 time with a time zone, e.g. 2026-11-29T08:00:00Z."
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return "An ISO 8601 time with a time zone, e.g. 2026-11-29T08:00:00Z."
    if parsed.tzinfo is None:
        return "Give a time zone, e.g. 2026-11-29T08:00:00Z."
    return parsed


def _decimal(value: Any, places: int, upper: Decimal) -> Decimal | str:
    if type(value) not in (int, float, str):
        return "A number."
    try:
        number = Decimal(str(value)) if type(value) is float else Decimal(value)
    except InvalidOperation:
        return "A number."
    if not number.is_finite() or number < 0 or number > upper:
        return f"A number from 0 to {upper}."
    return round(number, places)


def _parse(raw: Any) -> tuple | dict:
    """One event as a tuple, or its field errors."""
    if type(raw) is not dict:
        return {"non_field_errors": ["An event is a JSON object."]}
    errors: dict[str, list[str]] = {}
    if not FIELDS.issuperset(raw):
        for name in sorted(set(raw) - FIELDS):
            errors[str(name)] = ["Unknown field."]
    for name in REQUIRED:
        if name not in raw:
            errors[name] = ["This field is required."]
    if errors:
        return errors
    event_id = raw["event_id"]
    if type(event_id) is not str or not 0 < len(event_id) <= 100:
        errors["event_id"] = ["A string of 1 to 100 characters."]
    ids = []
    for name in ("contract", "data_centre", "device_model"):
        value = raw[name]
        if type(value) is not int or value <= 0:
            errors[name] = ["An id (a positive integer)."]
        ids.append(value)
    count = raw["device_count"]
    if type(count) is not int or not 0 < count <= 1_000_000:
        errors["device_count"] = ["A whole number from 1 to 1000000."]
    start, end = _when(raw["start"]), _when(raw["end"])
    if type(start) is str:
        errors["start"] = [start]
    if type(end) is str:
        errors["end"] = [end]
    elif type(start) is not str and end <= start:
        errors["end"] = ["Must be after start."]
    energy = raw.get("energy_kwh")
    if energy is not None:
        energy = _decimal(energy, 3, Decimal("99999999999"))
        if type(energy) is str:
            errors["energy_kwh"] = [energy]
    util = raw.get("utilisation_pct")
    if util is not None:
        util = _decimal(util, 2, Decimal(100))
        if type(util) is str:
            errors["utilisation_pct"] = [util]
    if errors:
        return errors
    return (event_id, ids[0], ids[1], ids[2], start, end, count, energy, util)


def _contracts_load(ids: set[int], supplier_ids: Collection[int]) -> dict[int, _ContractInfo]:
    rows = Contract.objects.filter(pk__in=ids, seller_id__in=list(supplier_ids)).values_list(
        "pk", "seller_id", "buyer_id", "quantity", "value_fen", "trade__seller_fee_fen", "instrument__delivery_start",
        "instrument__delivery_end", "instrument__lot_size", "instrument__product_id", "listing__data_centre_id",
        "listing__device_count",
    )
    return {
        r[0]: _ContractInfo(r[0], r[1], r[2], int(r[3] * r[8] * MICRO), r[4], r[5], r[6], r[7], r[9], r[10], r[11])
        for r in rows
    }


class _Race(Exception):
    """A concurrent batch stored one of our event ids first: retry the transaction."""


def usage_batch_ingest(*, supplier_ids: Collection[int], events: Sequence[Any], now: dt.datetime | None = None) -> IngestResult:
    """Ingest up to MAX_BATCH usage events for contracts sold by `supplier_ids`.

    Invariant: per contract, delivered = sum of credited units <= quantity, and released escrow =
    released_for(delivered), in the same transaction as the events. Locks the contracts' delivery rows
    in id order."""
    if len(events) > MAX_BATCH:
        raise BatchTooLarge(f"At most {MAX_BATCH} events per batch.")
    now = now or timezone.now()
    results: list[dict | None] = [None] * len(events)
    parsed: list[tuple[int, tuple]] = []
    for i, raw in enumerate(events):
        ev = _parse(raw)
        if type(ev) is dict:
            eid = raw.get("event_id") if type(raw) is dict else None
            results[i] = _rejected(eid, "invalid", ev)
        else:
            parsed.append((i, ev))

    contracts = _contracts_load({ev[1] for _, ev in parsed}, supplier_ids) if parsed else {}
    products = Product.objects.in_bulk({c.product_id for c in contracts.values()})
    models = DeviceModel.objects.in_bulk({ev[3] for _, ev in parsed})
    installed = set(
        DeviceInventory.objects.filter(data_centre_id__in={c.data_centre_id for c in contracts.values()}).values_list("data_centre_id", "device_model_id")
    )
    eligible: dict[tuple[int, int], tuple[int, int] | None] = {}  # (product, model) -> (rating x 100, watts)

    def rating(product_id: int, model_id: int) -> tuple[int, int] | None:
        key = (product_id, model_id)
        if key not in eligible:
            model, product = models.get(model_id), products[product_id]
            if model is None or product.device_failures(model):
                eligible[key] = None
            else:
                eligible[key] = (int(getattr(model, UNIT_RATING_FIELD[product.unit]) * 100), model.power_w)
        return eligible[key]

    grace, horizon = grace_period(), now + clock_skew()
    candidates: list[tuple] = []  # (index, event_id, contract, dc, model, start, end, count, device_us, units, energy, estimated, util)
    seen: dict[tuple[int, str], int] = {}  # first index of each id in the batch
    repeats: list[tuple[int, int]] = []  # (index, index of its first occurrence)
    late: list[tuple[int, tuple[int, str]]] = []  # too late to count, but maybe a resend of a stored event
    for i, (eid, cid, dc, model, start, end, count, energy, util) in parsed:
        c = contracts.get(cid)
        if c is None:
            results[i] = _rejected(eid, "unknown_contract")
            continue
        if now > c.end + grace:
            results[i] = _rejected(eid, "late")
            late.append((i, (c.seller_id, eid)))
            continue
        if start < c.start or end > c.end:
            results[i] = _rejected(eid, "outside_window")
            continue
        if end > horizon:
            results[i] = _rejected(eid, "in_future")
            continue
        if dc != c.data_centre_id:
            results[i] = _rejected(eid, "wrong_data_centre")
            continue
        rated = rating(c.product_id, model) if (dc, model) in installed else None
        if rated is None:
            results[i] = _rejected(eid, "device_model_not_eligible")
            continue
        if count > c.device_count:
            results[i] = _rejected(eid, "too_many_devices")
            continue
        first = seen.get((c.seller_id, eid))
        if first is not None:
            results[i] = {"event_id": eid, "status": "duplicate"}
            repeats.append((i, first))
            continue
        seen[(c.seller_id, eid)] = i
        device_us = count * ((end - start) // _US)
        estimated = energy is None
        if estimated:
            energy = Decimal(rated[1] * device_us // _WH_DIVISOR).scaleb(-3)
        candidates.append((i, eid, cid, dc, model, start, end, count, device_us, device_us * rated[0] // _RATING_DIVISOR, energy, estimated, util))

    outcome = IngestResult(results=results)  # type: ignore[arg-type]
    if candidates:
        for attempt in range(3):
            try:
                with transaction.atomic():
                    _store(candidates, contracts, now, outcome)
                break
            except _Race:
                if attempt == 2:
                    raise
    if late:
        # An agent resending after the grace period gets "duplicate" for what was stored, as before it.
        stored = _existing_ids([pair for _, pair in late])
        for i, pair in late:
            if pair in stored:
                results[i] = {"event_id": pair[1], "status": "duplicate"}
    for i, first in repeats:
        if results[first]["status"] == "rejected":  # type: ignore[index]
            # A repeat of an event refused for the contract's state (settled, full) is refused alike.
            results[i] = {**results[first], "event_id": results[i]["event_id"]}  # type: ignore[index]
    for r in results:
        status = r["status"]  # type: ignore[index]
        if status == "accepted":
            outcome.accepted += 1
        elif status == "duplicate":
            outcome.duplicates += 1
        else:
            outcome.rejected += 1
    return outcome


def _store(candidates: list[tuple], contracts: dict[int, _ContractInfo], now: dt.datetime, outcome: IngestResult) -> None:
    results = outcome.results
    deliveries = _deliveries_lock({c[2] for c in candidates}, contracts)
    existing = _existing_ids([(contracts[c[2]].seller_id, c[1]) for c in candidates])
    rows: list[tuple] = []
    touched: dict[int, ContractDelivery] = {}
    for cand in candidates:
        i, eid, cid = cand[0], cand[1], cand[2]
        c = contracts[cid]
        d = deliveries[cid]
        if (c.seller_id, eid) in existing:
            results[i] = {"event_id": eid, "status": "duplicate"}
            continue
        if d.status == DeliveryStatus.SETTLED:
            results[i] = _rejected(eid, "contract_settled")
            continue
        remaining = d.quantity_micro - d.delivered_micro
        if remaining <= 0:
            results[i] = _rejected(eid, "over_quantity")
            continue
        units = cand[9]
        credited = units if units <= remaining else remaining
        d.delivered_micro += credited
        d.events += 1
        touched[cid] = d
        rows.append((c.seller_id, *cand[1:10], credited, *cand[10:]))
        answer = {"event_id": eid, "status": "accepted", "units": _units(units)}
        if credited != units:
            answer["credited"] = _units(credited)
        results[i] = answer
    if not rows:
        return
    if _insert(rows, now) != len(rows):
        raise _Race()
    _deliveries_update(touched, contracts, now)
    outcome.credited_micro = sum(r[10] for r in rows)
    outcome.contracts = {
        cid: {"delivered": _units(d.delivered_micro), "quantity": _units(d.quantity_micro), "released_fen": d.released_fen, "status": d.status}
        for cid, d in touched.items()
    }


def _units(micro: int) -> str:
    return f"{micro // MICRO}.{micro % MICRO:06d}"


def deliveries_ensure(contracts: dict[int, _ContractInfo] | Sequence[Contract]) -> None:
    """Create missing delivery rows (contracts are bulk-created by the matcher, so no signal fires)."""
    if isinstance(contracts, dict):
        values = [(c.pk, c.quantity_micro, c.value_fen, c.seller_fee_fen) for c in contracts.values()]
    else:
        values = [(c.pk, int(c.quantity * c.instrument.lot_size * MICRO), c.value_fen, c.trade.seller_fee_fen) for c in contracts]
    ContractDelivery.objects.bulk_create(
        [ContractDelivery(contract_id=pk, quantity_micro=q, value_fen=v, seller_fee_fen=f) for pk, q, v, f in values],
        ignore_conflicts=True,
    )


def _deliveries_lock(ids: set[int], contracts: dict[int, _ContractInfo]) -> dict[int, ContractDelivery]:
    found = {d.pk: d for d in ContractDelivery.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
    missing = ids - set(found)
    if missing:
        deliveries_ensure({pk: contracts[pk] for pk in missing})
        found = {d.pk: d for d in ContractDelivery.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
    return found


def _existing_ids(pairs: list[tuple[int, str]]) -> set[tuple[int, str]]:
    """Which (supplier, event id) pairs are already stored."""
    if connection.vendor == "postgresql":
        # One index probe per id, whatever the table's statistics: with `event_id = ANY(...)` and stale
        # statistics the planner scanned all of the supplier's events and filtered them (0.3 s at 1M rows).
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cur:  # binary parameters: see _insert
            cur.execute(
                "SELECT u.supplier_id, u.event_id FROM unnest(%b::bigint[], %b::text[]) AS v(s, e) "
                "CROSS JOIN LATERAL (SELECT supplier_id, event_id FROM metering_usageevent "
                "WHERE supplier_id = v.s AND event_id = v.e) AS u",
                [[p[0] for p in pairs], [p[1] for p in pairs]],
            )
            return set(cur.fetchall())
    out: set[tuple[int, str]] = set()
    suppliers = {p[0] for p in pairs}
    event_ids = [p[1] for p in pairs]
    for k in range(0, len(event_ids), 500):
        out.update(
            UsageEvent.objects.filter(supplier_id__in=suppliers, event_id__in=event_ids[k:k + 500]).values_list("supplier_id", "event_id")
        )
    return out


_COLUMNS = (
    "supplier_id, event_id, contract_id, data_centre_id, device_model_id, started_at, ended_at, device_count, "
    "device_seconds, units_micro, credited_micro, energy_kwh, energy_estimated, utilisation_pct"
)
_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _insert(rows: list[tuple], now: dt.datetime) -> int:
    """Insert (supplier, event id, contract, dc, model, start, end, count, device_us, units, credited, energy,
    estimated, util) rows; returns how many were new."""
    if connection.vendor == "postgresql":
        # COPY straight into the table: its text format costs a string join per row, where binding arrays
        # cost psycopg a Python call per element (bench/RESULTS.md). The ids were checked under the
        # contracts' locks; a concurrent batch storing one of them under another contract makes COPY fail
        # on the unique key, and the caller retries the transaction (the lookup then finds it).
        received = now.isoformat()
        lines = []
        for s, e, c, d, m, st, en, n, us, u, cr, kwh, est, ut in rows:
            lines.append(
                f"{s}\t{e.translate(_COPY_ESCAPES)}\t{c}\t{d}\t{m}\t{st.isoformat()}\t{en.isoformat()}\t{n}\t"
                f"{us // 1_000_000}\t{u}\t{cr}\t{kwh}\t{'t' if est else 'f'}\t{_NULL if ut is None else ut}\t{received}\n"
            )
        connection.ensure_connection()
        try:
            with psycopg.Cursor(connection.connection) as cur, cur.copy(f"COPY metering_usageevent ({_COLUMNS}, received_at) FROM STDIN") as copy:
                copy.write("".join(lines))
        except psycopg.errors.UniqueViolation:
            raise _Race() from None
        return len(rows)
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                supplier_id=s, event_id=e, contract_id=c, data_centre_id=d, device_model_id=m, started_at=st, ended_at=en,
                device_count=n, device_seconds=us // 1_000_000, units_micro=u, credited_micro=cr, energy_kwh=kwh,
                energy_estimated=est, utilisation_pct=ut, received_at=now,
            )
            for s, e, c, d, m, st, en, n, us, u, cr, kwh, est, ut in rows
        ]
    )
    return len(rows)


def _deliveries_update(touched: dict[int, ContractDelivery], contracts: dict[int, _ContractInfo], now: dt.datetime) -> None:
    """Write the new delivered quantities and release escrow for them: one entry per contract."""
    requests = []
    moves: list[funding.EscrowMove] = []
    parties = parties_for({(contracts[cid].buyer_id, contracts[cid].seller_id) for cid in touched})
    started = []
    for cid, d in touched.items():
        if d.status == DeliveryStatus.OPEN:
            d.status = DeliveryStatus.DELIVERING
            started.append(d)
        d.updated_at = now
        if d.status == DeliveryStatus.DISPUTED:
            continue  # metering continues; money waits for the operator's resolution
        c = contracts[cid]
        released = released_for(value_fen=d.value_fen, quantity_micro=d.quantity_micro, delivered_micro=d.delivered_micro)
        fee = fee_for(seller_fee_fen=d.seller_fee_fen, value_fen=d.value_fen, released_fen=released)
        p = parties[(c.buyer_id, c.seller_id)]
        request = movement_request(
            contract_id=cid, parties=p, released_from=d.released_fen, released_to=released,
            fee_from=d.fee_fen, fee_to=fee, key=f"delivery:{cid}:release:{d.events}:{released}",
            memo=f"delivery of contract {cid}: {_units(d.delivered_micro)} of {_units(d.quantity_micro)} units",
        )
        if request is not None:
            requests.append(request)
            moves.append(funding.EscrowMove(cid, d.value_fen, d.released_fen, released, 0, p.buyer_escrow, p.buyer_available, request.idempotency_key))
        d.released_fen, d.fee_fen = released, fee
    bulk_update_rows(ContractDelivery, list(touched.values()), ["status", "delivered_micro", "events", "released_fen", "fee_fen", "updated_at"])
    contracts_status_sync(started)
    requests.extend(funding.requests_for(moves))
    if requests:
        ledger.entries_post(requests, returning=False)


def contracts_status_sync(deliveries: Sequence[ContractDelivery]) -> None:
    """Mirror the delivery state onto exchange's Contract.status (open, delivering, settled, disputed), which
    the contract tapes show: metering is the only writer of both after the trade."""
    if deliveries:
        bulk_update_rows(Contract, [Contract(pk=d.contract_id, status=d.status) for d in deliveries], ["status"])

