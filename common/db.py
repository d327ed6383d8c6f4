"""Database helpers for hot paths."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, models


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
    arrays = [[pk.get_db_prep_value(o.pk, connection) for o in objs]]
    for field in columns:
        arrays.append([field.get_db_prep_save(getattr(o, field.attname), connection) for o in objs])
    names = ["pk", *(f"c{i}" for i in range(len(columns)))]
    casts = ", ".join(f"%s::{f.db_type(connection)}[]" for f in (pk, *columns))
    sets = ", ".join(f'"{f.column}" = v.c{i}' for i, f in enumerate(columns))
    sql = (
        f'UPDATE "{meta.db_table}" AS t SET {sets} FROM unnest({casts}) AS v({", ".join(names)}) '
        f'WHERE t."{pk.column}" = v.pk'
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, arrays)
