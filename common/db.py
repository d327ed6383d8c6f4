"""Database helpers for hot paths."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Sequence
from decimal import Decimal

import psycopg
from django.conf import settings
from django.db import connection, models
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute

# Field types whose Python values psycopg adapts as they are: no per-value get_db_prep_save (most of the
# CPU of building a batch's arrays otherwise).
_PLAIN = {
    "AutoField", "BigAutoField", "IntegerField", "BigIntegerField", "PositiveIntegerField", "PositiveBigIntegerField",
    "SmallIntegerField", "PositiveSmallIntegerField", "CharField", "TextField", "BooleanField", "DateTimeField",
    "ForeignKey", "OneToOneField",
}


def _column(field: models.Field, objs: Sequence[models.Model]) -> str | list:
    name, kind = field.attname, field.get_internal_type()
    if kind in _PLAIN:
        values = [getattr(o, name) for o in objs]
        literal = pg_array(values)
        if kind == "DateTimeField" and isinstance(literal, list):  # naive times: let Django warn and convert
            return [field.get_db_prep_save(v, connection) for v in values]
        return literal
    return pg_array([field.get_db_prep_save(getattr(o, name), connection) for o in objs])


_INTS = {int, type(None)}
_BOOLS = {bool, type(None)}
_BOOL_TEXT = {True: "t", False: "f", None: "NULL"}
_DATETIMES = {dt.datetime, type(None)}


def pg_array(values: Sequence) -> str | list:
    """The values as a PostgreSQL array literal ('{1,NULL,"a \\"b\\""}'), for a parameter cast to an array type
    in the SQL (`%s::bigint[]`). psycopg adapts a list element by element in Python, quoting each on the way:
    a quarter of the matcher's CPU went there (bench/RESULTS.md). Integers, booleans, strings, decimals,
    dates and aware datetimes; given anything else, the list itself for psycopg to adapt."""
    kinds = set(map(type, values))
    if kinds <= _INTS:  # ids, counts, prices in fen (with NULLs): the common case, joined in C
        return "{" + ",".join(["NULL" if v is None else str(v) for v in values] if type(None) in kinds else map(str, values)) + "}"
    if all(issubclass(k, str) for k in kinds):  # text, choices' members
        return "{" + ",".join(['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"
    if kinds <= _BOOLS:
        return "{" + ",".join([_BOOL_TEXT[v] for v in values]) + "}"
    if kinds <= _DATETIMES:  # a batch's rows share a few times (its clock reading): each written once
        text = {v: '"' + v.isoformat() + '"' for v in set(values) if v is not None}
        if all(v.tzinfo is not None for v in text):
            text[None] = "NULL"
            return "{" + ",".join([text[v] for v in values]) + "}"
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif v is True or v is False:
            parts.append("t" if v else "f")
        elif isinstance(v, int):
            parts.append(str(int(v)))
        elif isinstance(v, str):
            parts.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(v, dt.datetime):
            if v.tzinfo is None:
                return list(values)
            parts.append('"' + v.isoformat() + '"')
        elif isinstance(v, dt.date):
            parts.append('"' + v.isoformat() + '"')
        elif isinstance(v, Decimal) and v.is_finite():
            parts.append(str(v))
        else:
            return list(values)
    return "{" + ",".join(parts) + "}"


def in_lists(sql: str, *lists: Sequence, first: Sequence | None = None, extra: Sequence | None = None) -> tuple[str, list]:
    """A hot-path query and its parameters: each `{}` in `sql` becomes one placeholder per element of the
    matching list (`IN ({})`), `first` the values of placeholders before them and `extra` of those after.
    Raw SQL, because building such a query through the ORM cost more CPU than the database spent answering
    it; for `fetch_together` or `fetch_rows`."""
    params: list = [*(first or [])]
    slots = []
    for values in lists:
        slots.append(", ".join(["%s"] * len(values)))
        params.extend(values)
    return sql.format(*slots), [*params, *(extra or [])]


@contextlib.contextmanager
def prepared_statements():
    """On PostgreSQL, statements run inside the block are bound on the server and, from their fifth run on
    this connection, prepared: PostgreSQL parses and plans each once per connection instead of on every
    run (psycopg's automatic preparation, at most 100 per connection, least recently used dropped). For a
    hot path whose few statements repeat, such as the matcher's batch: Django's default (the parameters
    written into the SQL text by psycopg, no preparation) had PostgreSQL parse and plan ~15 statements for
    every batch, nearly half of a one-order batch's CPU there (bench/RESULTS.md). Not for the whole site:
    server-side binding is an opt-in of Django's backend, and the site's other queries were not tested with
    it. settings.DATABASE_PREPARED_STATEMENTS = False (env DATABASE_PREPARED_STATEMENTS=0) turns it off, for
    a pooler that cannot keep prepared statements."""
    if connection.vendor != "postgresql" or not settings.DATABASE_PREPARED_STATEMENTS:
        yield
        return
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    raw = connection.connection
    factory, threshold = raw.cursor_factory, raw.prepare_threshold
    raw.cursor_factory, raw.prepare_threshold = ServerBindingCursor, PREPARE_THRESHOLD
    try:
        yield
    finally:  # the connection goes back to the pool as Django made it
        raw.cursor_factory, raw.prepare_threshold = factory, threshold


PREPARE_THRESHOLD = 5  # psycopg's own default: a statement is prepared on its fifth run on a connection


def fetch_rows(sql: str, params: Sequence) -> list[tuple]:
    """The rows of one query."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def bulk_update_rows(model: type[models.Model], objs: Sequence[models.Model], fields: Sequence[str]) -> None:
    """`bulk_update` without Django's per-row CASE expressions: on PostgreSQL one
    `UPDATE ... FROM unnest(arrays)` statement (the ORM spends most of a batch's CPU building CASEs, see
    bench/RESULTS.md); elsewhere the ORM's bulk_update."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(objs, fields)
        return
    meta = model._meta
    pk = meta.pk
    columns = [meta.get_field(name) for name in fields]
    arrays = [[o.pk for o in objs]]
    for field in columns:
        arrays.append(_column(field, objs))
    names = ["pk", *(f"c{i}" for i in range(len(columns)))]
    casts = ", ".join(f"%s::{f.db_type(connection)}[]" for f in (pk, *columns))
    sets = ", ".join(f'"{f.column}" = v.c{i}' for i, f in enumerate(columns))
    sql = (
        f'UPDATE "{meta.db_table}" AS t SET {sets} FROM unnest({casts}) AS v({", ".join(names)}) '  # nosec B608 # names from _meta only, values are parameters
        f'WHERE t."{pk.column}" = v.pk'
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, arrays)


def bulk_insert_rows(model: type[models.Model], objs: Sequence[models.Model], *, ids: bool = True) -> None:
    """`bulk_create` for hot paths: on PostgreSQL one `INSERT ... SELECT FROM unnest(arrays) RETURNING id`
    (Django builds a placeholder per row and field, most of a batch's CPU); elsewhere the ORM's bulk_create.
    Sets each object's primary key (on PostgreSQL not with `ids=False`: the ids are not read back, so in
    pipeline mode the statement waits for no answer). Objects that already carry their primary keys (from
    `ids_sql`) are inserted with them, and nothing is read back either. auto_now/auto_now_add fields get the
    time of the call when empty."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create(objs)
        return
    given = objs[0].pk is not None
    if any((o.pk is not None) != given for o in objs):
        raise ValueError(f"bulk_insert_rows: some {model.__name__} rows carry a primary key and some do not")
    for o in objs:  # foreign keys given as objects (saved since they were set): copy their ids
        if o._state.fields_cache:  # none given (the matcher's rows carry ids): nothing to copy
            o._prepare_related_fields_for_save(operation_name="bulk_insert_rows")
    fields, insert, returning = _insert_sql(model, given)
    now = None
    arrays = []
    for field in fields:
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            from django.utils import timezone

            now = now or timezone.now()
            for o in objs:
                if getattr(o, field.attname) is None or field.auto_now:
                    setattr(o, field.attname, now)
        arrays.append(_column(field, objs))
    with connection.cursor() as cursor:
        if ids and not given:
            cursor.execute(returning, arrays)
            for o, (pk,) in zip(objs, cursor.fetchall(), strict=True):
                o.pk = pk
        else:
            cursor.execute(insert, arrays)
    for o in objs:
        o._state.adding = False
        o._state.db = "default"


def new(model: type[models.Model], **values) -> models.Model:
    """`model(**values)` for hot paths: a new, unsaved instance with the given attributes (by attname:
    `order_id`, not `order`) and every other field at its default, as `Model.__init__` leaves it, in a
    tenth of the time (3 us against 36 for an order: `__init__` walks every field and pops each keyword).
    Models with pre_init/post_init receivers go through `__init__`, as does a keyword that is not an
    attname (which `__init__` then refuses)."""
    blank, computed = _blank(model)
    if blank is None or not values.keys() <= blank.keys() or _init_receivers(model):
        return model(**values)
    obj = model.__new__(model)
    state = obj.__dict__
    state.update(blank)
    for name, default in computed:
        if name not in values:
            state[name] = default()
    state.update(values)
    state["_state"] = ModelState()
    return obj


def _init_receivers(model: type[models.Model]) -> bool:
    """Whether an init signal has receivers for the model, asking the signals only when any receiver is
    connected at all (none is, in this project: `has_listeners` is a few us per call on a hot path)."""
    return bool((signals.pre_init.receivers and signals.pre_init.has_listeners(model))
                or (signals.post_init.receivers and signals.post_init.has_listeners(model)))


@functools.cache
def _blank(model: type[models.Model]) -> tuple[dict | None, list]:
    """A new instance's attributes with constant defaults, and the fields whose default is computed per
    instance; None if a field's attribute does more on assignment than a plain or foreign-key field's."""
    blank, computed = {}, []
    for field in model._meta.concrete_fields:
        if field.generated:
            continue
        attribute = next((k.__dict__[field.attname] for k in model.__mro__ if field.attname in k.__dict__), None)
        if type(attribute) not in (DeferredAttribute, ForeignKeyDeferredAttribute):
            return None, []
        if field.has_default() and callable(field.default):
            computed.append((field.attname, field.default))
            blank[field.attname] = None
        else:
            blank[field.attname] = field.get_default()
    return blank, computed


def ids_sql(model: type[models.Model], n: int) -> tuple[str, list]:
    """The query for n primary keys of rows not yet inserted, from the table's own sequence (PostgreSQL),
    to be read with other reads (`fetch_together`). The matcher names a batch's new holds and orders before
    it inserts them (the orders once, in their state after matching), and inserts them without RETURNING,
    so neither insert waits for an answer. Ids taken and not used are gaps, as after a rollback."""
    meta = model._meta
    return "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)", [meta.db_table, meta.pk.column, n]


@functools.cache
def _insert_sql(model: type[models.Model], with_pk: bool = False) -> tuple[list[models.Field], str, str]:
    """The model's fields and its INSERT from arrays, without and with RETURNING the primary key; `with_pk`:
    the primary key is one of the columns given."""
    meta = model._meta
    fields = [f for f in meta.concrete_fields if with_pk or not f.primary_key]
    columns = ", ".join(f'"{f.column}"' for f in fields)
    casts = ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields)
    # RETURNING gives the rows in the order the SELECT produced them, i.e. the arrays' order (what Django's
    # own multi-row bulk_create relies on too).
    insert = f'INSERT INTO "{meta.db_table}" ({columns}) SELECT * FROM unnest({casts})'  # nosec B608 # names from _meta only, values are parameters
    return fields, insert, f'{insert} RETURNING "{meta.pk.column}"'


def fetch_together(statements: Sequence[tuple[str, Sequence] | None]) -> list[list[tuple]]:
    """Run independent reads and return each one's rows (`[]` for a None statement). On PostgreSQL they go
    in one round trip (psycopg's pipeline mode: every query is sent before the first result is read);
    elsewhere one after the other. A round trip costs a hot path ~100-150 us of CPU here and more in wall time
    (bench/matcher_bench.py), so reads that do not depend on each other should not each pay one."""
    if connection.vendor != "postgresql":
        out = []
        for statement in statements:
            if statement is None:
                out.append([])
                continue
            with connection.cursor() as cursor:
                cursor.execute(*statement)
                out.append(cursor.fetchall())
        return out
    connection.ensure_connection()
    raw = connection.connection
    # Inside a pipeline already (the matcher's batch): use it. A nested pipeline would end with a Sync of its
    # own, one more round trip.
    with raw.pipeline() if raw.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF else contextlib.nullcontext():
        cursors = []
        try:
            for statement in statements:
                if statement is None:
                    cursors.append(None)
                    continue
                cursor = connection.cursor()
                cursors.append(cursor)
                cursor.execute(*statement)
            return [cursor.fetchall() if cursor is not None else [] for cursor in cursors]
        finally:
            for cursor in cursors:
                if cursor is not None:
                    cursor.close()
