"""Demo data steps. Each app that has demo data registers a step in its own `demo` module; `seed_demo`
runs them in order. Steps must be idempotent: running the command again adds nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_PASSWORD = "suanli-demo"  # nosec B105 # the documented password of the demo accounts, never a real one


@dataclass
class SeedContext:
    password: str | None  # set every demo user's password to this; None keeps existing passwords
    created: int = 0
    notes: list[str] = field(default_factory=list)


_steps: list[tuple[int, str, Callable[[SeedContext], None]]] = []


def step(order: int) -> Callable[[Callable[[SeedContext], None]], Callable[[SeedContext], None]]:
    def register(func: Callable[[SeedContext], None]) -> Callable[[SeedContext], None]:
        name = f"{func.__module__}.{func.__qualname__}"
        if all(existing != name for _, existing, _ in _steps):
            _steps.append((order, name, func))
        return func

    return register


def steps() -> list[Callable[[SeedContext], None]]:
    return [func for _, _, func in sorted(_steps, key=lambda s: (s[0], s[1]))]
