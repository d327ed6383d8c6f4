"""common.db.fetch_together: independent reads sent together (one round trip on PostgreSQL) come back each
with its own rows, in the order given; a failing one fails the call and leaves the connection usable."""

import pytest
from django.db import DatabaseError, connection, transaction

from common.db import fetch_together
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


def test_each_statement_gets_its_own_rows_in_order():
    a, b = OrganisationFactory(name="Lingang Compute"), OrganisationFactory(name="Songjiang AI")
    rows = fetch_together([
        ("SELECT id, name FROM marketplace_organisation WHERE id = %s", [b.pk]),
        None,
        ("SELECT name FROM marketplace_organisation WHERE id IN (%s, %s) ORDER BY name", [a.pk, b.pk]),
        ("SELECT id FROM marketplace_organisation WHERE id = %s", [-1]),
    ])
    assert rows == [[(b.pk, "Songjiang AI")], [], [("Lingang Compute",), ("Songjiang AI",)], []]


def test_a_failing_read_fails_the_call_and_the_connection_goes_on():
    org = OrganisationFactory(name="Minhang Cloud")
    with pytest.raises(DatabaseError), transaction.atomic():
        fetch_together([
            ("SELECT name FROM marketplace_organisation WHERE id = %s", [org.pk]),
            ("SELECT no_such_column FROM marketplace_organisation", []),
        ])
    assert fetch_together([("SELECT name FROM marketplace_organisation WHERE id = %s", [org.pk])]) == [[("Minhang Cloud",)]]
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
