"""Property-based tests: random command sequences, every invariant checked after every command, and
the engine's trades and resting orders compared with a deliberately simple reference matcher."""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.engine import (
    STP,
    Book,
    BookConfig,
    CancelReason,
    EventKind,
    Order,
    OrderType,
    RejectReason,
    Side,
    Status,
    TimeInForce,
)

BUY, SELL = Side.BUY, Side.SELL
K = EventKind
R = RejectReason


# ---------------------------------------------------------------------------------------------
# The reference matcher: a list of resting orders, searched and sorted on every step. No levels,
# no lazy deletion, no fast paths; FOK and minimum quantity by trial and rollback.
# ---------------------------------------------------------------------------------------------


@dataclass
class ROrder:
    id: int
    acct: int
    side: int
    price: int
    qty: int
    exp: int
    stp: int
    post: bool
    arrival: int


@dataclass
class RefBook:
    cfg: BookConfig
    status: int = Status.CONTINUOUS
    resting: list[ROrder] = field(default_factory=list)
    arrival: int = 0
    ref: int = 0

    def __post_init__(self) -> None:
        self.ref = self.cfg.reference_price

    # rules ----------------------------------------------------------------------------------
    def band(self) -> tuple[float, float]:
        if self.cfg.band_bps is None:
            return (self.cfg.tick_size, math.inf)
        t = self.cfg.tick_size
        lo = math.ceil(self.ref * (10_000 - self.cfg.band_bps) / 10_000 / t) * t
        hi = math.floor(self.ref * (10_000 + self.cfg.band_bps) / 10_000 / t) * t
        return (max(lo, t), hi)

    def price_reason(self, price: int) -> int:
        lo, hi = self.band()
        if price <= 0:
            return R.INVALID_PRICE
        if price % self.cfg.tick_size:
            return R.INVALID_TICK
        if not lo <= price <= hi:
            return R.PRICE_OUTSIDE_BAND
        return 0

    def validate(self, o: Order, now: int) -> int:
        c = self.cfg
        if o.side not in (BUY, SELL):
            return R.INVALID_SIDE
        if o.tif not in (1, 2, 3, 4):
            return R.INVALID_TIF
        if o.type == OrderType.LIMIT:
            if r := self.price_reason(o.price):
                return r
        elif o.type == OrderType.MARKET:
            if o.tif not in (TimeInForce.IOC, TimeInForce.FOK):
                return R.INVALID_TIF
            if o.post_only:
                return R.INVALID_POST_ONLY
            if c.band_bps is None and c.market_protection_bps is None:
                return R.NO_MARKET_PROTECTION
        else:
            return R.INVALID_TYPE
        if o.quantity <= 0:
            return R.INVALID_QUANTITY
        if o.quantity % c.lot_size:
            return R.INVALID_LOT
        if o.quantity < c.min_order_qty:
            return R.BELOW_MIN_QUANTITY
        if o.quantity > c.max_order_qty:
            return R.ABOVE_MAX_QUANTITY
        if o.tif == TimeInForce.GTD:
            if o.expires_at <= now:
                return R.INVALID_EXPIRY
        elif o.expires_at:
            return R.INVALID_EXPIRY
        if o.post_only and o.tif in (TimeInForce.IOC, TimeInForce.FOK):
            return R.INVALID_POST_ONLY
        if o.min_quantity < 0 or o.min_quantity > o.quantity or (o.min_quantity and o.post_only):
            return R.INVALID_MIN_QUANTITY
        if o.stp not in (1, 2, 3, 4):
            return R.INVALID_STP
        if any(r.id == o.order_id for r in self.resting):
            return R.DUPLICATE_ORDER_ID
        if self.status == Status.HALTED:
            return R.HALTED
        if self.status == Status.AUCTION and (
            o.type != OrderType.LIMIT or o.tif in (TimeInForce.IOC, TimeInForce.FOK) or o.post_only or o.min_quantity
        ):
            return R.NOT_IN_AUCTION
        return 0

    # helpers --------------------------------------------------------------------------------
    def get(self, oid: int) -> ROrder | None:
        return next((r for r in self.resting if r.id == oid), None)

    def best(self, side: int) -> int | None:
        ps = [r.price for r in self.resting if r.side == side]
        if not ps:
            return None
        return max(ps) if side == BUY else min(ps)

    def crosses(self, side: int, limit: float) -> bool:
        opp = self.best(SELL if side == BUY else BUY)
        return opp is not None and (opp <= limit if side == BUY else opp >= limit)

    def rest(self, oid: int, acct: int, side: int, price: int, qty: int, exp: int, stp: int, post: bool) -> None:
        self.arrival += 1
        self.resting.append(ROrder(oid, acct, side, price, qty, exp, stp, post, self.arrival))

    def match(self, oid: int, acct: int, side: int, limit: float, qty: int, stp: int) -> tuple[list[tuple], int]:
        """Incoming order against the book; returns (trades, remaining)."""
        trades = []
        while qty:
            cands = [
                r
                for r in self.resting
                if r.side != side and (r.price <= limit if side == BUY else r.price >= limit)
            ]
            if not cands:
                break
            m = min(cands, key=lambda r: (r.price if side == BUY else -r.price, r.arrival))
            if m.acct == acct:
                if stp == STP.CANCEL_NEWEST:
                    qty = 0
                elif stp == STP.CANCEL_OLDEST:
                    self.resting.remove(m)
                elif stp == STP.CANCEL_BOTH:
                    self.resting.remove(m)
                    qty = 0
                else:
                    d = min(m.qty, qty)
                    m.qty -= d
                    qty -= d
                    if not m.qty:
                        self.resting.remove(m)
                continue
            q = min(m.qty, qty)
            trades.append((m.id, oid, m.price, q))
            m.qty -= q
            qty -= q
            if not m.qty:
                self.resting.remove(m)
        return trades, qty

    # commands -------------------------------------------------------------------------------
    def expire(self, now: int) -> None:
        self.resting = [r for r in self.resting if not (r.exp and r.exp <= now)]

    def submit(self, o: Order, now: int) -> tuple[bool, list[tuple]]:
        self.expire(now)
        if self.validate(o, now):
            return False, []
        if self.status == Status.AUCTION:
            self.rest(o.order_id, o.account_id, o.side, o.price, o.quantity, o.expires_at, o.stp, o.post_only)
            return True, []
        opp = self.best(SELL if o.side == BUY else BUY)
        if o.type == OrderType.MARKET:
            lo, hi = self.band()
            prot = self.cfg.market_protection_bps
            if opp is None:
                limit: float = 0
            elif o.side == BUY:
                limit = min(hi, opp + opp * prot // 10_000 if prot is not None else math.inf)
            else:
                limit = max(lo, opp - opp * prot // 10_000 if prot is not None else 0)
        else:
            limit = o.price
        if o.post_only and self.crosses(o.side, limit):
            return False, []
        need = o.quantity if o.tif == TimeInForce.FOK else o.min_quantity
        saved = copy.deepcopy(self.resting)
        trades, rem = self.match(o.order_id, o.account_id, o.side, limit, o.quantity, o.stp)
        if need and sum(t[3] for t in trades) < need:
            self.resting = saved
            return True, []
        if rem and o.type == OrderType.LIMIT and o.tif in (TimeInForce.GTC, TimeInForce.GTD):
            self.rest(o.order_id, o.account_id, o.side, o.price, rem, o.expires_at, o.stp, o.post_only)
        return True, trades

    def cancel(self, oid: int, now: int) -> None:
        self.expire(now)
        self.resting = [r for r in self.resting if r.id != oid]

    def cancel_all(self, acct: int, now: int) -> None:
        self.expire(now)
        self.resting = [r for r in self.resting if r.acct != acct]

    def amend(self, oid: int, now: int, price: int | None, qty: int | None) -> list[tuple]:
        self.expire(now)
        r = self.get(oid)
        if r is None or self.status == Status.HALTED:
            return []
        new_p = r.price if price is None else price
        new_q = r.qty if qty is None else qty
        if new_p != r.price and self.price_reason(new_p):
            return []
        if new_q <= 0 or new_q % self.cfg.lot_size or new_q > self.cfg.max_order_qty:
            return []
        if new_p == r.price and new_q == r.qty:
            return []
        if new_p == r.price and new_q < r.qty:
            r.qty = new_q
            return []
        cont = self.status == Status.CONTINUOUS
        if cont and r.post and self.crosses(r.side, new_p):
            return []
        self.resting.remove(r)
        trades: list[tuple] = []
        rem = new_q
        if cont:
            trades, rem = self.match(oid, r.acct, r.side, new_p, new_q, r.stp)
        if rem:
            self.rest(oid, r.acct, r.side, new_p, rem, r.exp, r.stp, r.post)
        return trades

    def uncross(self) -> list[tuple]:
        """Brute force: try every tick price between the extreme order prices."""
        trades: list[tuple] = []
        t = self.cfg.tick_size
        while True:
            bb, ba = self.best(BUY), self.best(SELL)
            if bb is None or ba is None or bb < ba:
                return trades
            prices = [r.price for r in self.resting]
            cands = set(range(min(prices) - t, max(prices) + 2 * t, t))
            cands |= {self.ref // t * t, -(-self.ref // t) * t}
            best_key = None
            for c in cands:
                if c <= 0:
                    continue
                b = sum(r.qty for r in self.resting if r.side == BUY and r.price >= c)
                s = sum(r.qty for r in self.resting if r.side == SELL and r.price <= c)
                if not min(b, s):
                    continue
                key = (min(b, s), -abs(b - s), -abs(c - self.ref), c)
                best_key = key if best_key is None or key > best_key else best_key
            assert best_key is not None
            p = best_key[3]
            while True:
                bids = sorted((r for r in self.resting if r.side == BUY and r.price >= p), key=lambda r: (-r.price, r.arrival))
                asks = sorted((r for r in self.resting if r.side == SELL and r.price <= p), key=lambda r: (r.price, r.arrival))
                if not bids or not asks:
                    break
                b, a = bids[0], asks[0]
                maker, taker = (b, a) if b.arrival < a.arrival else (a, b)
                if b.acct == a.acct:
                    d = min(b.qty, a.qty)
                    if taker.stp == STP.CANCEL_NEWEST:
                        taker.qty = 0
                    elif taker.stp == STP.CANCEL_OLDEST:
                        maker.qty = 0
                    elif taker.stp == STP.CANCEL_BOTH:
                        maker.qty = taker.qty = 0
                    else:
                        maker.qty -= d
                        taker.qty -= d
                else:
                    q = min(b.qty, a.qty)
                    trades.append((maker.id, taker.id, p, q))
                    b.qty -= q
                    a.qty -= q
                self.resting = [r for r in self.resting if r.qty]

    def depth(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        out = []
        for side in (BUY, SELL):
            agg: dict[int, int] = {}
            for r in self.resting:
                if r.side == side:
                    agg[r.price] = agg.get(r.price, 0) + r.qty
            out.append(sorted(agg.items(), reverse=side == BUY))
        return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Command generation
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    BookConfig(reference_price=100, band_bps=800, market_protection_bps=300),
    BookConfig(reference_price=1000, tick_size=5, lot_size=2, min_order_qty=2, max_order_qty=40, band_bps=500),
    BookConfig(reference_price=100, market_protection_bps=200),
    BookConfig(reference_price=100),  # no band, no protection: market orders are rejected
]


@st.composite
def orders(draw: Any, cfg: BookConfig) -> dict:
    t, lot = cfg.tick_size, cfg.lot_size
    price = cfg.reference_price + t * draw(st.integers(-4, 4))
    if draw(st.integers(0, 30)) == 0:
        price = draw(st.sampled_from([price + 1, 0, -t, cfg.reference_price * 2]))
    qty = lot * draw(st.integers(1, 8))
    if draw(st.integers(0, 30)) == 0:
        qty = draw(st.sampled_from([0, qty + 1, lot * 1000]))
    kind = draw(st.sampled_from(["gtc"] * 6 + ["gtd", "ioc", "fok", "market", "post", "minq"]))
    tif, otype, post, minq, exp_in = TimeInForce.GTC, OrderType.LIMIT, False, 0, 0
    if kind == "gtd":
        tif, exp_in = TimeInForce.GTD, draw(st.integers(0, 12))
    elif kind == "ioc":
        tif = TimeInForce.IOC
    elif kind == "fok":
        tif = TimeInForce.FOK
    elif kind == "market":
        otype, tif, price = OrderType.MARKET, draw(st.sampled_from([TimeInForce.IOC, TimeInForce.FOK])), 0
    elif kind == "post":
        post = True
    elif kind == "minq":
        minq = lot * draw(st.integers(1, 8))
        tif = draw(st.sampled_from([TimeInForce.GTC, TimeInForce.IOC]))
    return {
        "side": draw(st.sampled_from([BUY, SELL])),
        "acct": draw(st.integers(1, 4)),
        "price": price,
        "qty": qty,
        "type": otype,
        "tif": tif,
        "exp_in": exp_in,
        "post": post,
        "minq": minq,
        "stp": draw(st.sampled_from(list(STP))),
    }


@st.composite
def scenarios(draw: Any, auctions: bool = True) -> tuple[BookConfig, list[tuple]]:
    """A config and a list of ``(time_step, command)``. Cancels and amends name an order by how
    many orders back it was submitted (0 = the latest), so they mostly hit live orders."""
    cfg = draw(st.sampled_from(CONFIGS))
    kinds = ["submit"] * 10 + ["cancel"] * 3 + ["amend"] * 3 + ["cancel_all", "expire"]
    if auctions:
        kinds += ["halt", "resume", "resume_auction", "start_auction", "uncross", "uncross"]
    steps = []
    for _ in range(draw(st.integers(1, 80))):
        kind = draw(st.sampled_from(kinds))
        if kind == "submit":
            cmd: tuple = ("submit", draw(orders(cfg)))
        elif kind == "cancel":
            cmd = ("cancel", draw(st.integers(0, 8)))
        elif kind == "amend":
            cmd = (
                "amend",
                draw(st.integers(0, 8)),
                draw(st.one_of(st.none(), st.integers(-4, 4))),
                draw(st.one_of(st.none(), st.integers(1, 9))),
            )
        elif kind == "cancel_all":
            cmd = ("cancel_all", draw(st.integers(1, 4)))
        else:
            cmd = (kind,)
        steps.append((draw(st.integers(0, 3)), cmd))
    return cfg, steps


# ---------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------


class Checker:
    """Applies commands to the engine and the reference and checks everything after each one."""

    def __init__(self, cfg: BookConfig) -> None:
        self.book = Book(cfg)
        self.ref = RefBook(cfg)
        self.cfg = cfg
        self.now = 0
        self.next_id = 1
        self.seq = 0
        self.client: dict[tuple[int, int], int] = {}  # market-data copy built from BOOK events
        self.added: dict[int, int] = {}  # per order: quantity ever put in (accepted + raised)
        self.filled: dict[int, int] = {}
        self.removed: dict[int, int] = {}  # cancelled, reduced, expired, amended away
        self.accounts: dict[int, int] = {}
        self.prices: dict[int, int] = {}  # order's current limit price
        self.kinds: dict[int, Order] = {}

    def run(self, steps: list[tuple]) -> None:
        for dt, cmd in steps:
            self.now += dt
            self.step(cmd)

    def step(self, cmd: tuple) -> list:
        book, ref, now = self.book, self.ref, self.now
        name = cmd[0]
        before = {oid: (book.order(oid) or {}).get("remaining", 0) for oid in self.added}
        status_before = book.status
        order: Order | None = None
        ref_trades: list[tuple] = []
        if name == "submit":
            d = cmd[1]
            oid = self.next_id
            self.next_id += 1
            exp = now + d["exp_in"] if d["tif"] == TimeInForce.GTD else 0
            order = Order(oid, d["acct"], d["side"], d["price"], d["qty"], d["type"], d["tif"], exp, d["post"], d["minq"], d["stp"])
            ev = book.submit(order, now)
            accepted, ref_trades = ref.submit(order, now)
            assert any(e[0] == K.ACCEPTED for e in ev) == accepted, (order, ev)
            self.accounts[oid] = d["acct"]
            self.prices[oid] = d["price"]
            self.kinds[oid] = order
        elif name == "cancel":
            oid = self.next_id - 1 - cmd[1]
            ev = book.cancel(oid, now)
            ref.cancel(oid, now)
        elif name == "amend":
            oid, dp, q = self.next_id - 1 - cmd[1], cmd[2], cmd[3]
            rec = book.order(oid)
            price = None if dp is None or rec is None else rec["price"] + dp * self.cfg.tick_size
            qty = None if q is None else q * self.cfg.lot_size
            ev = book.amend(oid, now, price, qty)
            ref_trades = ref.amend(oid, now, price, qty)
        elif name == "cancel_all":
            ev = book.cancel_all(cmd[1], now)
            ref.cancel_all(cmd[1], now)
        elif name == "expire":
            ev = book.expire(now)
            ref.expire(now)
        elif name == "halt":
            ev = book.halt(now)
            ref.expire(now)
            ref.status = Status.HALTED
        elif name in ("resume", "resume_auction"):
            ev = book.resume(now, auction=name == "resume_auction")
            ref.expire(now)
            if name == "resume_auction":
                ref.status = Status.AUCTION
            else:
                if ref.status != Status.CONTINUOUS:
                    ref_trades = ref.uncross()
                ref.status = Status.CONTINUOUS
        elif name == "start_auction":
            ev = book.start_auction(now)
            ref.expire(now)
            ref.status = Status.AUCTION
        elif name == "uncross":
            ev = book.uncross(now)
            ref.expire(now)
            if ref.status == Status.AUCTION:
                ref_trades = ref.uncross()
                ref.status = Status.CONTINUOUS
        else:  # pragma: no cover
            raise AssertionError(name)
        self.check(cmd, order, ev, before, status_before, ref_trades)
        return ev

    def check(self, cmd, order, ev, before, status_before, ref_trades) -> None:  # noqa: ANN001
        book = self.book
        book.check_invariants()
        trades = [e for e in ev if e[0] == K.TRADE]
        auction_trades = status_before != Status.CONTINUOUS and cmd[0] in ("uncross", "resume")

        # 1. same trades as the reference matcher, and the same resting orders
        assert [(t[1], t[2], t[3], t[4]) for t in trades] == ref_trades, (cmd, ev, ref_trades)
        ours = sorted((r[0], r[4]) for r in book.snapshot()["orders"])
        theirs = sorted((r.id, r.qty) for r in self.ref.resting)
        assert ours == theirs, (cmd, ev)
        assert book.depth() == tuple(self.ref.depth())

        # 2. book events: consecutive sequence numbers; a client copy equals the book
        for e in ev:
            if e[0] == K.BOOK:
                assert e[4] == self.seq + 1
                self.seq = e[4]
                if e[3]:
                    self.client[(e[1], e[2])] = e[3]
                else:
                    self.client.pop((e[1], e[2]), None)
        bids, asks = book.depth()
        assert sorted(self.client.items()) == sorted([((BUY, p), q) for p, q in bids] + [((SELL, p), q) for p, q in asks])

        # 3. never crossed at rest in continuous trading (also in check_invariants)
        if book.status == Status.CONTINUOUS and bids and asks:
            assert bids[0][0] < asks[0][0]

        # 4. every trade: no self-trade, at the maker's price (continuous) or inside both limits
        for t in trades:
            maker, taker, price, qty = t[1], t[2], t[3], t[4]
            assert self.accounts[maker] != self.accounts[taker] and t[8] != t[9]
            assert qty > 0
            if auction_trades:
                buy, sell = (maker, taker) if t[5] == SELL else (taker, maker)
                assert self.prices[sell] <= price <= self.prices[buy]
            else:
                assert price == self.prices[maker], (t, self.prices[maker])

        # 5. conservation per order: added == filled + resting + removed
        if order is not None and any(e[0] == K.ACCEPTED for e in ev):
            self.added[order.order_id] = order.quantity
        for e in ev:
            k = e[0]
            if k == K.TRADE:
                self.filled[e[1]] = self.filled.get(e[1], 0) + e[4]
                self.filled[e[2]] = self.filled.get(e[2], 0) + e[4]
            elif k in (K.CANCELLED, K.EXPIRED, K.REDUCED):
                self.removed[e[1]] = self.removed.get(e[1], 0) + e[2]
            elif k == K.AMENDED:
                oid, new_p, new_q = e[1], e[2], e[3]
                old = before[oid]
                if new_q > old:
                    self.added[oid] += new_q - old
                else:
                    self.removed[oid] = self.removed.get(oid, 0) + old - new_q
                self.prices[oid] = new_p
        for oid, added in self.added.items():
            rec = book.order(oid)
            resting = rec["remaining"] if rec else 0
            assert added == self.filled.get(oid, 0) + resting + self.removed.get(oid, 0), oid

        # 6. order-type promises for a new order
        if order is not None:
            oid = order.order_id
            mine_filled = sum(t[4] for t in trades if oid in (t[1], t[2]))
            if order.tif in (TimeInForce.IOC, TimeInForce.FOK) or order.type == OrderType.MARKET:
                assert oid not in book, "IOC/FOK/market order rests"
            if order.tif == TimeInForce.FOK:
                assert mine_filled in (0, order.quantity)
            if order.post_only:
                assert not any(t[2] == oid for t in trades), "post-only took"
            if order.min_quantity and mine_filled:
                assert mine_filled >= order.min_quantity
        # post-only orders are never the taker, amends included
        for t in trades:
            o = self.kinds.get(t[2])
            if o is not None and o.post_only and not auction_trades:
                raise AssertionError("post-only order took liquidity")

        # 7. checksum agrees with one recomputed from the client copy
        cb = sorted(((p, q) for (s, p), q in self.client.items() if s == BUY), reverse=True)[:10]
        ca = sorted((p, q) for (s, p), q in self.client.items() if s == SELL)[:10]
        parts = []
        for i in range(max(len(cb), len(ca))):
            if i < len(cb):
                parts.append(f"{cb[i][0]}:{cb[i][1]}")
            if i < len(ca):
                parts.append(f"{ca[i][0]}:{ca[i][1]}")
        assert book.checksum() == zlib.crc32(":".join(parts).encode())


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(auctions=False))
def test_continuous_trading_matches_reference_and_keeps_invariants(scenario: tuple) -> None:
    cfg, steps = scenario
    Checker(cfg).run(steps)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(auctions=True))
def test_with_halts_and_auctions_matches_reference_and_keeps_invariants(scenario: tuple) -> None:
    cfg, steps = scenario
    Checker(cfg).run(steps)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(auctions=True), st.integers(0, 59))
def test_snapshot_restore_gives_identical_events(scenario: tuple, cut: int) -> None:
    """Run a prefix, snapshot, restore; the rest of the commands give the same events in both."""
    cfg, steps = scenario
    cut = min(cut, len(steps))
    a = Checker(cfg)
    a.run(steps[:cut])
    b = Checker(cfg)
    b.book = Book.restore(a.book.snapshot())
    assert b.book.snapshot() == a.book.snapshot()
    b.ref, b.now, b.next_id, b.seq = copy.deepcopy(a.ref), a.now, a.next_id, a.seq
    b.client, b.added, b.filled = dict(a.client), dict(a.added), dict(a.filled)
    b.removed, b.accounts, b.prices, b.kinds = dict(a.removed), dict(a.accounts), dict(a.prices), dict(a.kinds)
    for dt, cmd in steps[cut:]:
        a.now += dt
        b.now += dt
        assert a.step(cmd) == b.step(cmd)
    assert a.book.snapshot() == b.book.snapshot()


def test_reason_codes_are_distinct() -> None:
    assert len({r.value for r in RejectReason}) == len(RejectReason)
    assert len({r.value for r in CancelReason}) == len(CancelReason)
