"""ListingUsage: the lots of a listing held per instrument (sold or still offered), which admission reads instead
of summing every capacity hold the listing ever had. The database keeps it from the holds (triggers), so it must
equal that sum after anything that writes them, and a seller's free capacity must come out as before."""

import datetime as dt

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import F, Sum
from django.utils import timezone

from common import refchecks
from exchange import transport
from exchange.models import CapacityHold, ListingUsage
from tests.exchange.test_orders_api import place


def held_by_sum() -> dict[tuple[int, int], int]:
    rows = CapacityHold.objects.values("listing_id", "instrument_id").annotate(held=Sum(F("lots") - F("released_lots")))
    return {(r["listing_id"], r["instrument_id"]): r["held"] for r in rows}


def usage() -> dict[tuple[int, int], int]:
    return {(u.listing_id, u.instrument_id): u.lots for u in ListingUsage.objects.all()}


def assert_usage_matches_holds() -> None:
    assert usage() == held_by_sum()


def test_usage_follows_every_change_to_a_listings_capacity_holds(api, market_setup):
    m = market_setup
    inst, key = m["instrument"], (m["listing"].pk, m["instrument"].pk)
    s1 = place(api, m["seller_user"], inst, side="sell", price="15.50", quantity=40, client_order_id="s1").json()["id"]
    s2 = place(api, m["seller_user"], inst, side="sell", price="15.60", quantity=30, client_order_id="s2").json()["id"]
    assert usage() == {key: 70}
    # A buyer takes 10 lots of s1: sold lots stay held.
    assert place(api, m["buyer_user"], inst, price="15.50", quantity=10, client_order_id="b1").json()["status"] == "filled"
    assert usage() == {key: 70}
    api.force_authenticate(m["seller_user"])
    assert api.patch(f"/api/v1/orders/{s2}/", {"quantity": 50}, format="json").status_code == 200  # up: 20 more
    assert usage() == {key: 90}
    assert api.patch(f"/api/v1/orders/{s1}/", {"quantity": 15}, format="json").status_code == 200  # down: 30 open -> 5
    assert usage() == {key: 65}  # s1: 10 sold + 5 open; s2: 50
    assert api.delete(f"/api/v1/orders/{s2}/").status_code == 200
    assert usage() == {key: 15}
    # An IOC sell partly filled: what it did not sell goes back at once.
    place(api, m["buyer_user"], inst, price="15.40", quantity=4, client_order_id="b2")
    ioc = place(api, m["seller_user"], inst, side="sell", price="15.40", quantity=9, time_in_force="IOC", client_order_id="s3").json()
    assert (ioc["status"], ioc["filled_quantity"]) == ("cancelled", 4)
    assert usage() == {key: 19}
    assert_usage_matches_holds()
    # Gate closure: s1's 5 open lots are released, the 10 sold stay.
    inst.gate_closure = timezone.now() - dt.timedelta(seconds=1)
    inst.save(update_fields=["gate_closure"])
    transport.send([{"op": "close", "instrument": inst.pk}])
    assert usage() == {key: 14}
    assert_usage_matches_holds()


def test_a_seller_may_offer_what_the_listing_has_left_and_no_more(api, market_setup):
    """The listing holds 237 lots for the instrument (tests/exchange/test_orders_api.py): what is sold or offered
    counts against them, what is released no longer does."""
    m = market_setup
    inst = m["instrument"]
    s1 = place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=200, client_order_id="s1").json()["id"]
    refused = place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=38, client_order_id="s2")
    assert refused.status_code == 400 and "at most 37 lots" in refused.json()["quantity"][0]
    api.force_authenticate(m["seller_user"])
    assert api.delete(f"/api/v1/orders/{s1}/").status_code == 200
    assert place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=237, client_order_id="s3").status_code == 201


def test_usage_is_kept_by_the_database_whoever_writes_the_holds(api, market_setup):
    m = market_setup
    inst, key = m["instrument"], (m["listing"].pk, m["instrument"].pk)
    ids = [place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=q, client_order_id=f"s{q}").json()["id"] for q in (3, 5, 7)]
    assert usage() == {key: 15}
    CapacityHold.objects.filter(order_id__in=ids[:2]).update(released_lots=F("lots") - 1)  # one statement, two rows
    assert usage() == {key: 9}
    CapacityHold.objects.filter(order_id=ids[2]).update(lots=F("lots") + 2)
    assert usage() == {key: 11}
    hold = CapacityHold.objects.get(order_id=ids[0])
    hold.released_lots = 0
    hold.save()
    assert usage() == {key: 13}
    CapacityHold.objects.filter(order_id=ids[1]).delete()
    assert usage() == {key: 12}
    assert_usage_matches_holds()


def test_the_migration_counts_the_holds_stored_before_it(api, market_setup, transactional_db):
    m = market_setup
    inst = m["instrument"]
    place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=12, client_order_id="s1")
    place(api, m["buyer_user"], inst, price="16.00", quantity=5, client_order_id="b1")
    before = held_by_sum()
    assert before == {(m["listing"].pk, inst.pk): 12}
    refchecks.uninstall(connection)  # as `migrate` does before it starts (common.apps): SQLite rebuilds tables
    executor = MigrationExecutor(connection)
    executor.migrate([("exchange", "0006_order_trade_redundant_fk_indexes")])  # no ListingUsage, no triggers
    CapacityHold.objects.filter(order__client_order_id="s1").update(released_lots=2)  # written while there is none
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    refchecks.install(connection)  # as `migrate` does when it is done (common.apps)
    assert usage() == {(m["listing"].pk, inst.pk): 10}
    assert_usage_matches_holds()


def test_in_one_batch_an_amend_counts_the_lots_of_sell_orders_placed_before_it(api, market_setup):
    """A batch's new sell orders hold their listing's lots from the moment they are admitted, though (on
    PostgreSQL) their rows are written only at the batch's end: an amend later in the same batch that would
    need more than what is left is refused, and one that fits is made."""
    from exchange import services

    m = market_setup
    inst = m["instrument"]
    s1 = place(api, m["seller_user"], inst, side="sell", price="16.00", quantity=200, client_order_id="s1").json()["id"]

    def sell(qty, cid):
        req = services.OrderRequest(instrument=inst, side="sell", quantity=qty, client_order_id=cid, price=inst.reference_price + inst.tick_size)
        return services.order_command(user=m["seller_user"], organisation=m["supplier"], request=req)

    def amend(open_qty):
        return {"op": "amend", "order": s1, "instrument": inst.pk, "price": None, "quantity": open_qty, "actor": m["seller_user"].pk}

    # 237 lots listed: 200 + 30 new leave 7, so +10 on s1 does not fit, +7 does.
    placed, refused = transport.send([sell(30, "s2"), amend(210)])
    assert placed["state"]["status"] == "open"
    assert refused["rejected"] == "insufficient_capacity" and "7 more lots free" in refused["message"]
    placed, amended = transport.send([sell(1, "s3"), amend(206)])  # 231 + 6
    assert placed["state"]["status"] == "open" and not amended.get("rejected") and amended["state"]["open_quantity"] == 206
    assert usage() == {(m["listing"].pk, inst.pk): 237}
    assert_usage_matches_holds()
