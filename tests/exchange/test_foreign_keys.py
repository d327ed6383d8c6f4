"""The matcher's foreign keys, enforced by statement triggers instead of per-row constraints (common.refchecks):
a row naming a missing parent is refused, a parent still named cannot be deleted, on both databases where
the docstring says so."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction

from common import refchecks
from exchange import services
from exchange.models import Order, OrderEvent, Trade


def _place(m, side: str, price: str, qty: int = 2) -> Order:
    user, org = (m["buyer_user"], m["buyer"]) if side == "buy" else (m["seller_user"], m["supplier"])
    placed = services.order_place(user=user, organisation=org, request=services.OrderRequest(
        instrument=m["instrument"], side=side, quantity=qty, price=Decimal(price), client_order_id=f"fk-{side}-{price}-{uuid.uuid4().hex[:8]}"))
    return Order.objects.get(pk=placed.state["id"])


def test_every_key_without_a_constraint_is_either_checked_by_triggers_or_listed_as_unchecked():
    checked = {f"{label}.{name}" for label, names in refchecks.CHECKED.items() for name in names}
    assert set(refchecks.unconstrained_fields()) == checked | refchecks.UNCHECKED


@pytest.mark.django_db
def test_the_triggers_exist_after_migrate():
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE 'refcheck_%%'")
        else:
            cur.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'refcheck_%'")
        found = {table for table, _ in cur.fetchall()}
    keys = refchecks.keys()
    assert {k.table for k in keys} <= found
    if connection.vendor == "postgresql":
        assert {k.parent for k in keys} <= found


@pytest.mark.django_db
def test_a_row_naming_a_missing_parent_is_refused_and_nothing_of_its_statement_is_kept(market_setup):
    order = _place(market_setup, "buy", "15.00")
    before = OrderEvent.objects.count()
    with pytest.raises(IntegrityError, match="exchange_order"), transaction.atomic():
        OrderEvent.objects.create(order_id=order.pk + 10_000, kind="accepted")
    # Several rows in one statement, one of them bad: the statement is refused whole.
    with pytest.raises(IntegrityError), transaction.atomic():
        OrderEvent.objects.bulk_create([OrderEvent(order_id=order.pk, kind="amended"), OrderEvent(order_id=order.pk, kind="amended", actor_id=987_654)])
    assert OrderEvent.objects.count() == before
    OrderEvent.objects.bulk_create([OrderEvent(order_id=order.pk, kind="amended", actor_id=market_setup["buyer_user"].pk)])
    assert OrderEvent.objects.count() == before + 1


@pytest.mark.django_db
def test_changing_a_key_to_a_missing_parent_is_refused(market_setup):
    order = _place(market_setup, "sell", "15.50")
    with pytest.raises(IntegrityError, match="marketplace_listing"), transaction.atomic():
        Order.objects.filter(pk=order.pk).update(listing_id=order.listing_id + 10_000)
    Order.objects.filter(pk=order.pk).update(status=order.status)  # keys not changed: nothing to check
    order.refresh_from_db()
    assert order.listing_id == market_setup["listing"].pk


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_parent_still_named_cannot_be_deleted_but_can_once_its_children_are_gone(market_setup):
    sell = _place(market_setup, "sell", "15.00")
    buy = _place(market_setup, "buy", "15.00")
    assert Trade.objects.filter(maker_order=sell, taker_order=buy).exists()
    # The test runs inside a transaction: SET CONSTRAINTS ... IMMEDIATE runs the deferred checks as COMMIT would.
    with pytest.raises(IntegrityError, match="still referenced"), transaction.atomic(), connection.cursor() as cur:
        cur.execute("DELETE FROM exchange_order WHERE id = %s", [sell.pk])
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert Order.objects.filter(pk=sell.pk).exists()
    resting = _place(market_setup, "buy", "14.00")
    # Deferred, as Django's own constraints: children deleted after the parent, in the same transaction, are fine.
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("DELETE FROM exchange_order WHERE id = %s", [resting.pk])
        cur.execute("DELETE FROM exchange_orderevent WHERE order_id = %s", [resting.pk])
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert not Order.objects.filter(pk=resting.pk).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_parent_cannot_be_deleted_while_another_transaction_inserts_a_row_naming_it(market_setup):
    """The insert locks the parents it names (FOR KEY SHARE, as PostgreSQL's own check does): a concurrent
    delete waits for it and then fails, so no committed row ever names a deleted parent."""
    order = _place(market_setup, "buy", "14.00")
    db = connection.settings_dict
    dsn = f"host={db['HOST']} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    inserted, outcome = threading.Event(), {}
    with psycopg.connect(dsn) as writer:
        writer.execute("INSERT INTO exchange_orderevent (order_id, kind, quantity, reason, created_at) VALUES (%s, 'amended', 0, '', now())", [order.pk])
        inserted.set()

        def delete() -> None:
            with psycopg.connect(dsn) as other:
                try:
                    other.execute("SET lock_timeout = '2s'")
                    other.execute("DELETE FROM exchange_orderevent WHERE order_id = %s AND kind = 'accepted'", [order.pk])
                    other.execute("DELETE FROM exchange_capacityhold WHERE order_id = %s", [order.pk])
                    other.execute("DELETE FROM exchange_order WHERE id = %s", [order.pk])
                    other.commit()
                    outcome["result"] = "deleted"
                except psycopg.Error as exc:
                    outcome["result"] = type(exc).__name__

        thread = threading.Thread(target=delete)
        thread.start()
        thread.join(5)
        writer.commit()
    assert outcome["result"] in {"LockNotAvailable", "ForeignKeyViolation"}
    assert Order.objects.filter(pk=order.pk).exists()
    assert OrderEvent.objects.filter(order_id=order.pk, kind="amended").exists()
