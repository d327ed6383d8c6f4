"""Random routing instances with no database, for the property tests and bench/routing_bench.py."""

from __future__ import annotations

import random
from fractions import Fraction

from scheduling.solver import OBJECTIVES, Offer, Segment, Spec

DAY = 86_400


def small_instance(rng: random.Random) -> tuple[Spec, list[Offer]]:
    """A few instruments, a few levels and lots each: small enough to enumerate every allocation."""
    offers = []
    for i in range(rng.randint(1, 3)):
        segs, price = [], rng.randint(90, 110)
        for _ in range(rng.randint(1, 3)):
            price += rng.randint(0, 5)
            segs.append(Segment(
                price, rng.randint(1, 4), rng.choice([0.0, 100.0, 250.0, 400.0]), rng.choice([0.5, 1.0, 1.5]),
                rng.choice([2.0, 8.0, 15.0, None]), chip_class=rng.choice(["training", "inference"]), domestic=rng.random() < 0.3,
                renewable_share=rng.choice([0, 30, 60]), pue=rng.choice([1.2, 1.4]), security_level=rng.choice([2, 3, 4]),
                own=rng.random() < 0.05,
            ))
        start = rng.choice([0, 1, 2]) * DAY
        offers.append(Offer(i + 1, (start, start + DAY), rng.choice([1_000_000, 2_000_000]), segs,
                            min_lots=rng.choice([1, 1, 2]), max_lots=rng.choice([3, 100])))
    spec = Spec(
        units_micro=rng.randint(1, 8) * 1_000_000, earliest_start=0, deadline=rng.choice([2, 3]) * DAY,
        single_window=rng.random() < 0.4, chip_classes=rng.choice([(), (), ("training",)]),
        domestic_only=rng.random() < 0.1, max_latency_ms=rng.choice([None, None, 10.0]),
        max_pue=rng.choice([None, None, 1.3]), min_renewable_share=rng.choice([None, None, 20.0]),
        min_security_level=rng.choice([None, None, 3]), max_price_fen_per_unit=rng.choice([None, None, Fraction(105)]),
        max_total_fen=rng.choice([None, None, 500, 900]), objective=rng.choice(OBJECTIVES), fen_per_g_co2=rng.choice([0.01, 0.5]),
    )
    return spec, offers


def large_instance(rng: random.Random, *, instruments: int = 200, levels: int = 50, windows: int = 10,
                   objective: str = "cheapest", single_window: bool = False, units: int = 3000) -> tuple[Spec, list[Offer]]:
    """`instruments` instruments (products x `windows` day windows), each with `levels` ask levels from two or
    three of twelve data centres (Shanghai districts near, western hubs far and greener), 1-20 lots a level."""
    dcs = [
        # carbon g per lot, energy kWh per lot, latency ms, renewable %, PUE, security level
        # even ones in Shanghai (eligible for the bench demand), odd ones in a western hub or too power-hungry
        (rng.uniform(150, 450), rng.uniform(0.75, 0.95), rng.choice([1.5, 2.0, 3.5, 6.0]) if d % 2 == 0 else rng.choice([6.0, 28.0, 35.0]),
         rng.choice([10, 25, 40, 80]), rng.choice([1.15, 1.25]) if d % 2 == 0 else rng.choice([1.15, 1.35]), rng.choice([3, 3, 4]))
        for d in range(12)
    ]
    offers = []
    for i in range(instruments):
        day = i % windows
        own = rng.sample(range(len(dcs)), rng.choice([2, 3]))
        price, segs = rng.randint(1300, 1600), []
        for _ in range(levels):
            price += rng.randint(1, 6)
            dc = dcs[rng.choice(own)]
            segs.append(Segment(price, rng.randint(1, 20), dc[0], dc[1], dc[2], renewable_share=dc[3], pue=dc[4],
                                security_level=dc[5], data_centres=(own[0],)))
        offers.append(Offer(i + 1, (day * DAY, (day + 1) * DAY), 1_000_000, segs, label=f"I{i}"))
    spec = Spec(units_micro=units * 1_000_000, earliest_start=0, deadline=windows * DAY, single_window=single_window,
                max_latency_ms=10.0, max_pue=1.3, min_security_level=3, objective=objective, fen_per_g_co2=0.5)
    return spec, offers
