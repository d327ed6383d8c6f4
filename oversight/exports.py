"""Streaming CSV. Rows come from a server-side cursor (`.iterator(chunk_size=...)` over values_list, no
model instances), are written by csv.writer into a buffer and sent in blocks, so memory stays flat
whatever the number of rows."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal

from django.db import connection
from django.db.models import CharField, F, Func, QuerySet
from django.http import StreamingHttpResponse

from marketplace.models import Instrument

CHUNK = 5000


class _InstrumentInfo(dict):
    """instrument id -> (code, product code, lot size, tick), loaded on first sight."""

    def __missing__(self, pk: int):
        row = Instrument.objects.filter(pk=pk).values_list("code", "product__code", "lot_size", "tick_size").first()
        self[pk] = row
        return row


def _price(info: _InstrumentInfo, cache: dict, instrument_id: int, fen: int | None) -> str:
    if fen is None:
        return ""
    key = (instrument_id, fen)
    text = cache.get(key)
    if text is None:
        _, _, lot, tick = info[instrument_id]
        text = cache[key] = str((Decimal(fen) / 100 / lot).quantize(tick))
    return text


def _iso(at: dt.datetime | str | None) -> str:
    """UTC, ISO 8601 with microseconds and Z. On PostgreSQL the database formats it (see _as_text)."""
    if at is None or isinstance(at, str):
        return at or ""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


TIMESTAMP_FIELDS = {"created_at", "updated_at", "received_at", "started_at", "ended_at"}


def _as_text(queryset: QuerySet, fields: tuple[str, ...]) -> tuple[QuerySet, tuple[str, ...]]:
    """On PostgreSQL, timestamps leave the database as text already in _iso's format: parsing them into
    datetimes and formatting them back was a third of the export's time (bench/RESULTS.md, oversight)."""
    if connection.vendor != "postgresql":
        return queryset, fields
    names = []
    for name in fields:
        if name in TIMESTAMP_FIELDS:
            alias = f"{name}_text"
            queryset = queryset.annotate(**{alias: Func(F(name), template=_TO_CHAR, output_field=CharField())})
            name = alias
        names.append(name)
    return queryset, tuple(names)


_TO_CHAR = """to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _trades() -> tuple[list[str], tuple[str, ...], Callable]:
    header = ["id", "created_at", "instrument", "instrument_code", "product_code", "seq", "buyer", "seller", "taker_side",
              "price_cny_per_unit", "price_fen_per_lot", "quantity", "value_fen", "buyer_fee_fen", "seller_fee_fen", "maker_order", "taker_order"]
    fields = ("id", "created_at", "instrument_id", "seq", "buyer_id", "seller_id", "taker_side", "price_fen_per_lot", "quantity",
              "value_fen", "buyer_fee_fen", "seller_fee_fen", "maker_order_id", "taker_order_id")
    info, cache = _InstrumentInfo(), {}

    def row(r):
        code, product, _, _ = info[r[2]]
        return (r[0], _iso(r[1]), r[2], code, product, r[3], r[4], r[5], r[6], _price(info, cache, r[2], r[7]), *r[7:])
    return header, fields, row


def _orders() -> tuple[list[str], tuple[str, ...], Callable]:
    header = ["id", "created_at", "updated_at", "instrument", "organisation", "user", "client_order_id", "side", "type", "time_in_force",
              "price_cny_per_unit", "price_fen_per_lot", "quantity", "filled_quantity", "open_quantity", "status", "reason", "fee_fen"]
    fields = ("id", "created_at", "updated_at", "instrument_id", "organisation_id", "user_id", "client_order_id", "side", "type",
              "time_in_force", "price_fen_per_lot", "quantity", "filled_quantity", "open_quantity", "status", "reason", "fee_fen")
    info, cache = _InstrumentInfo(), {}

    def row(r):
        return (r[0], _iso(r[1]), _iso(r[2]), *r[3:10], _price(info, cache, r[3], r[10]), *r[10:])
    return header, fields, row


def _order_events() -> tuple[list[str], tuple[str, ...], Callable]:
    header = ["id", "created_at", "order", "instrument", "organisation", "side", "client_order_id", "kind", "price_cny_per_unit",
              "price_fen_per_lot", "quantity", "reason", "trade", "actor"]
    fields = ("id", "created_at", "order_id", "order__instrument_id", "order__organisation_id", "order__side", "order__client_order_id",
              "kind", "price_fen_per_lot", "quantity", "reason", "trade_id", "actor_id")
    info, cache = _InstrumentInfo(), {}

    def row(r):
        return (r[0], _iso(r[1]), *r[2:8], _price(info, cache, r[3], r[8]), *r[8:])
    return header, fields, row


def _usage_events() -> tuple[list[str], tuple[str, ...], Callable]:
    header = ["id", "received_at", "supplier", "event_id", "contract", "data_centre", "device_model", "started_at", "ended_at",
              "device_count", "device_seconds", "units_micro", "credited_micro", "energy_kwh", "energy_estimated", "utilisation_pct"]
    fields = ("id", "received_at", "supplier_id", "event_id", "contract_id", "data_centre_id", "device_model_id", "started_at",
              "ended_at", "device_count", "device_seconds", "units_micro", "credited_micro", "energy_kwh", "energy_estimated", "utilisation_pct")

    def row(r):
        return (r[0], _iso(r[1]), *r[2:7], _iso(r[7]), _iso(r[8]), *r[9:])
    return header, fields, row


SPECS = {"trades": _trades, "orders": _orders, "order_events": _order_events, "usage_events": _usage_events}


def csv_rows(name: str, queryset: QuerySet, *, chunk_size: int = CHUNK) -> Iterator[str]:
    """The CSV text of a filtered list, in blocks of about `chunk_size` rows, oldest first."""
    header, fields, row = SPECS[name]()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    queryset, fields = _as_text(queryset.order_by("id"), fields)
    batch: list = []
    for r in queryset.values_list(*fields).iterator(chunk_size=chunk_size):
        batch.append(row(r))
        if len(batch) == chunk_size:
            writer.writerows(batch)
            batch.clear()
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    writer.writerows(batch)
    yield buffer.getvalue()


def _response(blocks: Iterable[str], filename: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(blocks, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def csv_response(name: str, queryset: QuerySet) -> StreamingHttpResponse:
    return _response(csv_rows(name, queryset), f"{name}.csv")


def metrics_csv(report: dict) -> StreamingHttpResponse:
    def blocks():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["level", "key", "label", "metric", "value", "target", "meets_target"])
        for group in report["groups"]:
            for name, value in group["metrics"].items():
                target = report["targets"].get(name) if report["level"] == "platform" else None
                meets = group.get("meets_targets", {}).get(name, "")
                writer.writerow([report["level"], group["key"], group["label"], name, value, target["text"] if target else "", meets])
        yield buffer.getvalue()
    return _response(blocks(), f"metrics-{report['level']}.csv")
