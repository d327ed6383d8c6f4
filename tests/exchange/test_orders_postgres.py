"""PostgreSQL: concurrent retries of one order place it once and hold its funds once."""

import threading

import pytest
from django.db import connections

from exchange import services
from exchange.models import Order
from ledger.models import Hold
from ledger.selectors import balances_get

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_concurrent_retries_of_one_client_order_id_place_one_order(market_setup):
    m = market_setup
    barrier = threading.Barrier(6)
    ids, errors = [], []

    def attempt(side: str) -> None:
        org, user = (m["buyer"], m["buyer_user"]) if side == "buy" else (m["supplier"], m["seller_user"])
        req = services.OrderRequest(instrument=m["instrument"], side=side, quantity=3, client_order_id=f"same-{side}",
                                    price=m["instrument"].reference_price + (m["instrument"].tick_size if side == "sell" else 0))  # no cross
        barrier.wait()
        try:
            placed = services.order_place(user=user, organisation=org, request=req)
            ids.append((side, placed.state["id"]))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(side,)) for side in ["buy"] * 3 + ["sell"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({pk for side, pk in ids if side == "buy"}) == 1 and len({pk for side, pk in ids if side == "sell"}) == 1
    assert Order.objects.count() == 2 and Hold.objects.count() == 1
    assert balances_get(organisation=m["buyer"])["held"] == 4_506  # 45.00 + max fee (0.045 up to 0.05, +0.01), once
    assert Order.objects.get(side="sell").capacity_hold.lots == 3


def test_shards_trading_one_products_windows_do_not_wait_on_a_shared_listing_but_a_withdrawal_waits(market_setup):
    """Two shards (instruments of one product, the same supplier's listing) read the listing's free lots in
    their open batches at once; a withdrawal of that listing waits until both batches commit."""
    import psycopg
    from django.db import connection, transaction

    from exchange.admission import listing_free_lots_locked
    from marketplace import services as market
    from marketplace.models import Instrument

    m = market_setup
    other = Instrument.objects.filter(product=m["product"], status="open").exclude(pk=m["instrument"].pk).order_by("delivery_start").first()
    db = connection.settings_dict
    dsn = f"host={db['HOST']} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    started, answers, errors = threading.Event(), [], []

    def other_shard() -> None:
        started.wait(10)
        try:
            with transaction.atomic():
                with connection.cursor() as cur:
                    cur.execute("SET LOCAL lock_timeout = '2s'")
                answers.append(listing_free_lots_locked(m["listing"].pk, other))
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_shard)
    with transaction.atomic():  # this shard's batch, still open
        mine = listing_free_lots_locked(m["listing"].pk, m["instrument"])
        thread.start()
        started.set()
        thread.join(timeout=10)
        assert errors == [] and answers, errors  # the other shard did not wait for this batch
        with psycopg.connect(dsn, autocommit=True) as supplier:  # the supplier withdraws meanwhile
            supplier.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                supplier.execute("UPDATE marketplace_listing SET is_active = false WHERE id = %s", [m["listing"].pk])
    assert mine == answers[0] > 0  # capacity is counted per window: both see the listing's whole window free
    market.listing_withdraw(listing=m["listing"])  # once the batches are over, at once
    m["listing"].refresh_from_db()
    assert m["listing"].is_active is False


def _command(m, cid: str, *, side: str = "buy", quantity: int = 2) -> dict:
    """A place command for the matcher, as the web sends it: the market's buyer (or supplier) at the reference price."""
    user, org = (m["buyer_user"], m["buyer"]) if side == "buy" else (m["seller_user"], m["supplier"])
    return services.order_command(user=user, organisation=org, request=services.OrderRequest(
        instrument=m["instrument"], side=side, quantity=quantity, client_order_id=cid, price=m["instrument"].reference_price))


@pytest.fixture
def poisoned_loop(market_setup, monkeypatch):
    """A matcher loop in which the order with client id "poison" has a queued write the database refuses
    (quantity >= 0): the batch's pipeline reports it at a later read."""
    from django.db import connection

    from exchange import matcher as matcher_module
    from exchange.matcher import Matcher
    from exchange.transport import MatcherLoop

    real = matcher_module.events_insert

    def events_insert(events, now):
        real(events, now)
        for order, *_ in events:
            if order.client_order_id == "poison":
                with connection.cursor() as cur:
                    cur.execute("UPDATE exchange_order SET quantity = -1 WHERE id = %s", [order.pk])

    monkeypatch.setattr(matcher_module, "events_insert", events_insert)
    return MatcherLoop(Matcher())


def test_a_write_failing_in_the_batch_pipeline_refuses_only_its_order(market_setup, poisoned_loop):
    """The batch's writes are queued (psycopg pipeline mode) and a failing one is reported at a later read: the
    whole batch still rolls back, its commands are retried one by one, and only the order whose write fails
    is refused; nothing of it is stored and the matcher goes on."""
    from ledger.verify import ledger_verify

    m, loop = market_setup, poisoned_loop
    good, poison = loop.run([_command(m, "good"), _command(m, "poison")])
    assert good["state"]["status"] == "open" and poison == {"op": "place", "error": "internal_error"}
    assert list(Order.objects.values_list("client_order_id", "status")) == [("good", "open")]
    assert Hold.objects.count() == 1
    assert balances_get(organisation=m["buyer"])["held"] == 3_004  # 30.00 + max fee (0.03, +0.01), for "good" only
    [after] = loop.run([_command(m, "after")])
    assert after["state"]["status"] == "open"
    assert ledger_verify().ok


def test_a_batch_failing_after_its_statements_were_prepared_is_retried_and_later_batches_run(market_setup, poisoned_loop):
    """The batch's statements are prepared on the connection from their fifth run. A batch that fails in the
    pipeline after that rolls back and is retried command by command as before, and the prepared statements
    still serve the batches after it."""
    from ledger.verify import ledger_verify

    m, loop = market_setup, poisoned_loop
    for i in range(7):
        assert loop.run([_command(m, f"warm{i}")])[0]["state"]["status"] == "open"
    assert any(s.startswith('INSERT INTO "exchange_order"') for s in _prepared())
    good, poison = loop.run([_command(m, "good"), _command(m, "poison")])
    assert good["state"]["status"] == "open" and poison == {"op": "place", "error": "internal_error"}
    for i in range(3):
        assert loop.run([_command(m, f"after{i}")])[0]["state"]["status"] == "open"
    assert not Order.objects.filter(client_order_id="poison").exists()
    assert Order.objects.filter(status="open").count() == 11 and Hold.objects.count() == 11
    assert balances_get(organisation=m["buyer"])["held"] == 11 * 3_004
    assert ledger_verify().ok


def test_what_a_matcher_reads_every_second_is_found_through_the_live_order_indexes(market_setup):
    """Housekeeping's reads (pending orders, cancels requested) and the risk book's open orders go through the
    partial indexes of live orders, whose size is the orders in play, not every order ever stored."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from exchange.matcher import Matcher
    from exchange.risk import RiskBook

    matcher = Matcher()
    with CaptureQueriesContext(connection) as reads:
        matcher.pending_commands()
        RiskBook(owns=matcher.owns, shards=1).ensure()
    statements = [q["sql"] for q in reads.captured_queries if "exchange_order" in q["sql"] and "JOIN" not in q["sql"]]
    assert len(statements) == 3, statements
    plans = _plans(statements)
    assert ["order_pending_or_open" in p or "order_cancel_requested" in p for p in plans] == [True] * 3, plans


def test_a_traders_order_list_reads_its_newest_orders_through_an_index(api, market_setup):
    """GET /orders/ reads the page it shows, not every order of the organisation sorted."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.exchange.test_orders_api import place

    m = market_setup
    for i in range(3):
        assert place(api, m["buyer_user"], m["instrument"], price="14.50", client_order_id=f"b{i}").status_code == 201
    api.force_authenticate(m["buyer_user"])
    with CaptureQueriesContext(connection) as reads:
        assert api.get("/api/v1/orders/").status_code == 200
    [page] = [q["sql"] for q in reads.captured_queries if 'FROM "exchange_order"' in q["sql"] and "LIMIT" in q["sql"]]
    [plan] = _plans([page])
    assert "Index Scan Backward using order_organisation_newest" in plan, plan


def _plans(statements: list[str]) -> list[str]:
    """EXPLAIN of SQL the ORM just ran (values inlined by client-side binding), sequential scans off: a tiny test
    table would be read whole anyway."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            plans = []
            for sql in statements:
                cursor.execute("EXPLAIN " + sql)  # nosec B608 # the ORM's own SQL, values inlined
                plans.append("\n".join(row[0] for row in cursor.fetchall()))
        finally:
            cursor.execute("RESET enable_seqscan")
    return plans


def _prepared() -> list[str]:
    from common.db import fetch_rows

    return [statement for (statement,) in fetch_rows("SELECT statement FROM pg_prepared_statements", [])]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_matchers_batches_are_parsed_and_planned_once_per_connection(market_setup, settings, enabled):
    """The batch's statements repeat every batch: PostgreSQL keeps them prepared on the matcher's connection
    (from their fifth run) instead of parsing and planning each again; the connection is given back with
    Django's own client-side cursors. DATABASE_PREPARED_STATEMENTS = False (a pooler that cannot keep them):
    nothing is prepared."""
    from django.db import connection
    from django.db.backends.postgresql.base import ServerBindingCursor

    from exchange.matcher import Matcher
    from exchange.transport import MatcherLoop

    settings.DATABASE_PREPARED_STATEMENTS = enabled
    m = market_setup
    before = set(_prepared())  # the connection is the session's: an earlier test may have left some
    loop = MatcherLoop(Matcher())
    for i in range(8):
        buy, sell = _command(m, f"b{i}", quantity=1), _command(m, f"s{i}", side="sell", quantity=1)
        assert [r["state"]["status"] for r in loop.run([buy, sell])] == ["filled", "filled"]
    prepared = _prepared()
    if enabled:
        assert any(s.startswith('INSERT INTO "exchange_order"') for s in prepared), prepared
        assert any("ledger_journalentry" in s for s in prepared), prepared
    else:
        assert sorted(set(prepared) - before) == []
    assert connection.connection.prepare_threshold is None  # Django's: nothing prepared outside the batch
    with connection.cursor() as cursor:
        assert not isinstance(cursor.cursor, ServerBindingCursor)  # Django's client-side binding again
