"""The trade tape and order audit trail: filters, keyset pages, streaming CSV."""

import csv
import datetime as dt
import io

import pytest
from django.http import StreamingHttpResponse
from django.utils import timezone

from exchange.models import OrderEvent, Trade

pytestmark = pytest.mark.django_db
TAPE = "/api/v1/oversight/trades/"
EVENTS = "/api/v1/oversight/order-events/"


@pytest.fixture
def tape(api, market, trader):
    m = market
    trader.trade(m["seller1"], m["buyer_user1"], "15.00", 3)   # supplier1 -> buyer1
    trader.trade(m["seller2"], m["buyer_user2"], "15.20", 7)   # supplier2 -> buyer2
    trader.trade(m["seller1"], m["buyer_user2"], "14.80", 1)   # supplier1 -> buyer2
    resting = trader.place(m["buyer_user1"], "buy", "14.00", 4)
    trader.cancel(m["buyer_user1"], resting["id"])
    api.force_authenticate(m["regulator"])
    return {**m, "cancelled": resting["id"]}


def ids(response):
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["results"]]


def test_the_tape_shows_counterparties_newest_first(api, tape):
    body = api.get(TAPE).json()
    rows = body["results"]
    assert [(r["seller"], r["buyer"], r["price"], r["quantity"], r["value"]) for r in rows] == [
        (tape["supplier1"].pk, tape["buyer2"].pk, "14.80", 1, "14.80"),
        (tape["supplier2"].pk, tape["buyer2"].pk, "15.20", 7, "106.40"),
        (tape["supplier1"].pk, tape["buyer1"].pk, "15.00", 3, "45.00"),
    ]
    assert rows[0]["instrument_code"] == tape["instrument"].code and rows[0]["price_fen_per_lot"] == 1480


@pytest.mark.parametrize(("params", "expected"), [
    (lambda t: {"organisation": t["supplier1"].pk}, [(1480, 1), (1500, 3)]),
    (lambda t: {"buyer": t["buyer2"].pk}, [(1480, 1), (1520, 7)]),
    (lambda t: {"seller": t["supplier2"].pk}, [(1520, 7)]),
    (lambda t: {"price_fen_min": 1500}, [(1520, 7), (1500, 3)]),
    (lambda t: {"price_fen_min": 1490, "price_fen_max": 1510}, [(1500, 3)]),
    (lambda t: {"quantity_min": 2, "quantity_max": 5}, [(1500, 3)]),
    (lambda t: {"instrument": t["instrument"].pk, "product": t["product"].pk}, [(1480, 1), (1520, 7), (1500, 3)]),
    (lambda t: {"product": t["product"].pk + 999}, []),
    (lambda t: {"since": (timezone.now() + dt.timedelta(minutes=1)).isoformat()}, []),
    (lambda t: {"until": (timezone.now() + dt.timedelta(minutes=1)).isoformat(), "taker_side": "buy"}, [(1480, 1), (1520, 7), (1500, 3)]),
])
def test_tape_filters(api, tape, params, expected):
    rows = api.get(TAPE, params(tape)).json()["results"]
    assert [(r["price_fen_per_lot"], r["quantity"]) for r in rows] == expected


def test_bad_filter_values_are_400_with_the_field(api, tape):
    response = api.get(TAPE, {"price_fen_min": "cheap", "since": "yesterday"})
    assert response.status_code == 400
    assert set(response.json()) == {"price_fen_min", "since"}


def test_keyset_pages_walk_the_whole_tape_without_gaps_or_repeats(api, tape, trader):
    for i in range(4):
        trader.trade(tape["seller2"], tape["buyer_user1"], "15.00", 1 + i)
    api.force_authenticate(tape["regulator"])
    seen, url = [], TAPE + "?page_size=2"
    while url:
        body = api.get(url).json()
        assert "results" in body, (url, body)
        assert len(body["results"]) <= 2 and "count" not in body
        seen += [r["id"] for r in body["results"]]
        url = body["next"]
    assert seen == list(Trade.objects.order_by("-id").values_list("id", flat=True))
    assert len(seen) == 7


def test_the_order_audit_trail_has_every_event_with_who_and_when(api, tape):
    rows = api.get(EVENTS, {"order": tape["cancelled"]}).json()["results"]
    assert [(r["kind"], r["quantity"], r["price"]) for r in rows] == [("cancelled", 4, None), ("accepted", 4, "14.00")]
    assert rows[0]["actor"] == tape["buyer_user1"].pk and rows[0]["organisation"] == tape["buyer1"].pk
    assert all(r["created_at"] for r in rows)
    cancels = ids(api.get(EVENTS, {"kind": "cancelled", "organisation": tape["buyer1"].pk}))
    assert cancels == list(OrderEvent.objects.filter(kind="cancelled", order__organisation=tape["buyer1"]).order_by("-id").values_list("id", flat=True))
    fills = api.get(EVENTS, {"kind": "filled", "quantity_min": 7}).json()["results"]
    assert {r["organisation"] for r in fills} == {tape["supplier2"].pk, tape["buyer2"].pk}


def _csv(response) -> list[dict]:
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_export_streams_the_filtered_tape_oldest_first(api, tape):
    rows = _csv(api.get(TAPE, {"export": "csv", "buyer": tape["buyer2"].pk}))
    assert [(r["price_cny_per_unit"], r["price_fen_per_lot"], r["quantity"], r["seller"], r["buyer"]) for r in rows] == [
        ("15.20", "1520", "7", str(tape["supplier2"].pk), str(tape["buyer2"].pk)),
        ("14.80", "1480", "1", str(tape["supplier1"].pk), str(tape["buyer2"].pk)),
    ]
    assert rows[0]["instrument_code"] == tape["instrument"].code and rows[0]["product_code"] == "AI-TRAIN"


def test_csv_export_of_orders_and_events(api, tape):
    orders = _csv(api.get("/api/v1/oversight/orders/", {"export": "csv", "status": "cancelled"}))
    assert [(int(r["id"]), r["status"], r["price_cny_per_unit"], r["quantity"]) for r in orders] == [(tape["cancelled"], "cancelled", "14.00", "4")]
    events = _csv(api.get(EVENTS, {"export": "csv", "order": tape["cancelled"]}))
    assert [r["kind"] for r in events] == ["accepted", "cancelled"]
    assert events[1]["actor"] == str(tape["buyer_user1"].pk)


def test_csv_export_is_written_in_blocks_not_all_at_once(tape):
    from oversight.exports import csv_rows

    blocks = list(csv_rows("trades", Trade.objects.all(), chunk_size=1))
    assert len(blocks) == 4  # header + first row, then one block per row, then the (empty) tail
    assert "".join(blocks).count("\n") == 4


def test_contracts_and_journal_entries(api, tape):
    contracts = api.get("/api/v1/oversight/contracts/", {"organisation": tape["buyer2"].pk}).json()["results"]
    assert [(c["quantity"], c["price"], c["value_fen"]) for c in contracts] == [(1, "14.80", 1480), (7, "15.20", 10640)]
    entries = api.get("/api/v1/oversight/ledger/entries/", {"organisation": tape["buyer1"].pk, "kind": "top_up"}).json()["results"]
    assert len(entries) == 1
    assert sum(p["amount_fen"] for p in entries[0]["postings"]) == 0
    assert {p["organisation"] for p in entries[0]["postings"]} == {tape["buyer1"].pk, None}


def test_a_page_costs_the_same_queries_however_many_rows(api, tape, trader, django_assert_num_queries):
    def page():
        api.force_authenticate(tape["regulator"])
        with django_assert_num_queries(1):  # one keyset query, instruments joined
            assert len(api.get(TAPE, {"page_size": 2}).json()["results"]) == 2
        with django_assert_num_queries(1):  # events joined to their orders and instruments
            assert len(api.get(EVENTS, {"page_size": 2}).json()["results"]) == 2
        with django_assert_num_queries(2):  # entries, then their postings with accounts
            assert len(api.get("/api/v1/oversight/ledger/entries/", {"page_size": 3}).json()["results"]) == 3

    page()
    for i in range(5):
        trader.trade(tape["seller1"], tape["buyer_user2"], "15.00", 1 + i)
    page()


def test_times_with_any_iso_offset_filter_and_export_and_the_next_request_still_works(api, tape):
    """ISO 8601 allows offsets up to +-23:59, PostgreSQL only +-15:59: the filter hands the database UTC.
    (A refused statement once aborted the transaction, failing the requests after it.)"""
    for path in (TAPE, EVENTS):
        assert ids(api.get(path, {"since": "0213-01-18T21:45:31+17:05"})) != []
        assert ids(api.get(path, {"until": "2999-01-01T00:00:00-23:59"})) != []
        export = api.get(path, {"since": "0213-01-18T21:45:31+17:05", "export": "csv"})
        assert export.status_code == 200 and len(b"".join(export.streaming_content).splitlines()) > 1
    # Nine hours after a time in the year 1 (UTC) is representable; one before it is not, and says so.
    assert api.get(EVENTS, {"since": "0001-01-01T09:00:00-09:00"}).status_code == 200
    refused = api.get(EVENTS, {"since": "0001-01-01T00:00:00+09:00"})
    assert refused.status_code == 400 and "since" in refused.json()
    assert ids(api.get(TAPE)) != []
