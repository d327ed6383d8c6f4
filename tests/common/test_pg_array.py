"""common.db.pg_array: hot-path array parameters written as PostgreSQL array literals must read back exactly
as the values went in (strings with quotes, backslashes, braces, commas and NULL-like text included)."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection

from common.db import pg_array
from exchange.models import OrderStatus

NOW = dt.datetime(2026, 12, 1, 3, 40, 1, 123456, tzinfo=dt.UTC)

TRICKY = ['plain', '', ' lead and trail ', 'a,b', '{braces}', 'quote " inside', 'back\\slash', '\\"both', 'NULL',
          'null', "it's", '算力 voucher 券', 'tab\tnew\nline', None]


def test_the_literal_quotes_every_string_and_leaves_numbers_bare():
    assert pg_array([1, None, -3]) == "{1,NULL,-3}"
    assert pg_array([True, False, None]) == "{t,f,NULL}"
    assert pg_array(['a "b"', "c\\d", None]) == '{"a \\"b\\"","c\\\\d",NULL}'
    assert pg_array([]) == "{}"
    assert pg_array([Decimal("1.2500")]) == "{1.2500}"


def test_values_it_does_not_know_are_left_to_psycopg():
    naive = dt.datetime(2026, 11, 29, 12, 0)
    assert pg_array([1, naive]) == [1, naive]
    assert pg_array([dt.datetime(2026, 11, 29, tzinfo=dt.UTC), naive, None]) == [dt.datetime(2026, 11, 29, tzinfo=dt.UTC), naive, None]
    assert pg_array([Decimal("Infinity")]) == [Decimal("Infinity")]
    assert pg_array([1.5]) == [1.5]


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize(("values", "sql_type"), [
    (TRICKY, "text"),
    ([0, 1, -1, 2**62, None], "bigint"),
    ([True, False, None], "boolean"),
    ([Decimal("0.0001"), Decimal("-12345678.90"), None], "numeric"),
    ([dt.date(2026, 11, 29), dt.date(1, 1, 1), None], "date"),
    ([dt.datetime(2026, 11, 29, 21, 55, 12, 956272, tzinfo=dt.UTC), dt.datetime(213, 1, 18, 4, 40, tzinfo=dt.UTC), None], "timestamptz"),
    # a batch's rows: the same few instants again and again, one of them in another zone
    ([NOW, None, NOW, NOW + dt.timedelta(microseconds=1), NOW.astimezone(dt.timezone(dt.timedelta(hours=8))), NOW], "timestamptz"),
    ([OrderStatus.OPEN, OrderStatus.FILLED, "open"], "text"),  # choices' members are text
])
def test_postgresql_reads_back_exactly_what_was_written(values, sql_type):
    literal = pg_array(values)
    assert isinstance(literal, str)
    with connection.cursor() as cur:
        cur.execute(f"SELECT v FROM unnest(%s::{sql_type}[]) WITH ORDINALITY AS t(v, n) ORDER BY n", [literal])  # nosec B608 # type from the parameter list above
        assert [row[0] for row in cur.fetchall()] == values
