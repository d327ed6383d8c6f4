"""Foreign keys of the matcher's tables, checked once per statement instead of once per row.

PostgreSQL checks a foreign key with one internal query per inserted row (`SELECT 1 FROM parent WHERE id = $1
FOR KEY SHARE`), and Django's constraints are deferred, so a matcher batch ran all of them in its COMMIT: ~30
per order (postings, order events, trades, contracts and the order itself), 40-50% of PostgreSQL's CPU per
order (bench/RESULTS.md, fourteenth session). These keys are declared `db_constraint=False` and checked here
instead, with the same guarantees:

- **insert** into a child table (PostgreSQL): one statement-level trigger per table that, for each key
  column, locks the distinct parents the statement's rows name (`FOR KEY SHARE`, as the built-in check does,
  so no concurrent transaction can delete them before this one commits) and refuses the statement if any is
  missing. One query per statement for all the table's keys: a batch of 128 orders locks its ~100
  organisations once each, not once per row;
- **update** of a key column of a child row: a row trigger, fired only when the value changes;
- **delete** (or change of id) of a parent row: a deferred constraint trigger that refuses it at commit if a
  child row still names it (Django's constraints are deferred too: an ORM cascade may delete children after
  the parent within the transaction).

A violation raises SQLSTATE 23503 (foreign_key_violation), which Django turns into `IntegrityError`, as for a
built-in constraint. On SQLite (the embedded default) inserts and updates are checked by row triggers; see
`sqlite_sql` for deletes.

The triggers are (re)installed after every `migrate` (common.apps), so a later migration that rebuilds a
table cannot leave it unchecked. On SQLite they are also dropped before it: SQLite rebuilds a table for most
changes, and refuses to rename the rebuilt table while a trigger names it. `CHECKED` is the one list; a test
asserts that each field in it has `db_constraint=False` and that no other foreign key lost its constraint
unnoticed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models

# model label -> its foreign keys checked by these triggers (their db_constraint is False).
CHECKED: dict[str, tuple[str, ...]] = {
    "exchange.Order": ("instrument", "organisation", "user", "hold", "listing"),
    "exchange.OrderEvent": ("order", "trade", "actor"),
    "exchange.Trade": ("instrument", "maker_order", "taker_order", "buyer", "seller"),
    "exchange.Contract": ("trade", "instrument", "buyer", "seller", "listing"),
    "exchange.CapacityHold": ("listing", "order", "instrument"),
    "ledger.Posting": ("entry", "account"),
    "ledger.Hold": ("organisation",),
}

# Foreign keys without a database constraint and without these triggers, on purpose: usage events name
# their supplier, data centre and device model for reports only, and are ingested in bulk (metering.models).
UNCHECKED: set[str] = {
    "metering.UsageEvent.supplier", "metering.UsageEvent.data_centre", "metering.UsageEvent.device_model",
    "metering.UsageEvent.contract",
}


@dataclass(frozen=True)
class Key:
    table: str      # the child table
    column: str     # its key column
    parent: str     # the parent table
    target: str     # the parent's column (its primary key)

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


def keys(registry=None) -> list[Key]:
    """The checked keys, from the models of `registry` (a migration's historical apps; default the current
    ones): a key its models do not have yet is left out."""
    registry = registry or apps
    out = []
    for label, names in CHECKED.items():
        try:
            model = registry.get_model(label)
        except LookupError:
            continue
        fields = {f.name: f for f in model._meta.get_fields() if isinstance(f, models.ForeignKey) and f.concrete}
        for name in names:
            if name in fields:
                field = fields[name]
                out.append(Key(model._meta.db_table, field.column, field.related_model._meta.db_table, field.target_field.column))
    return out


def _by(items: list[Key], attr: str) -> dict[str, list[Key]]:
    grouped: dict[str, list[Key]] = defaultdict(list)
    for key in items:
        grouped[getattr(key, attr)].append(key)
    return dict(sorted(grouped.items()))


def _violation(message: str, *args: str) -> str:
    return f"RAISE EXCEPTION {_literal(message)}, {', '.join(args)} USING ERRCODE = 'foreign_key_violation';"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _still_named(k: Key, parent: str, target: str) -> str:
    query = f'SELECT 1 FROM "{k.table}" c WHERE c."{k.column}" = OLD."{target}"'  # nosec B608 # names from _meta only
    fail = _violation(f'% on table "{parent}" violates foreign key "{k.column}" of "{k.table}": {parent} % is still referenced', "lower(TG_OP)", f'OLD."{target}"')
    return f"""
    IF EXISTS ({query}) THEN
        {fail}
    END IF;"""


def postgresql_sql(items: list[Key]) -> list[str]:
    """Statements that (re)create every trigger and its function; idempotent."""
    statements = []
    for table, ks in _by(items, "table").items():
        # One query for all the table's keys (a trigger's queries cost more than the rows of a small batch):
        # per key, the distinct values named that no parent row answers, locking those that do.
        missing = ",\n           ".join(
            f'(SELECT count(*) FROM (SELECT DISTINCT "{k.column}" AS v FROM new_rows WHERE "{k.column}" IS NOT NULL) n '  # nosec B608 # names from _meta only
            f'WHERE NOT EXISTS (SELECT 1 FROM "{k.parent}" p WHERE p."{k.target}" = n.v FOR KEY SHARE))' for k in ks)
        raises = "\n".join(f"""
    IF missing[{i}] > 0 THEN
        {_violation(f'insert on table "{table}" violates foreign key "{k.column}": % {k.parent} rows named are not present', f"missing[{i}]")}
    END IF;""" for i, k in enumerate(ks, 1))
        statements.append(f"""CREATE OR REPLACE FUNCTION refcheck_{table}_ins() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE missing bigint[];
BEGIN
    SELECT ARRAY[{missing}] INTO missing;{raises}
    RETURN NULL;
END $f$""")
        statements.append(f'DROP TRIGGER IF EXISTS refcheck_ins ON "{table}"')
        statements.append(f'CREATE TRIGGER refcheck_ins AFTER INSERT ON "{table}" REFERENCING NEW TABLE AS new_rows '
                          f"FOR EACH STATEMENT EXECUTE FUNCTION refcheck_{table}_ins()")
        updates = "\n".join(f"""
    IF NEW."{k.column}" IS DISTINCT FROM OLD."{k.column}" AND NEW."{k.column}" IS NOT NULL THEN
        PERFORM 1 FROM "{k.parent}" p WHERE p."{k.target}" = NEW."{k.column}" FOR KEY SHARE OF p;
        IF NOT FOUND THEN
            {_violation(f'update on table "{table}" violates foreign key "{k.column}": {k.parent} % is not present', f'NEW."{k.column}"')}
        END IF;
    END IF;""" for k in ks)
        statements.append(f"""CREATE OR REPLACE FUNCTION refcheck_{table}_upd() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN{updates}
    RETURN NULL;
END $f$""")
        statements.append(f'DROP TRIGGER IF EXISTS refcheck_upd ON "{table}"')
        changed = " OR ".join(f'OLD."{k.column}" IS DISTINCT FROM NEW."{k.column}"' for k in ks)
        statements.append(f'CREATE TRIGGER refcheck_upd AFTER UPDATE OF {", ".join(chr(34) + k.column + chr(34) for k in ks)} ON "{table}" '
                          f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION refcheck_{table}_upd()")
    for parent, ks in _by(items, "parent").items():
        target = ks[0].target
        checks = "\n".join(_still_named(k, parent, target) for k in ks)
        statements.append(f"""CREATE OR REPLACE FUNCTION refcheck_{parent}_del() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW."{target}" = OLD."{target}" THEN
        RETURN NULL;
    END IF;{checks}
    RETURN NULL;
END $f$""")
        statements.append(f'DROP TRIGGER IF EXISTS refcheck_del ON "{parent}"')
        statements.append(f'CREATE CONSTRAINT TRIGGER refcheck_del AFTER DELETE OR UPDATE OF "{target}" ON "{parent}" '
                          f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refcheck_{parent}_del()")
    return statements


def sqlite_sql(items: list[Key]) -> list[str]:
    """Insert and update checks only. SQLite has no deferred triggers, and Django empties a SQLite database
    (flush, between transactional tests) with one DELETE per table in no particular order, which a
    parent-side trigger would refuse; parents are kept by the models' on_delete=PROTECT there (this is the
    embedded default, not the production database)."""
    statements = []
    for k in items:
        base = f"refcheck_{k.table}_{k.column}"
        missing = f'NEW."{k.column}" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "{k.parent}" WHERE "{k.target}" = NEW."{k.column}")'  # nosec B608 # names from _meta only
        fail = f"SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: {k.name} names a missing {k.parent} row');"
        for event, when in (("INSERT", missing), (f'UPDATE OF "{k.column}"', missing)):
            name = f"{base}_{event.split()[0].lower()}"
            statements.append(f'DROP TRIGGER IF EXISTS "{name}"')
            statements.append(f'CREATE TRIGGER "{name}" BEFORE {event} ON "{k.table}" FOR EACH ROW WHEN {when} BEGIN {fail} END')
    return statements


def install(connection, registry=None) -> None:
    """Create the triggers on this database (PostgreSQL or SQLite), dropping first any this module made before
    (a key no longer listed loses its trigger)."""
    uninstall(connection)
    tables = set(connection.introspection.table_names())
    items = [k for k in keys(registry) if k.table in tables and k.parent in tables]  # a partial migrate: what exists
    if connection.vendor == "postgresql":
        statements = postgresql_sql(items)
    elif connection.vendor == "sqlite":
        statements = sqlite_sql(items)
    else:
        raise ImproperlyConfigured(f"Suanli runs on PostgreSQL (DATABASE_URL) or SQLite (the default), not {connection.vendor}: "
                                   "the foreign keys of its order and ledger tables are enforced by triggers written for those two")
    with connection.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def uninstall(connection) -> None:
    """Drop every trigger (and PostgreSQL function) this module made, whatever keys it made them for."""
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname IN ('refcheck_ins', 'refcheck_upd', 'refcheck_del')")
            for table, name in cur.fetchall():
                cur.execute(f'DROP TRIGGER IF EXISTS "{name}" ON {table}')
            cur.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE n.nspname = current_schema() AND p.proname LIKE 'refcheck\\_%%'")
            for (function,) in cur.fetchall():
                cur.execute(f"DROP FUNCTION IF EXISTS {function}")
        elif connection.vendor == "sqlite":
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'refcheck\\_%' ESCAPE '\\'")
            for (name,) in cur.fetchall():
                cur.execute(f'DROP TRIGGER IF EXISTS "{name}"')


def unconstrained_fields() -> list[str]:
    """Every foreign key of the project's models that has no database constraint ('app.Model.field')."""
    out = []
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, models.ForeignKey) and field.concrete and not field.db_constraint:
                out.append(f"{model._meta.label}.{field.name}")
    return sorted(out)
