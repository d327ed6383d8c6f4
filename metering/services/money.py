"""Money follows delivery: the release, refund and adjustment entries for a contract's delivery.

Every amount is a pure function of the delivery's state (value V, seller fee F, quantity Q, delivered D),
rounded down, so any order of events and any retry gives the same fen:

    released(D) = V * min(D, Q) // Q        buyer escrow -> supplier (and fees)
    fee(D)      = F * released(D) // V      the seller's fee, prorated on what was released
    refund      = V - released(D_final)     buyer escrow -> buyer available, at window end plus grace

fee(D) never grows faster than released(D) (F <= V), so each release pays the supplier a non-negative
amount; at full delivery released = V and fee = F exactly. Ledger keys name the cumulative target
(`delivery:{contract}:release:{released}:{fee}`), so a replay is the same entry, never a second one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import services as ledger
from ledger.models import Account, AccountKind, EntryKind


def released_for(*, value_fen: int, quantity_micro: int, delivered_micro: int) -> int:
    if quantity_micro <= 0:
        return 0
    return value_fen * min(delivered_micro, quantity_micro) // quantity_micro


def fee_for(*, seller_fee_fen: int, value_fen: int, released_fen: int) -> int:
    if value_fen <= 0:
        return 0
    return min(seller_fee_fen, value_fen) * released_fen // value_fen


@dataclass(frozen=True)
class Parties:
    buyer_escrow: int
    buyer_available: int
    seller_available: int
    fees: int


def parties_for(pairs: set[tuple[int, int]]) -> dict[tuple[int, int], Parties]:
    """Account ids for (buyer, seller) pairs, opening missing accounts; two queries in the usual case."""
    orgs = {o for pair in pairs for o in pair}
    rows = Account.objects.filter(
        organisation_id__in=orgs, kind__in=[AccountKind.ESCROW, AccountKind.AVAILABLE]
    ).values_list("organisation_id", "kind", "pk")
    ids = {(org, kind): pk for org, kind, pk in rows}
    for org in orgs:
        if (org, AccountKind.ESCROW) not in ids or (org, AccountKind.AVAILABLE) not in ids:
            from marketplace.models import Organisation

            opened = ledger.accounts_open(organisation=Organisation(pk=org))
            ids[(org, AccountKind.ESCROW)] = opened[AccountKind.ESCROW].pk
            ids[(org, AccountKind.AVAILABLE)] = opened[AccountKind.AVAILABLE].pk
    fees = ledger.platform_account(kind=AccountKind.FEES).pk
    return {
        (b, s): Parties(ids[(b, AccountKind.ESCROW)], ids[(b, AccountKind.AVAILABLE)], ids[(s, AccountKind.AVAILABLE)], fees)
        for b, s in pairs
    }


def movement_request(
    *, contract_id: int, parties: Parties, released_from: int, released_to: int, fee_from: int, fee_to: int,
    key: str, memo: str, created_by_id: int | None = None,
) -> ledger.EntryRequest | None:
    """The entry moving escrow between (released_from, fee_from) and (released_to, fee_to): forward for
    a release, backward (supplier and fees back to escrow) for a downward dispute adjustment."""
    dv, df = released_to - released_from, fee_to - fee_from
    dn = dv - df
    postings = [(a, amount) for a, amount in ((parties.buyer_escrow, -dv), (parties.seller_available, dn), (parties.fees, df)) if amount]
    if not postings:
        return None
    return ledger.EntryRequest(
        idempotency_key=key, kind=EntryKind.SETTLEMENT, postings=postings, memo=memo, reference=f"contract:{contract_id}",
        created_by_id=created_by_id,
    )
