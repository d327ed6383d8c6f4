"""The routing problem, with no Django: offers (one instrument's ask queue), a demand, and an integer program
over lots solved with scipy's milp (HiGHS). The API, the tests' brute force and bench/routing_bench.py all
call `solve` here.

Why the queue matters: a child order is an IOC buy at a limit price, and the book fills it in price-time
priority. So on one instrument a plan can only take a *prefix* of the ask queue: the first n lots. An ask
that breaks the demand's constraints (a foreign chip, a far data centre, the buyer's own ask) blocks every
ask behind it; an IOC cannot jump it. Each offer's usable queue is therefore the prefix up to the first
ineligible segment or the first price above the cap, and when the objective's marginal score per lot falls
somewhere along that prefix (a cheaper but dirtier level ahead of a clean one), binaries force the levels to
fill in order.

Two exact methods: the cheapest plan spread over windows is a linear programme (score per lot never falls
along a queue) and goes to HiGHS; every other case (lowest carbon, weighted, one window, minimum order sizes)
goes first to a dynamic programme over the quantity (`_dp_plan`), after Lagrangian fixing leaves a few lot
counts per offer (HiGHS took seconds there, branching on the binaries). The programme ignores the total cap,
so when its plan breaks the cap, or the table would be too large, the integer programme decides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import reduce

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from common.money import format_cny

CHEAPEST = "cheapest"
LOWEST_CARBON = "lowest_carbon"
WEIGHTED = "weighted"
OBJECTIVES = (CHEAPEST, LOWEST_CARBON, WEIGHTED)
# HiGHS stops when within this share of the best bound (its default, 1e-4, could leave 100 fen on a
# 10,000 CNY plan); the tests compare with brute force.
MIP_REL_GAP = 1e-7
CARBON_TIE_G_PER_FEN = 1e-6  # nosemgrep: float-near-money -- an objective weight, not an amount


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive asks in one instrument's queue at one price from data centres with the same figures."""

    price_fen_per_lot: int
    lots: int
    carbon_g_per_lot: float
    energy_kwh_per_lot: float
    latency_ms: float | None  # to the demand's metro; None: not measured
    chip_class: str = "training"
    domestic: bool = False
    renewable_share: float = 0.0  # percent
    pue: float = 1.0
    security_level: int = 3
    own: bool = False  # the buyer's own ask: self-trade prevention would cancel the child
    data_centres: tuple[int, ...] = ()


@dataclass(slots=True)
class Offer:
    instrument_id: int
    window: tuple[int, int]  # delivery start and end, epoch seconds
    lot_micro: int  # standard units per lot, in millionths
    segments: list[Segment]
    min_lots: int = 1
    max_lots: int = 100_000
    book_seq: int = 0
    label: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    units_micro: int  # required standard units, in millionths
    earliest_start: int  # epoch seconds
    deadline: int
    single_window: bool = False
    chip_classes: tuple[str, ...] = ()  # empty: any
    domestic_only: bool = False
    max_latency_ms: float | None = None
    latency_metro: str = "shanghai"
    min_renewable_share: float | None = None
    max_pue: float | None = None
    min_security_level: int | None = None
    max_price_fen_per_unit: Fraction | None = None  # per standard unit
    max_total_fen: int | None = None
    objective: str = CHEAPEST
    fen_per_g_co2: float = 0.0  # weighted: yuan per kg CO2 / 10; nosemgrep: float-near-money -- an objective weight, not an amount

    def price_ok(self, offer: Offer, seg: Segment) -> bool:
        if self.max_price_fen_per_unit is None:
            return True
        return Fraction(seg.price_fen_per_lot * 1_000_000, offer.lot_micro) <= self.max_price_fen_per_unit


@dataclass(slots=True)
class Take:
    offer: Offer
    lots: int
    per_segment: list[int]  # lots from each segment of the usable prefix, a prefix fill

    @property
    def limit_fen_per_lot(self) -> int:
        return max(s.price_fen_per_lot for s, n in zip(self.offer.segments, self.per_segment, strict=False) if n)

    @property
    def cost_fen(self) -> int:
        return sum(s.price_fen_per_lot * n for s, n in zip(self.offer.segments, self.per_segment, strict=False))

    @property
    def carbon_g(self) -> float:
        return sum(s.carbon_g_per_lot * n for s, n in zip(self.offer.segments, self.per_segment, strict=False))

    @property
    def energy_kwh(self) -> float:
        return sum(s.energy_kwh_per_lot * n for s, n in zip(self.offer.segments, self.per_segment, strict=False))

    @property
    def units_micro(self) -> int:
        return self.lots * self.offer.lot_micro

    def latency_max(self) -> float | None:
        values = [s.latency_ms for s, n in zip(self.offer.segments, self.per_segment, strict=False) if n and s.latency_ms is not None]
        return max(values) if values else None


@dataclass(slots=True)
class Result:
    status: str  # optimal | feasible (time limit) | infeasible
    takes: list[Take] = field(default_factory=list)
    objective: float | None = None
    binding: dict | None = None
    alternative: Take | None = None
    variables: int = 0
    binaries: int = 0
    solve_ms: float = 0.0


# --- eligibility -------------------------------------------------------------------------------------------

def segment_failures(spec: Spec, seg: Segment) -> list[str]:
    """The demand constraints a segment breaks, by name (empty: eligible)."""
    bad = []
    if spec.chip_classes and seg.chip_class not in spec.chip_classes:
        bad.append("chip_classes")
    if spec.domestic_only and not seg.domestic:
        bad.append("domestic_only")
    if spec.min_security_level is not None and seg.security_level < spec.min_security_level:
        bad.append("min_security_level")
    if spec.max_pue is not None and seg.pue > spec.max_pue:
        bad.append("max_pue")
    if spec.min_renewable_share is not None and seg.renewable_share < spec.min_renewable_share:
        bad.append("min_renewable_share")
    if spec.max_latency_ms is not None and (seg.latency_ms is None or seg.latency_ms > spec.max_latency_ms):
        bad.append("max_latency_ms")
    if seg.own:
        bad.append("own_orders")
    return bad


def in_window(spec: Spec, offer: Offer) -> bool:
    return offer.window[0] >= spec.earliest_start and offer.window[1] <= spec.deadline


def usable_prefix(spec: Spec, offer: Offer, checks: tuple[str, ...] | None = None) -> list[Segment]:
    """The segments an IOC can take in queue order before hitting an ineligible or too dear ask."""
    out = []
    for seg in offer.segments:
        failures = segment_failures(spec, seg)
        if checks is not None:
            failures = [f for f in failures if f in checks]
        if failures:
            break
        if (checks is None or "max_price" in checks) and not spec.price_ok(offer, seg):
            break
        out.append(seg)
    return out


def _prefix_lots(segments: list[Segment], offer: Offer) -> int:
    return min(sum(s.lots for s in segments), offer.max_lots)


def prefix_fill(offer: Offer, segments: list[Segment], lots: int) -> Take:
    per, left = [], lots
    for seg in segments:
        n = min(seg.lots, left)
        per.append(n)
        left -= n
    per += [0] * (len(offer.segments) - len(per))
    return Take(offer=offer, lots=lots, per_segment=per)


def score(spec: Spec, cost_fen: float, carbon_g: float) -> float:
    """The MILP's objective (HiGHS works in floats); a plan's cost itself is summed in integer fen."""
    if spec.objective == CHEAPEST:
        return float(cost_fen)  # nosemgrep: float-near-money -- objective score
    if spec.objective == LOWEST_CARBON:
        # Cost breaks ties between equally clean plans: one CNY weighs as much as 0.0001 g of CO2.
        return float(carbon_g) + CARBON_TIE_G_PER_FEN * float(cost_fen)  # nosemgrep: float-near-money -- objective score
    return float(cost_fen) + spec.fen_per_g_co2 * float(carbon_g)  # nosemgrep: float-near-money -- objective score


def plan_score(spec: Spec, takes: list[Take]) -> float:
    return score(spec, sum(t.cost_fen for t in takes), sum(t.carbon_g for t in takes))


def takes_violations(spec: Spec, takes: list[Take]) -> list[str]:
    """Every way a plan breaks the demand (empty: it is valid). Exact integer arithmetic; used after each
    solve and by the tests."""
    bad = []
    windows = set()
    for t in takes:
        if t.lots <= 0:
            continue
        o = t.offer
        windows.add(o.window)
        if not in_window(spec, o):
            bad.append(f"{o.label or o.instrument_id}: window outside the demand's")
        if not o.min_lots <= t.lots <= o.max_lots:
            bad.append(f"{o.label or o.instrument_id}: {t.lots} lots outside the order size limits")
        usable = usable_prefix(spec, o)
        if t.per_segment != prefix_fill(o, usable, t.lots).per_segment or t.lots > sum(s.lots for s in usable):
            bad.append(f"{o.label or o.instrument_id}: not a prefix of the eligible queue")
        for seg, n in zip(o.segments, t.per_segment, strict=False):
            if n and (segment_failures(spec, seg) or not spec.price_ok(o, seg)):
                bad.append(f"{o.label or o.instrument_id}: takes an ineligible or too dear ask")
    if spec.single_window and len(windows) > 1:
        bad.append("more than one window")
    if sum(t.units_micro for t in takes) < spec.units_micro:
        bad.append("short of the quantity")
    if spec.max_total_fen is not None and sum(t.cost_fen for t in takes) > spec.max_total_fen:
        bad.append("above the total price cap")
    return bad


# --- the integer program -----------------------------------------------------------------------------------

def solve(spec: Spec, offers: list[Offer], *, time_limit: float = 10.0) -> Result:
    """The optimal allocation of lots over the offers' usable prefixes, or the binding constraint named."""
    import time

    started = time.perf_counter()
    cands = []  # (offer, usable segments, available lots)
    for o in offers:
        if not in_window(spec, o):
            continue
        segs = usable_prefix(spec, o)
        avail = _prefix_lots(segs, o)
        if avail >= o.min_lots:
            cands.append((o, segs, avail))
    result = Result(status="infeasible")
    result.alternative = best_single(spec, cands)
    cands = _prune(spec, cands)
    if not cands:
        result.binding = diagnose(spec, offers)
        result.solve_ms = (time.perf_counter() - started) * 1000
        return result

    unit_gcd = reduce(math.gcd, [o.lot_micro for o, _, _ in cands])
    need = -(-spec.units_micro // unit_gcd)

    if spec.objective != CHEAPEST or spec.single_window or any(o.min_lots > 1 for o, _, _ in cands):
        takes = _dp_plan(spec, cands, unit_gcd, need)  # None: too big for the table, or the total cap binds
        if takes is not None:
            return _finish(spec, result, takes, "optimal", started)

    # Columns: x per (offer, segment) kept; z per ordering link; u per offer with min_lots > 1; w per window.
    cols_obj: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    integrality: list[int] = []
    rows: list[tuple[list[int], list[float], float, float]] = []

    def col(obj: float, upper: float) -> int:
        cols_obj.append(obj)
        lo.append(0.0)
        hi.append(upper)
        integrality.append(1)
        return len(cols_obj) - 1

    xcols: list[list[int]] = []
    units_row: tuple[list[int], list[float]] = ([], [])
    cost_row: tuple[list[int], list[float]] = ([], [])
    offer_cols: list[tuple[list[int], int]] = []
    binaries = 0
    for o, segs, avail in cands:
        ids = []
        left = avail
        for seg in segs:
            n = min(seg.lots, left)
            if n <= 0:
                break
            left -= n
            ids.append(col(score(spec, seg.price_fen_per_lot, seg.carbon_g_per_lot), n))
            units_row[0].append(ids[-1])
            units_row[1].append(o.lot_micro // unit_gcd)
            cost_row[0].append(ids[-1])
            cost_row[1].append(float(seg.price_fen_per_lot))  # nosemgrep: float-near-money -- MILP row; plans are re-checked against the cap in integer fen
        xcols.append(ids)
        marg = [cols_obj[i] for i in ids]
        # Runs of levels along which the score per lot does not fall fill in queue order by themselves (an
        # earlier lot is never worse); where it falls, the next run may start only once the one before is
        # full (z = 1). Cost never falls along the queue, so the total cap cannot undo this.
        runs: list[list[int]] = [[ids[0]]]
        for k in range(1, len(ids)):
            if marg[k] < marg[k - 1] - 1e-9:
                runs.append([])
            runs[-1].append(ids[k])
        for a, b in zip(runs, runs[1:], strict=False):
            z = col(0.0, 1)
            binaries += 1
            cap_a, cap_b = sum(hi[i] for i in a), sum(hi[i] for i in b)
            rows.append((a + [z], [1.0] * len(a) + [-cap_a], 0.0, np.inf))  # run a full when z = 1
            rows.append((b + [z], [1.0] * len(b) + [-cap_b], -np.inf, 0.0))  # run b empty when z = 0
        if o.min_lots > 1:
            u = col(0.0, 1)
            binaries += 1
            rows.append((ids + [u], [1.0] * len(ids) + [-float(o.min_lots)], 0.0, np.inf))
            rows.append((ids + [u], [1.0] * len(ids) + [-float(avail)], -np.inf, 0.0))
        offer_cols.append((ids, avail))
    rows.append((units_row[0], units_row[1], float(need), np.inf))
    if spec.max_total_fen is not None:
        rows.append((cost_row[0], cost_row[1], -np.inf, float(spec.max_total_fen)))  # nosemgrep: float-near-money -- MILP row; plans are re-checked against the cap in integer fen
    if spec.single_window:
        windows = sorted({o.window for o, _, _ in cands})
        wcol = {w: col(0.0, 1) for w in windows}
        binaries += len(windows)
        rows.append((list(wcol.values()), [1.0] * len(windows), 1.0, 1.0))
        for (o, _, _), (ids, avail) in zip(cands, offer_cols, strict=False):
            rows.append((ids + [wcol[o.window]], [1.0] * len(ids) + [-float(avail)], -np.inf, 0.0))

    r_idx, c_idx, vals, rlo, rhi = [], [], [], [], []
    for r, (cs, vs, a, b) in enumerate(rows):
        r_idx += [r] * len(cs)
        c_idx += cs
        vals += vs
        rlo.append(a)
        rhi.append(b)
    matrix = coo_array((vals, (r_idx, c_idx)), shape=(len(rows), len(cols_obj))).tocsr()
    bounds = Bounds(np.array(lo), np.array(hi))
    options = {"time_limit": time_limit, "mip_rel_gap": MIP_REL_GAP}
    res = milp(c=np.array(cols_obj), integrality=np.array(integrality), bounds=bounds,
               constraints=LinearConstraint(matrix, np.array(rlo), np.array(rhi)), options=options)
    result.variables = len(cols_obj)
    result.binaries = binaries
    if res.x is None:
        result.binding = diagnose(spec, offers)
        result.solve_ms = (time.perf_counter() - started) * 1000
        return result
    takes = []
    for (o, segs, _), ids in zip(cands, xcols, strict=False):
        lots = int(sum(round(res.x[i]) for i in ids))
        if lots:
            takes.append(prefix_fill(o, segs, lots))
    return _finish(spec, result, takes, "optimal" if res.status == 0 else "feasible (time limit)", started)


def _finish(spec: Spec, result: Result, takes: list[Take], status: str, started: float) -> Result:
    import time

    takes = _trim(spec, takes)
    violations = takes_violations(spec, takes)
    if violations:  # a solver tolerance let something through: refuse rather than quote a bad plan
        raise AssertionError(f"solver plan violates the demand: {violations}")
    result.status = status
    result.takes = sorted(takes, key=lambda t: (t.offer.window, t.offer.instrument_id))
    result.objective = plan_score(spec, takes)
    result.solve_ms = (time.perf_counter() - started) * 1000
    return result


# Largest table the dynamic programme fills (cells: quantity steps x lots tried, summed over offers).
DP_MAX_CELLS = 60_000_000
DP_MAX_NEED = 200_000


def _dp_plan(spec: Spec, cands: list[tuple[Offer, list[Segment], int]], unit_gcd: int, need: int) -> list[Take] | None:
    """The exact optimum by dynamic programming over the quantity, for queues whose score per lot is not
    monotone (lowest carbon, weighted) or when a window must be chosen: best[q] = the lowest score of a plan
    covering q quantity steps (q = need stands for "need or more") from the offers so far; each offer adds
    n lots (0 or min_lots..available, a prefix of its queue) at its cumulative score f(n). Separable, so the
    order of offers does not matter; each offer costs one vectorised pass over (quantity x lots). Cheaper
    than the integer programme wherever cleaner levels sit behind dirtier ones (there, binaries made HiGHS
    branch for seconds). Returns None when the table would be too large or the plan found breaks the total
    price cap (which the table does not track); the integer programme then decides."""
    if need > DP_MAX_NEED:
        return None
    groups: dict = {}
    for c in cands:
        groups.setdefault(c[0].window if spec.single_window else None, []).append(c)
    if sum((need + c[2] * (c[0].lot_micro // unit_gcd) + 1) * (c[2] + 1) for c in cands) > DP_MAX_CELLS:
        return None
    best_takes, best_score = None, math.inf
    for group in groups.values():
        takes = _dp_group(spec, group, unit_gcd, need)
        if takes is None:
            continue
        s = plan_score(spec, takes)
        if s < best_score:
            best_takes, best_score = takes, s
    if best_takes is None:
        return None  # nothing covers the quantity: the integer programme names it infeasible the usual way
    if spec.max_total_fen is not None and sum(t.cost_fen for t in best_takes) > spec.max_total_fen:
        return None
    return best_takes


def _dp_group(spec: Spec, group: list[tuple[Offer, list[Segment], int]], unit_gcd: int, need: int) -> list[Take] | None:
    """One window group's optimum. First a Lagrangian bound: with lam the score per unit of the envelope
    piece where the relaxation covers the quantity, any plan scores at least LB = sum over offers of
    min_n g(n) + lam * quantity, where g(n) = f(n) - lam * units(n); so a plan taking n lots on an offer
    scores at least LB + g(n) - min g, and no n for which that exceeds a feasible plan's score (UB) can be
    in an optimal plan (exact: valid for any lam >= 0). Usually one or a few n survive per offer; offers
    left with one are fixed, and the table runs over the rest."""
    inf = np.inf
    fs = []
    for o, segs, avail in group:
        f = np.empty(avail + 1)
        f[0] = 0.0
        k = 1
        for seg in segs:
            n = min(seg.lots, avail + 1 - k)
            if n <= 0:
                break
            f[k:k + n] = f[k - 1] + score(spec, seg.price_fen_per_lot, seg.carbon_g_per_lot) * np.arange(1, n + 1)
            k += n
        if o.min_lots > 1:
            f[1:o.min_lots] = inf
        fs.append(f)
    pieces = sorted(piece for o, segs, avail in group for piece in _envelope(spec, o, segs, avail))
    covered, lam = 0, 0.0
    for per_unit, units in pieces:
        lam = per_unit
        covered += units
        if covered >= spec.units_micro:
            break
    else:
        return None  # the group cannot cover the quantity
    lam = max(lam, 0.0)
    lower = lam * spec.units_micro
    reduced = []
    for (o, _, avail), f in zip(group, fs, strict=True):
        g = f - lam * o.lot_micro * np.arange(avail + 1)
        m = float(np.min(g))
        lower += m
        reduced.append(g - m)
    upper = _upper_bound(spec, group, fs)
    tolerance = 1e-9 * max(1.0, abs(upper)) + 1e-7
    # Try a narrow margin first: a plan found within it that scores at most LB + margin is optimal (any plan
    # outside scores more); else its score is a better UB, and the margin widens (at UB - LB it is exact).
    target = lower + (upper - lower) / 32
    while True:
        takes, value = _dp_restricted(group, fs, reduced, target - lower + tolerance, need, unit_gcd)
        if takes is not None and value <= target + tolerance:
            return takes
        if takes is not None:
            upper = min(upper, value)
        if target >= upper:
            return takes
        target = min(upper, lower + 4 * (target - lower))


def _dp_restricted(group: list[tuple[Offer, list[Segment], int]], fs: list[np.ndarray], reduced: list[np.ndarray], slack: float,
                   need: int, unit_gcd: int) -> tuple[list[Take] | None, float]:
    """The best plan taking on each offer only lot counts whose reduced score is within `slack`."""
    inf = np.inf
    fixed_steps, fixed_score, fixed, free = 0, 0.0, [], []
    for (o, segs, _), f, r in zip(group, fs, reduced, strict=True):
        allowed = np.flatnonzero(r <= slack)
        if len(allowed) == 1:
            n = int(allowed[0])
            fixed.append((o, segs, n))
            fixed_steps += n * (o.lot_micro // unit_gcd)
            fixed_score += float(f[n])
        else:
            free.append((o, segs, f, allowed))
    rest = max(need - fixed_steps, 0)
    best = np.full(rest + 1, inf)
    best[0] = 0.0
    trail = []
    for o, _, f, allowed in free:
        step = o.lot_micro // unit_gcd
        new = np.full(rest + 1, inf)
        chosen = np.zeros(rest + 1, dtype=np.int64)
        prev = np.zeros(rest + 1, dtype=np.int64)
        for n in allowed.tolist():
            shift = n * step
            if shift >= rest:  # every state reaches the need: the cheapest one
                src = int(np.argmin(best))
                value = best[src] + f[n]
                if value < new[rest]:
                    new[rest], chosen[rest], prev[rest] = value, n, src
                continue
            value = best[:rest + 1 - shift] + f[n]
            better = value < new[shift:]
            new[shift:][better] = value[better]
            chosen[shift:][better] = n
            prev[shift:][better] = np.flatnonzero(better)
            if shift == 0:
                continue
            # states that overshoot the need collapse into the last one
            src = rest + 1 - shift + int(np.argmin(best[rest + 1 - shift:]))
            value = best[src] + f[n]
            if value < new[rest]:
                new[rest], chosen[rest], prev[rest] = value, n, src
        trail.append((chosen, prev))
        best = new
    if not np.isfinite(best[rest]):
        return None, inf
    state, takes = rest, [prefix_fill(o, segs, n) for o, segs, n in fixed if n]
    for (o, segs, _, _), (chosen, prev) in zip(reversed(free), reversed(trail), strict=True):
        n = int(chosen[state])
        if n:
            takes.append(prefix_fill(o, segs, n))
        state = int(prev[state])
    return takes, float(best[rest]) + fixed_score


def _upper_bound(spec: Spec, group: list[tuple[Offer, list[Segment], int]], fs: list[np.ndarray]) -> float:
    """The score of some plan covering the quantity (no total cap): the better of the greedy plans."""
    uncapped = dataclasses.replace(spec, max_total_fen=None)
    found = [v for v in (_greedy_group(uncapped, group, False), _greedy_group(uncapped, group, True)) if v is not None] \
        if all(o.min_lots <= 1 for o, _, _ in group) else []
    if not found:  # everything on offer
        found.append(float(sum(f[-1] for f in fs)))
    return min(found)


def _greedy_bound(spec: Spec, cands: list[tuple[Offer, list[Segment], int]]) -> float | None:
    """The score of a feasible plan found greedily, or None: lots taken by score per unit along each queue,
    level by level and (better where a dirty level hides a clean one) along each queue's convex envelope;
    the better of the two per window group."""
    if any(o.min_lots > 1 for o, _, _ in cands):
        return None
    groups: dict = {}
    for c in cands:
        groups.setdefault(c[0].window if spec.single_window else None, []).append(c)
    best = None
    for group in groups.values():
        for hull in (False, True):
            total = _greedy_group(spec, group, hull)
            if total is not None and (best is None or total < best):
                best = total
    return best


def _greedy_group(spec: Spec, group: list[tuple[Offer, list[Segment], int]], hull: bool) -> float | None:
    import heapq

    breaks = []  # per offer: [(score per unit, lots at the end of the piece)]
    for o, segs, avail in group:
        if hull:
            pieces, end = [], 0
            for per_unit, units in _envelope(spec, o, segs, avail):
                end += units // o.lot_micro
                pieces.append((per_unit, end))
        else:
            pieces, end = [], 0
            for seg in segs:
                end = min(end + seg.lots, avail)
                pieces.append((score(spec, seg.price_fen_per_lot, seg.carbon_g_per_lot) / o.lot_micro, end))
                if end >= avail:
                    break
        breaks.append(pieces)
    heap = [(pieces[0][0], j, 0) for j, pieces in enumerate(breaks) if pieces]
    heapq.heapify(heap)
    left, taken = spec.units_micro, [0] * len(group)
    while left > 0 and heap:
        _, j, k = heapq.heappop(heap)
        o = group[j][0]
        end = breaks[j][k][1]
        n = min(end - taken[j], -(-left // o.lot_micro))
        taken[j] += n
        left -= n * o.lot_micro
        if taken[j] == end and k + 1 < len(breaks[j]):
            heapq.heappush(heap, (breaks[j][k + 1][0], j, k + 1))
    if left > 0:
        return None
    takes = [prefix_fill(o, segs, n) for (o, segs, _), n in zip(group, taken, strict=True) if n]
    if spec.max_total_fen is not None and sum(t.cost_fen for t in takes) > spec.max_total_fen:
        return None
    return plan_score(spec, takes)


def _prune(spec: Spec, cands: list[tuple[Offer, list[Segment], int]]) -> list[tuple[Offer, list[Segment], int]]:
    """Cut each queue where no optimal plan can reach: a plan using segment s takes the whole queue before
    it, and still needs the rest of the quantity, which costs at least the fractional cheapest fill of all
    lots (a relaxation). When that lower bound exceeds a feasible plan's score, s and every level behind it
    are dropped. Exact: nothing an optimal plan uses is ever cut (tests compare with brute force)."""
    bound = _greedy_bound(spec, cands)
    if bound is None:
        return cands
    if spec.single_window:  # the rest of the quantity must come from the same window: bound per window
        groups: dict = {}
        for c in cands:
            groups.setdefault(c[0].window, []).append(c)
        return [c for group in groups.values() for c in _prune_group(spec, group, bound)]
    return _prune_group(spec, cands, bound)


def _envelope(spec: Spec, o: Offer, segs: list[Segment], avail: int) -> list[tuple[float, int]]:
    """The lower convex envelope of one queue's cumulative score, as (score per unit, units) pieces: taking
    lots fractionally along it never costs more than any prefix fill, so it is a valid relaxation that,
    unlike single levels, does not pretend a clean level can be bought without the dirty ones before it."""
    points = [(0, 0.0)]
    lots = 0
    for seg in segs:
        n = min(seg.lots, avail - lots)
        if n <= 0:
            break
        lots += n
        points.append((lots, points[-1][1] + n * score(spec, seg.price_fen_per_lot, seg.carbon_g_per_lot)))
    hull: list[tuple[int, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] is on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return [((b[1] - a[1]) / ((b[0] - a[0]) * o.lot_micro), (b[0] - a[0]) * o.lot_micro) for a, b in zip(hull, hull[1:], strict=False)]


def _prune_group(spec: Spec, cands: list[tuple[Offer, list[Segment], int]], bound: float) -> list[tuple[Offer, list[Segment], int]]:
    pieces = sorted(piece for o, segs, avail in cands for piece in _envelope(spec, o, segs, avail))
    per_unit = np.array([p[0] for p in pieces])
    units = np.cumsum([p[1] for p in pieces], dtype=float)
    scores = np.concatenate(([0.0], np.cumsum(per_unit * np.array([p[1] for p in pieces], dtype=float))))
    units0 = np.concatenate(([0.0], units))

    def fractional(need: float, m: float) -> float:
        """Cheapest fractional fill of `need` units from every queue's envelope, plus unlimited units at m
        per unit (standing in for the rest of the queue being bought, level by level in any order)."""
        if need <= 0:
            return 0.0
        k = int(np.searchsorted(per_unit, m, side="left"))  # envelope pieces cheaper than m
        if need <= units0[k]:
            i = int(np.searchsorted(units0, need, side="left"))
            return scores[i - 1] + (need - units0[i - 1]) * per_unit[i - 1]
        return scores[k] + (need - units0[k]) * m

    tolerance = 1e-7 * max(1.0, abs(bound)) + 1e-6
    out = []
    for o, segs, avail in cands:
        per_lot = [score(spec, s.price_fen_per_lot, s.carbon_g_per_lot) for s in segs]
        suffix_min = list(per_lot)
        for k in range(len(per_lot) - 2, -1, -1):
            suffix_min[k] = min(per_lot[k], suffix_min[k + 1])
        keep, prefix_score, prefix_units = [], 0.0, 0
        for k, s in enumerate(segs):
            rest = fractional(spec.units_micro - prefix_units - o.lot_micro, suffix_min[k] / o.lot_micro)
            if prefix_score + per_lot[k] + rest > bound + tolerance:
                break
            keep.append(s)
            prefix_score += per_lot[k] * s.lots
            prefix_units += s.lots * o.lot_micro
        if keep and min(sum(s.lots for s in keep), avail) >= o.min_lots:
            out.append((o, keep, min(sum(s.lots for s in keep), avail)))
    return out


def _trim(spec: Spec, takes: list[Take]) -> list[Take]:
    """Drop lots the quantity does not need (a zero-score lot may ride along): from the dearest end."""
    changed = True
    while changed:
        changed = False
        surplus = sum(t.units_micro for t in takes) - spec.units_micro
        for i, t in sorted(enumerate(takes), key=lambda it: -it[1].limit_fen_per_lot if it[1].lots else 0):
            if t.lots and t.offer.lot_micro <= surplus and (t.lots - 1 >= t.offer.min_lots or t.lots == 1):
                segs = [s for s, n in zip(t.offer.segments, t.per_segment, strict=False) if n]
                smaller = prefix_fill(t.offer, segs, t.lots - 1)
                if plan_score(spec, takes[:i] + [smaller] + takes[i + 1:]) <= plan_score(spec, takes) + 1e-9:
                    takes[i] = smaller
                    changed = True
                    break
    return [t for t in takes if t.lots]


def best_single(spec: Spec, cands: list[tuple[Offer, list[Segment], int]]) -> Take | None:
    """The best plan that uses one instrument only (for comparison): its first ceil(Q / lot) lots."""
    best, best_score = None, math.inf
    for o, segs, avail in cands:
        lots = max(-(-spec.units_micro // o.lot_micro), o.min_lots)
        if lots > avail:
            continue
        take = prefix_fill(o, segs, lots)
        if spec.max_total_fen is not None and take.cost_fen > spec.max_total_fen:
            continue
        s = plan_score(spec, [take])
        if s < best_score:
            best, best_score = take, s
    return best


# --- why a demand cannot be met ----------------------------------------------------------------------------

CHECK_ORDER = (
    ("chip_classes", "of the chip classes asked for"),
    ("domestic_only", "on domestic chips"),
    ("min_security_level", "at security level {min_security_level} or above"),
    ("max_pue", "at PUE {max_pue} or below"),
    ("min_renewable_share", "with at least {min_renewable_share}% renewable power"),
    ("max_latency_ms", "within {max_latency_ms} ms of {latency_metro}"),
    ("own_orders", "not offered by your own organisation"),
    ("max_price", "at or below the price cap per unit"),
)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _amount(spec: Spec, offers: list[Offer], micro: int) -> tuple[str, str, str]:
    sizes = {o.lot_micro for o in offers}
    if len(sizes) == 1:
        size = sizes.pop()
        return f"{micro // size}", f"{-(-spec.units_micro // size)}", "lots"
    return f"{micro / 1e6:g}", f"{spec.units_micro / 1e6:g}", "units"


def diagnose(spec: Spec, offers: list[Offer]) -> dict:
    """The constraint that makes the demand infeasible, with numbers: constraints are applied one by one in
    a fixed order (window, grade, latency, price per unit, window choice, total cap); the first one after
    which the available quantity falls short of the demand is named."""
    timed = [o for o in offers if in_window(spec, o)]
    avail = sum(_prefix_lots(o.segments, o) * o.lot_micro for o in timed)
    if avail < spec.units_micro:
        have, need, what = _amount(spec, offers or [Offer(0, (0, 0), 1_000_000, [])], avail)
        return {"constraint": "deadline", "available": have, "required": need, "measure": what,
                "message": f"only {have} of {need} {what} on offer in windows between the earliest start and the deadline"}
    applied: list[str] = []
    words: list[str] = []
    for name, text in CHECK_ORDER:
        applied.append(name)
        active = any(name in segment_failures(spec, s) for o in timed for s in o.segments) if name != "max_price" else spec.max_price_fen_per_unit is not None
        if not active:
            continue
        words.append(text.format(**{
            "min_security_level": spec.min_security_level, "max_pue": _fmt(spec.max_pue),
            "min_renewable_share": _fmt(spec.min_renewable_share), "max_latency_ms": _fmt(spec.max_latency_ms),
            "latency_metro": spec.latency_metro,
        }))
        avail = sum(_prefix_lots(usable_prefix(spec, o, tuple(applied)), o) * o.lot_micro for o in timed)
        if avail < spec.units_micro:
            have, need, what = _amount(spec, timed, avail)
            return {"constraint": name, "available": have, "required": need, "measure": what,
                    "message": f"only {have} of {need} {what} {' and '.join(words)} before the deadline"}
    usable = [(o, usable_prefix(spec, o)) for o in timed]
    if spec.single_window:
        per: dict[tuple[int, int], int] = {}
        for o, segs in usable:
            per[o.window] = per.get(o.window, 0) + _prefix_lots(segs, o) * o.lot_micro
        best = max(per.values(), default=0)
        if best < spec.units_micro:
            have, need, what = _amount(spec, timed, best)
            return {"constraint": "single_window", "available": have, "required": need, "measure": what,
                    "message": f"only {have} of {need} {what} in any single window ({' and '.join(words) or 'eligible'})"}
    cheapest = _cheapest_cost(spec, usable) if spec.max_total_fen is not None else None
    if cheapest is not None:
        return {"constraint": "max_total", "available": str(spec.max_total_fen), "required": str(cheapest), "measure": "fen",
                "message": f"the cheapest eligible plan costs {format_cny(cheapest)} CNY, above the total cap of {format_cny(spec.max_total_fen)} CNY"}
    return {"constraint": "order_size", "message": "the eligible asks cannot be combined into whole orders within the instruments' order size limits"}


def _cheapest_cost(spec: Spec, usable: list[tuple[Offer, list[Segment]]]) -> int | None:
    relaxed = dataclasses.replace(spec, max_total_fen=None, objective=CHEAPEST)
    res = solve(relaxed, [Offer(o.instrument_id, o.window, o.lot_micro, segs, o.min_lots, o.max_lots) for o, segs in usable])
    return sum(t.cost_fen for t in res.takes) if res.takes else None


# --- brute force, for the tests and the bench --------------------------------------------------------------

def brute_force(spec: Spec, offers: list[Offer]) -> float | None:
    """The optimal score by enumerating lots per instrument (small instances only); None when infeasible."""
    import itertools

    cands = []
    for o in offers:
        if in_window(spec, o):
            segs = usable_prefix(spec, o)
            avail = _prefix_lots(segs, o)
            cands.append((o, segs, [0] + list(range(o.min_lots, avail + 1))))
    best = None
    for choice in itertools.product(*[c[2] for c in cands]):
        takes = [prefix_fill(o, segs, n) for (o, segs, _), n in zip(cands, choice, strict=False) if n]
        if takes_violations(spec, takes):
            continue
        s = plan_score(spec, takes)
        if best is None or s < best:
            best = s
    return best
