"""Voucher reads: lists by who may see them, balances, utilisation reports and the evidence pack."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Q, QuerySet, Sum

from ledger.models import Account, JournalEntry
from marketplace.models import PlatformRole, User
from marketplace.selectors import organisation_ids_for_user
from metering.models import ContractDelivery, UsageEvent
from vouchers.models import Application, Programme, Redemption, RedemptionStatus, Voucher

REPORT_GROUPS = ("district", "industry", "supplier", "chip", "domestic")


def sees_all(user: User) -> bool:
    """Authorities, regulators and operators read every programme's applications, vouchers and redemptions."""
    return user.is_authenticated and (user.platform_role == PlatformRole.AUTHORITY or user.is_regulator or user.is_operator)


def programme_list() -> QuerySet[Programme]:
    return Programme.objects.select_related("budget_account")


def application_list_for_user(user: User) -> QuerySet[Application]:
    qs = Application.objects.select_related("programme", "organisation").order_by("-id")
    return qs if sees_all(user) else qs.filter(organisation_id__in=organisation_ids_for_user(user))


def voucher_list_for_user(user: User) -> QuerySet[Voucher]:
    qs = Voucher.objects.select_related("programme", "organisation", "account", "committed_account").order_by("-id")
    return qs if sees_all(user) else qs.filter(organisation_id__in=organisation_ids_for_user(user))


def redemption_list_for_user(user: User) -> QuerySet[Redemption]:
    qs = Redemption.objects.select_related(
        "voucher__programme", "voucher__organisation", "contract__seller", "contract__listing__device_model", "contract__instrument",
    ).order_by("-id")
    return qs if sees_all(user) else qs.filter(voucher__organisation_id__in=organisation_ids_for_user(user))


def voucher_summary(voucher: Voucher) -> dict[str, int]:
    """Balance (free to commit), committed (not yet paid), paid to suppliers, returned to the budget."""
    agg = voucher.redemptions.aggregate(paid=Sum("paid_fen"))
    return {
        "balance_fen": voucher.account.balance_fen,
        "committed_fen": voucher.committed_account.balance_fen,
        "paid_fen": agg["paid"] or 0,
        "returned_fen": voucher.returned_fen,
    }


def _group_key(r: Redemption, by: str, industries: dict[int, str]) -> str:
    c = r.contract
    if by == "district":
        return r.voucher.organisation.registration_region
    if by == "industry":
        return industries.get(r.voucher.application_id) or "undeclared"
    if by == "supplier":
        return c.seller.name
    if by == "chip":
        return c.listing.device_model.chip_class
    return "domestic" if c.listing.device_model.is_domestic else "imported"


def utilisation_report(*, programme: Programme, by: str) -> dict:
    """The programme's budget and issuance, and its redemptions grouped by buyer district, industry,
    supplier, chip class or domestic/imported. The domestic share is of subsidy paid."""
    vouchers = Voucher.objects.filter(programme=programme)
    issued = vouchers.aggregate(s=Sum("amount_fen"))["s"] or 0
    rows = list(
        Redemption.objects.filter(voucher__programme=programme)
        .select_related("voucher__organisation", "contract__seller", "contract__listing__device_model")
    )
    industries = dict(Application.objects.filter(programme=programme).values_list("pk", "industry"))
    groups: dict[str, dict[str, int]] = defaultdict(lambda: {"contracts": 0, "blocked": 0, "value_fen": 0, "committed_fen": 0, "paid_fen": 0, "released_fen": 0})
    paid_domestic = paid = 0
    for r in rows:
        g = groups[_group_key(r, by, industries)]
        if r.status == RedemptionStatus.BLOCKED:
            g["blocked"] += 1
            continue
        g["contracts"] += 1
        g["value_fen"] += r.value_fen
        g["committed_fen"] += r.committed_fen
        g["paid_fen"] += r.paid_fen
        g["released_fen"] += r.released_fen
        paid += r.paid_fen
        if r.contract.listing.device_model.is_domestic:
            paid_domestic += r.paid_fen
    return {
        "programme": programme.code,
        "by": by,
        "budget_balance_fen": Account.objects.get(pk=programme.budget_account_id).balance_fen,
        "issued_fen": issued,
        "vouchers": vouchers.count(),
        "paid_fen": paid,
        "domestic_share": round(paid_domestic / paid, 4) if paid else None,
        "groups": [{"key": k, **v} for k, v in sorted(groups.items())],
    }


def report_csv(report: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([report["by"], "contracts", "blocked", "value_fen", "committed_fen", "paid_fen", "released_fen"])
    for g in report["groups"]:
        w.writerow([g["key"], g["contracts"], g["blocked"], g["value_fen"], g["committed_fen"], g["paid_fen"], g["released_fen"]])
    return out.getvalue()


REDEMPTION_COLUMNS = ("id", "programme", "buyer", "contract", "supplier", "status", "reason", "rate_bps", "rate_kind",
                      "value_fen", "committed_fen", "paid_fen", "released_fen", "created_at")


def redemptions_csv(rows: Iterable[Redemption]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(REDEMPTION_COLUMNS)
    for r in rows:
        w.writerow([r.pk, r.voucher.programme.code, r.voucher.organisation.name, r.contract_id, r.contract.seller.name, r.status,
                    r.reason, r.rate_bps, r.rate_kind, r.value_fen, r.committed_fen, r.paid_fen, r.released_fen, r.created_at.isoformat()])
    return out.getvalue()


def evidence_pack(redemption: Redemption) -> dict:
    """What an auditor needs to check one redemption: the trade, the contract, the metered delivery, and
    every ledger entry that moved the contract's or the voucher's money, with their postings."""
    c = redemption.contract
    t = c.trade
    d = ContractDelivery.objects.filter(pk=c.pk).first()
    usage = UsageEvent.objects.filter(contract_id=c.pk).aggregate(units=Sum("credited_micro"), energy=Sum("energy_kwh"))
    v = redemption.voucher
    entries = (
        # The trade's capture into escrow with its buyer fee (keyed by instrument and sequence; trades before
        # 2026-12 have the fee in a second entry, ...:buyer_fee), the contract's delivery and voucher entries,
        # and the voucher's issue and return.
        JournalEntry.objects.filter(
            Q(idempotency_key__in=[f"trade:{c.instrument_id}:{t.seq}:escrow", f"trade:{c.instrument_id}:{t.seq}:buyer_fee"])
            | Q(reference=f"contract:{c.pk}") | Q(reference=f"voucher:{v.pk}")
        )
        .prefetch_related("postings__account__organisation").order_by("id")
    )
    return {
        "redemption": {
            "id": redemption.pk, "status": redemption.status, "reason": redemption.reason, "detail": redemption.detail,
            "rate_bps": redemption.rate_bps, "rate_kind": redemption.rate_kind, "value_fen": redemption.value_fen,
            "committed_fen": redemption.committed_fen, "paid_fen": redemption.paid_fen, "released_fen": redemption.released_fen,
            "flags": redemption.flags,
        },
        "voucher": {"id": v.pk, "programme": v.programme.code, "organisation": v.organisation.name, "credit_code": v.organisation.credit_code},
        "trade": {"id": t.pk, "instrument": c.instrument.code, "seq": t.seq, "price_fen_per_lot": t.price_fen_per_lot,
                  "quantity": t.quantity, "value_fen": t.value_fen, "at": t.created_at.isoformat()},
        "contract": {"id": c.pk, "buyer": c.buyer.name, "seller": c.seller.name, "quantity_lots": c.quantity, "value_fen": c.value_fen,
                     "device_model": str(c.listing.device_model), "domestic": c.listing.device_model.is_domestic,
                     "data_centre": c.listing.data_centre.name, "window": [c.instrument.delivery_start.isoformat(), c.instrument.delivery_end.isoformat()]},
        "delivery": None if d is None else {
            "status": d.status, "quantity_micro": d.quantity_micro, "delivered_micro": d.delivered_micro, "events": d.events,
            "released_fen": d.released_fen, "fee_fen": d.fee_fen, "refunded_fen": d.refunded_fen,
            "usage_credited_micro": usage["units"] or 0, "energy_kwh": str(usage["energy"] or 0),
        },
        "ledger": [
            {"entry": e.pk, "kind": e.kind, "key": e.idempotency_key, "memo": e.memo, "at": e.created_at.isoformat(),
             "postings": [{"account": str(p.account), "amount_fen": p.amount_fen} for p in e.postings.all()]}
            for e in entries
        ],
    }
