"""Funding sources: how a higher app (vouchers) pays part of a contract's value without metering importing it.

A source registers a callable (from its AppConfig.ready). Whenever metering moves a contract's escrow (a
release as usage is rated, the catch-up and refund at settlement, a dispute adjustment) it asks every source
for extra ledger entries and posts them in the same `entries_post` call, so they commit or fail together
with metering's own. The callable runs with the contracts' delivery rows locked; it may update its own rows.
With no source registered this costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ledger.services import EntryRequest


@dataclass(frozen=True, slots=True)
class EscrowMove:
    """One change of a contract's money: released (cumulative, buyer escrow -> supplier and fees) goes from
    `released_from` to `released_to`, and at settlement `refund_fen` goes back to the buyer. `key` is the
    idempotency key of metering's entry for the move; a source derives its own keys from it. `final` is set
    once, at settlement: nothing moves for the contract after it."""

    contract_id: int
    value_fen: int
    released_from: int
    released_to: int
    refund_fen: int
    buyer_escrow_id: int
    buyer_available_id: int
    key: str
    final: bool = False


Source = Callable[[Sequence[EscrowMove]], list[EntryRequest]]
_sources: dict[str, Source] = {}


def source_register(name: str, source: Source) -> None:
    """Idempotent on `name` (ready() may run more than once)."""
    _sources[name] = source


def source_unregister(name: str) -> None:
    _sources.pop(name, None)


def requests_for(moves: Sequence[EscrowMove]) -> list[EntryRequest]:
    if not _sources or not moves:
        return []
    out: list[EntryRequest] = []
    for name in sorted(_sources):
        out.extend(_sources[name](moves))
    return out
