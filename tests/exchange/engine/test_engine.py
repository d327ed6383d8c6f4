"""The multi-book Engine: routing by instrument, command objects, replay determinism, snapshots."""

from __future__ import annotations

import json
import random

import pytest

from exchange.engine import (
    STP,
    Amend,
    BookConfig,
    Cancel,
    CancelAll,
    Engine,
    EventKind,
    Expire,
    Halt,
    Order,
    OrderType,
    RejectReason,
    Resume,
    SetReferencePrice,
    Side,
    StartAuction,
    Status,
    Submit,
    TimeInForce,
    Uncross,
)

CFG = BookConfig(reference_price=100, band_bps=1000, market_protection_bps=300)


def engine_with_two_books() -> Engine:
    e = Engine()
    e.add_book(1, CFG)
    e.add_book(2, CFG)
    return e


def test_commands_are_routed_by_instrument() -> None:
    e = engine_with_two_books()
    assert e.submit(1, Order(10, 1, Side.BUY, 99, 5), 0) == [(EventKind.ACCEPTED, 10), (EventKind.BOOK, Side.BUY, 99, 5, 1)]
    assert e.submit(2, Order(10, 1, Side.SELL, 99, 5), 0)[0] == (EventKind.ACCEPTED, 10)  # own book, own ids
    assert e.book(1).depth() == ([(99, 5)], [])
    assert e.book(2).depth() == ([], [(99, 5)])
    assert e.cancel_all(None, 1, 0) == {
        1: [(EventKind.CANCELLED, 10, 5, 2), (EventKind.BOOK, Side.BUY, 99, 0, 2)],
        2: [(EventKind.CANCELLED, 10, 5, 2), (EventKind.BOOK, Side.SELL, 99, 0, 2)],
    }


def test_unknown_instrument() -> None:
    e = Engine()
    assert e.submit(5, Order(1, 1, Side.BUY, 99, 5), 0) == [(EventKind.REJECTED, 1, RejectReason.UNKNOWN_INSTRUMENT)]
    assert e.cancel(5, 1, 0) == [(EventKind.CANCEL_REJECTED, 1, RejectReason.UNKNOWN_INSTRUMENT)]
    assert e.amend(5, 1, 0, quantity=1) == [(EventKind.AMEND_REJECTED, 1, RejectReason.UNKNOWN_INSTRUMENT)]
    with pytest.raises(KeyError):
        e.halt(5, 0)
    e.add_book(5, CFG)
    with pytest.raises(ValueError):
        e.add_book(5, CFG)


def test_expire_all_reports_per_book() -> None:
    e = engine_with_two_books()
    e.submit(2, Order(1, 1, Side.BUY, 99, 5, tif=TimeInForce.GTD, expires_at=10), 0)
    assert e.expire_all(9) == {}
    assert e.expire_all(10) == {2: [(EventKind.EXPIRED, 1, 5), (EventKind.BOOK, Side.BUY, 99, 0, 2)]}


def random_commands(seed: int, n: int) -> list:
    """A reproducible mixed stream over two instruments, every command kind included."""
    rng = random.Random(seed)
    cmds: list = []
    now = 0
    for oid in range(1, n + 1):
        now += rng.randint(0, 2)
        inst = rng.choice((1, 2))
        r = rng.random()
        if r < 0.55:
            tif = rng.choice([TimeInForce.GTC] * 4 + [TimeInForce.GTD, TimeInForce.IOC, TimeInForce.FOK])
            otype = OrderType.MARKET if rng.random() < 0.05 else OrderType.LIMIT
            if otype == OrderType.MARKET:
                tif = TimeInForce.IOC
            order = Order(
                oid, rng.randint(1, 6), rng.choice((Side.BUY, Side.SELL)), 0 if otype == OrderType.MARKET else rng.randint(95, 105),
                rng.randint(1, 9), otype, tif, now + rng.randint(1, 20) if tif == TimeInForce.GTD else 0,
                tif == TimeInForce.GTC and rng.random() < 0.1, 0, rng.choice(list(STP)),
            )
            cmds.append(Submit(inst, order, now))
        elif r < 0.75:
            cmds.append(Cancel(inst, rng.randint(max(1, oid - 30), oid), now))
        elif r < 0.9:
            cmds.append(Amend(inst, rng.randint(max(1, oid - 30), oid), now, rng.choice([None, rng.randint(95, 105)]), rng.randint(1, 9)))
        elif r < 0.93:
            cmds.append(CancelAll(inst, rng.randint(1, 6), now))
        elif r < 0.95:
            cmds.append(Expire(inst, now))
        elif r < 0.96:
            cmds.append(Halt(inst, now))
        elif r < 0.97:
            cmds.append(Resume(inst, now, rng.random() < 0.5))
        elif r < 0.98:
            cmds.append(StartAuction(inst, now))
        elif r < 0.99:
            cmds.append(Uncross(inst, now))
        else:
            cmds.append(SetReferencePrice(inst, rng.randint(98, 102), now))
    return cmds


def test_replay_gives_the_same_events() -> None:
    cmds = random_commands(7, 3000)
    runs = []
    for _ in range(2):
        e = engine_with_two_books()
        events = []
        for c in cmds:
            events.append(e.apply(c))
            e.check_invariants()
        runs.append((events, e.snapshot()))
    assert runs[0] == runs[1]
    assert sum(ev[0] == EventKind.TRADE for evs in runs[0][0] for ev in evs) > 100


def test_engine_snapshot_is_json_and_restores_midway() -> None:
    cmds = random_commands(11, 2000)
    a = engine_with_two_books()
    for c in cmds[:1000]:
        a.apply(c)
    snap = json.loads(json.dumps(a.snapshot()))  # keys become strings, values plain ints
    b = Engine.restore(snap)
    for c in cmds[1000:]:
        assert a.apply(c) == b.apply(c)
    assert a.snapshot() == b.snapshot()
    assert b.book(1).status in (Status.CONTINUOUS, Status.AUCTION, Status.HALTED)


def test_apply_rejects_non_commands() -> None:
    with pytest.raises(TypeError):
        Engine().apply(("submit",))  # type: ignore[arg-type]
