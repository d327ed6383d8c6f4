"""Voucher writes: programmes, applications, issuance, redemption against contracts, expiry.

Lock order (always this way round, so nothing deadlocks): a contract's delivery row (metering) -> voucher
row -> application row -> ledger accounts (the ledger locks those itself, by id). Approvals lock the
programme budget's account row before checking what is left, so concurrent approvals queue and the
budget cannot be over-committed (the ledger's non-negative check backs it up).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from common.errors import ServiceError
from common.money import format_cny
from exchange.models import Contract
from ledger import services as ledger
from ledger.models import Account, AccountKind, EntryKind
from marketplace.models import MemberRole, Organisation, PlatformRole, SizeClass, User
from marketplace.selectors import organisation_ids_for_user
from metering.funding import EscrowMove
from metering.models import ContractDelivery, DeliveryStatus, UsageEvent
from metering.services import deliveries_ensure
from vouchers.models import (
    BPS,
    Application,
    ApplicationStatus,
    BlockReason,
    OrganisationProfile,
    Programme,
    Redemption,
    RedemptionStatus,
    Voucher,
    VoucherStatus,
)

log = logging.getLogger(__name__)
SME_CLASSES = (SizeClass.MICRO, SizeClass.SMALL, SizeClass.MEDIUM)


class VoucherError(ServiceError):
    pass


def require_authority(user: User) -> None:
    if not (user.is_authenticated and (user.platform_role == PlatformRole.AUTHORITY or user.is_superuser)):
        raise VoucherError("Only a voucher authority may do this.", status_code=403)


def _age_years(founded_on: dt.date, on: dt.date) -> int:
    return on.year - founded_on.year - ((on.month, on.day) < (founded_on.month, founded_on.day))


# --- Programmes ------------------------------------------------------------------------------------------

@transaction.atomic
def programme_create(*, user: User, code: str, name: str, valid_from: dt.datetime, valid_until: dt.datetime,
                     rate_bps: int, org_cap_per_year_fen: int, **rules) -> Programme:
    """An authority's programme with its budget account (empty until funded)."""
    require_authority(user)
    if valid_until <= valid_from:
        raise VoucherError("The programme must end after it starts.", field="valid_until")
    if Programme.objects.filter(code=code).exists():
        raise VoucherError("A programme with this code exists.", field="code", status_code=409)
    for f in ("rate_bps", "domestic_rate_bps", "startup_rate_bps"):
        value = rate_bps if f == "rate_bps" else rules.get(f)
        if value is not None and not 0 < value <= BPS:
            raise VoucherError("A rate from 1 to 10000 basis points.", field=f)
    for f in ("eligible_size_classes", "eligible_chip_classes", "eligible_regions"):
        if f in rules:
            rules[f] = sorted(set(rules[f]))
    budget = ledger.platform_account(kind=AccountKind.VOUCHER_BUDGET, name=f"prog:{code}")
    return Programme.objects.create(
        code=code, name=name, created_by=user, budget_account=budget, valid_from=valid_from, valid_until=valid_until,
        rate_bps=rate_bps, org_cap_per_year_fen=org_cap_per_year_fen, **rules,
    )


def programme_fund(*, user: User, programme: Programme, amount_fen: int, idempotency_key: str, source: str = "offline") -> Account:
    """Money into the budget from the authority's payment (a provider clearing account, which mirrors money
    held outside and goes negative). Idempotent on the key."""
    require_authority(user)
    clearing = ledger.platform_account(kind=AccountKind.PROVIDER_CLEARING, name=source)
    ledger.transfer(
        source=clearing, destination=programme.budget_account, amount_fen=amount_fen,
        idempotency_key=f"programme:{programme.pk}:fund:{idempotency_key}", kind=EntryKind.VOUCHER,
        memo=f"budget of programme {programme.code}", reference=f"programme:{programme.pk}", created_by=user,
    )
    programme.budget_account.refresh_from_db()
    return programme.budget_account


def profile_declare(*, user: User, organisation: Organisation, group_name: str = "", officers: Sequence[str] = (),
                    beneficial_owners: Sequence[str] = (), industry: str = "") -> OrganisationProfile:
    if organisation.pk not in organisation_ids_for_user(user, (MemberRole.ADMIN,)):
        raise VoucherError("No such organisation among those you administer.", field="organisation", status_code=404)
    clean = lambda xs: sorted({x.strip().upper() for x in xs if x and x.strip()})  # noqa: E731
    profile, _ = OrganisationProfile.objects.update_or_create(
        organisation=organisation,
        defaults={"group_name": group_name.strip(), "officers": clean(officers), "beneficial_owners": clean(beneficial_owners), "industry": industry.strip()},
    )
    return profile


# --- Applications ----------------------------------------------------------------------------------------

def eligibility_check(*, programme: Programme, organisation: Organisation, declared_size_class: str, now: dt.datetime) -> list[dict]:
    """Every automatic check, with its outcome, as stored on the application."""
    today = timezone.localdate(now)
    out = []

    def check(name: str, passed: bool, detail: str) -> None:
        out.append({"check": name, "passed": bool(passed), "detail": detail})

    check("declared_size_matches_register", declared_size_class == organisation.size_class,
          f"declared {declared_size_class}, registered {organisation.size_class}")
    sizes = programme.eligible_size_classes
    research = programme.research_institutions_eligible and organisation.is_research_institution
    check("size_class", not sizes or organisation.size_class in sizes or research,
          f"{organisation.size_class}{' (research institution)' if organisation.is_research_institution else ''}; eligible: {', '.join(sizes) or 'any'}")
    age = _age_years(organisation.founded_on, today)
    if programme.max_org_age_years is not None:
        check("age", age <= programme.max_org_age_years, f"{age} years; at most {programme.max_org_age_years}")
    if programme.eligible_regions:
        region = organisation.registration_region.lower()
        check("region", any(r.lower() in region for r in programme.eligible_regions),
              f"registered in {organisation.registration_region}; eligible: {', '.join(programme.eligible_regions)}")
    check("is_buyer", organisation.is_buyer, f"kind {organisation.kind}")
    return out


def application_submit(*, user: User, programme: Programme, organisation: Organisation, credit_code: str,
                       declared_size_class: str, requested_fen: int, idempotency_key: str, industry: str = "",
                       now: dt.datetime | None = None) -> tuple[Application, bool]:
    """An organisation admin applies. Refused outright (nothing written): a programme not open, a credit code
    that is not the organisation's, a declared or registered size the programme excludes. Otherwise the
    checks run and are stored; the authority decides. Idempotent on (organisation, key)."""
    now = now or timezone.now()
    if organisation.pk not in organisation_ids_for_user(user, (MemberRole.ADMIN,)):
        raise VoucherError("No such organisation among those you administer.", field="organisation", status_code=404)
    existing = Application.objects.filter(organisation=organisation, idempotency_key=idempotency_key).first()
    if existing is not None:
        if existing.programme_id != programme.pk or existing.requested_fen != requested_fen:
            raise VoucherError("This idempotency key was used for a different application.", field="idempotency_key", status_code=409)
        return existing, False
    if not programme.valid_from <= now < programme.valid_until:
        raise VoucherError("The programme is not open for applications.", field="programme")
    if credit_code.strip().upper() != organisation.credit_code:
        raise VoucherError("This is not the organisation's unified social credit code.", field="credit_code")
    sizes = programme.eligible_size_classes
    research = programme.research_institutions_eligible and organisation.is_research_institution
    if sizes and not research and (declared_size_class not in sizes or organisation.size_class not in sizes):
        raise VoucherError(f"The programme is for {', '.join(sizes)} enterprises.", field="declared_size_class")
    if requested_fen <= 0:
        raise VoucherError("A positive amount.", field="requested_amount")
    results = eligibility_check(programme=programme, organisation=organisation, declared_size_class=declared_size_class, now=now)
    if not industry:
        industry = getattr(getattr(organisation, "voucher_profile", None), "industry", "")
    try:
        with transaction.atomic():
            app = Application.objects.create(
                programme=programme, organisation=organisation, applied_by=user, idempotency_key=idempotency_key,
                credit_code=organisation.credit_code, declared_size_class=declared_size_class, industry=industry[:100],
                requested_fen=requested_fen, eligibility=results, eligible=all(r["passed"] for r in results),
            )
    except IntegrityError:
        replay = Application.objects.filter(organisation=organisation, idempotency_key=idempotency_key).first()
        if replay is not None and replay.programme_id == programme.pk and replay.requested_fen == requested_fen:
            return replay, False  # a concurrent retry of the same request stored it first
        raise VoucherError("The organisation already has a live application or voucher in this programme.", field="programme", status_code=409) from None
    return app, True


def _application_locked(application_id: int) -> Application:
    app = Application.objects.select_for_update(of=("self",)).select_related("programme", "organisation").filter(pk=application_id).first()
    if app is None:
        raise VoucherError("No such application.", field="application", status_code=404)
    return app


@transaction.atomic
def application_approve(*, user: User, application_id: int, amount_fen: int | None = None, now: dt.datetime | None = None) -> Voucher:
    """Approve (possibly for less than requested) and issue: budget -> a new voucher account. Locks the
    application, then the budget account; the budget can never go below zero."""
    require_authority(user)
    now = now or timezone.now()
    app = _application_locked(application_id)
    if app.status != ApplicationStatus.PENDING:
        raise VoucherError(f"The application is already {app.status}.", field="application", status_code=409)
    if not app.eligible:
        failed = [r["check"] for r in app.eligibility if not r["passed"]]
        raise VoucherError(f"The application failed the eligibility checks: {', '.join(failed)}.", field="application")
    programme = app.programme
    if now >= programme.valid_until:
        raise VoucherError("The programme has ended.", field="application")
    amount = app.requested_fen if amount_fen is None else amount_fen
    if not isinstance(amount, int) or amount <= 0 or amount > app.requested_fen:
        raise VoucherError(f"From 0.01 CNY up to the requested {format_cny(app.requested_fen)} CNY.", field="amount")
    budget = Account.objects.select_for_update().get(pk=programme.budget_account_id)
    if amount > budget.balance_fen:
        raise VoucherError(f"The programme budget has {format_cny(budget.balance_fen)} CNY left.", field="amount")
    voucher = Voucher.objects.create(
        application=app, programme=programme, organisation=app.organisation, amount_fen=amount, issued_at=now,
        expires_at=min(now + dt.timedelta(days=programme.voucher_valid_days), programme.valid_until),
        account=Account.objects.create(kind=AccountKind.VOUCHER_BUDGET, name=f"voucher:app{app.pk}"),
        committed_account=Account.objects.create(kind=AccountKind.VOUCHER_BUDGET, name=f"voucher:app{app.pk}:committed"),
    )
    ledger.transfer(
        source=budget, destination=voucher.account, amount_fen=amount, idempotency_key=f"voucher:{voucher.pk}:issue",
        kind=EntryKind.VOUCHER, memo=f"voucher {voucher.pk} issued to {app.organisation.name}", reference=f"voucher:{voucher.pk}",
        created_by=user,
    )
    app.status, app.approved_fen, app.decided_by, app.decided_at = ApplicationStatus.APPROVED, amount, user, now
    app.save(update_fields=["status", "approved_fen", "decided_by", "decided_at"])
    return voucher


@transaction.atomic
def application_reject(*, user: User, application_id: int, reason: str, now: dt.datetime | None = None) -> Application:
    require_authority(user)
    reason = (reason or "").strip()
    if not reason:
        raise VoucherError("Give the applicant a reason.", field="reason")
    app = _application_locked(application_id)
    if app.status != ApplicationStatus.PENDING:
        raise VoucherError(f"The application is already {app.status}.", field="application", status_code=409)
    app.status, app.reason, app.decided_by, app.decided_at = ApplicationStatus.REJECTED, reason[:4000], user, now or timezone.now()
    app.save(update_fields=["status", "reason", "decided_by", "decided_at"])
    return app


# --- Redemption: committing a share of a contract ----------------------------------------------------------

def related_parties(buyer_id: int, seller_id: int) -> str:
    """Why two organisations are related by their declarations; empty when they are not."""
    profiles = {p.pk: p for p in OrganisationProfile.objects.filter(pk__in=[buyer_id, seller_id])}
    b, s = profiles.get(buyer_id), profiles.get(seller_id)
    if b is None or s is None:
        return ""
    if b.group_name and b.group_name.casefold() == s.group_name.casefold():
        return f"same group {b.group_name!r}"
    shared = set(b.officers) & set(s.officers)
    if shared:
        return f"shared officer {sorted(shared)[0]}"
    shared = set(b.beneficial_owners) & set(s.beneficial_owners)
    if shared:
        return f"shared beneficial owner {sorted(shared)[0]}"
    return ""


def _rate(programme: Programme, buyer: Organisation, is_domestic: bool, on: dt.date) -> tuple[int, str]:
    options = [(programme.rate_bps, "base")]
    if is_domestic and programme.domestic_rate_bps:
        options.append((programme.domestic_rate_bps, "domestic"))
    if programme.startup_rate_bps and _age_years(buyer.founded_on, on) < programme.startup_max_age_years:
        options.append((programme.startup_rate_bps, "startup"))
    return max(options)


def _block(contract: Contract, programme: Programme, now: dt.datetime) -> tuple[str, str]:
    """The first anti-fraud or product rule the contract breaks: (reason, detail), or ("", "")."""
    if contract.buyer_id == contract.seller_id:
        return BlockReason.SELF_TRADE, "buyer and supplier are the same organisation"
    why = related_parties(contract.buyer_id, contract.seller_id)
    if why:
        return BlockReason.RELATED_PARTY, why
    since = contract.created_at - dt.timedelta(days=programme.round_trip_days)
    back = Contract.objects.filter(buyer_id=contract.seller_id, seller_id=contract.buyer_id, created_at__gte=since).order_by("pk").values_list("pk", flat=True).first()
    if back is not None:
        return BlockReason.ROUND_TRIP, f"contract {back}: the supplier bought from the buyer within {programme.round_trip_days} days"
    listing = contract.listing
    model, dc = listing.device_model, listing.data_centre
    if programme.eligible_chip_classes and model.chip_class not in programme.eligible_chip_classes:
        return BlockReason.PRODUCT_NOT_ELIGIBLE, f"{model} is a {model.chip_class} chip"
    if programme.domestic_only and not model.is_domestic:
        return BlockReason.PRODUCT_NOT_ELIGIBLE, f"{model} is not a domestic chip"
    if dc.renewable_share < programme.min_renewable_share:
        return BlockReason.PRODUCT_NOT_ELIGIBLE, f"renewable share {dc.renewable_share}% below {programme.min_renewable_share}%"
    return "", ""


def _org_year_used(voucher: Voucher, year: int) -> int:
    agg = Redemption.objects.filter(voucher__programme_id=voucher.programme_id, voucher__organisation_id=voucher.organisation_id, year=year).aggregate(
        c=Sum("committed_fen"), r=Sum("released_fen"))
    return (agg["c"] or 0) - (agg["r"] or 0)


def redemption_commit(*, contract_id: int, now: dt.datetime | None = None) -> Redemption | None:
    """Commit the buyer's voucher share of a new contract, or record why it is blocked. None when the buyer
    has no voucher covering the contract. Idempotent (one redemption per contract). Locks the contract's
    delivery row (so no release runs meanwhile), then the voucher row."""
    now = now or timezone.now()
    contract = Contract.objects.select_related("buyer", "instrument", "trade", "listing__device_model", "listing__data_centre").get(pk=contract_id)
    with transaction.atomic():
        deliveries_ensure([contract])
        d = ContractDelivery.objects.select_for_update().get(pk=contract.pk)
        existing = Redemption.objects.filter(contract_id=contract.pk).first()
        if existing is not None:
            return existing
        # of=self: a plain FOR UPDATE would also lock the joined ledger accounts here, ahead of the ledger's
        # id-ordered lock phase, and deadlock with a concurrent release (seen in the PostgreSQL test).
        voucher = (
            Voucher.objects.select_for_update(of=("self",)).select_related("programme", "account", "committed_account")
            .filter(organisation_id=contract.buyer_id, status=VoucherStatus.ACTIVE, issued_at__lte=contract.created_at, expires_at__gt=contract.created_at)
            .order_by("expires_at", "pk").first()
        )
        if voucher is None:
            return None
        programme = voucher.programme
        year = timezone.localtime(contract.created_at).year
        base = {"voucher": voucher, "contract": contract, "value_fen": contract.value_fen, "year": year}

        def blocked(reason: str, detail: str) -> Redemption:
            log.info("voucher %s: contract %s blocked (%s: %s)", voucher.pk, contract.pk, reason, detail)
            return Redemption.objects.create(status=RedemptionStatus.BLOCKED, reason=reason, detail=detail[:300], **base)

        if now >= voucher.expires_at:
            return blocked(BlockReason.OUTSIDE_VALIDITY, f"the voucher expired at {voucher.expires_at:%Y-%m-%d %H:%M}")
        if d.status == DeliveryStatus.SETTLED:
            return blocked(BlockReason.ALREADY_SETTLED, f"settled at {d.settled_at:%Y-%m-%d %H:%M}" if d.settled_at else "settled")
        reason, detail = _block(contract, programme, now)
        if reason:
            return blocked(reason, detail)
        rate, kind = _rate(programme, contract.buyer, contract.listing.device_model.is_domestic, timezone.localdate(contract.created_at))
        share = contract.value_fen * rate // BPS
        # The balance is read again now that the voucher is locked: the account joined into the locking query
        # is as it was before the wait (PostgreSQL re-checks only the locked row), so a commitment that just
        # spent the voucher would be missed and the ledger would refuse this one (found by tests/drills/test_double_spend.py).
        balance = Account.objects.values_list("balance_fen", flat=True).get(pk=voucher.account_id)
        limits = [share, programme.org_cap_per_year_fen - _org_year_used(voucher, year), balance]
        if programme.contract_cap_fen is not None:
            limits.append(programme.contract_cap_fen)
        amount = min(limits)
        if amount <= 0:
            if limits[1] <= 0:
                return blocked(BlockReason.CAP_REACHED, f"{format_cny(programme.org_cap_per_year_fen)} CNY in {year} used up")
            return blocked(BlockReason.VOUCHER_EMPTY, "no balance left")
        r = Redemption.objects.create(status=RedemptionStatus.COMMITTED, rate_bps=rate, rate_kind=kind, committed_fen=amount, **base)
        accounts = ledger.accounts_open(organisation=contract.buyer)
        escrow, available = accounts[AccountKind.ESCROW].pk, accounts[AccountKind.AVAILABLE].pk
        ref = f"contract:{contract.pk}"
        requests = [ledger.EntryRequest(
            idempotency_key=f"redemption:{contract.pk}:commit", kind=EntryKind.VOUCHER, reference=ref,
            postings=[(voucher.account_id, -amount), (voucher.committed_account_id, amount), (escrow, -amount), (available, amount)],
            memo=f"voucher {voucher.pk} commits {rate / 100:g}% ({kind}) of contract {contract.pk}: the buyer's escrow holds only its own part",
        )]
        # Usage rated before this commit already released escrow: the voucher pays its share of that now.
        catch_up = _paid_for(r, d.released_fen)
        if catch_up:
            requests.append(ledger.EntryRequest(
                idempotency_key=f"redemption:{contract.pk}:commit-pay", kind=EntryKind.VOUCHER, reference=ref,
                postings=[(voucher.committed_account_id, -catch_up), (escrow, catch_up)],
                memo=f"voucher {voucher.pk} pays its share of contract {contract.pk} delivered before the commit",
            ))
            r.paid_fen = catch_up
        entries = ledger.entries_post(requests)
        r.entry = entries[0]
        r.save(update_fields=["entry", "paid_fen"])
        return r


def _paid_for(r: Redemption, released_fen: int) -> int:
    """The voucher's cumulative payment when `released_fen` of the contract's value has been released."""
    if r.value_fen <= 0:
        return 0
    return r.committed_fen * min(released_fen, r.value_fen) // r.value_fen


def redemptions_commit_new(*, now: dt.datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Pick up contracts of buyers holding an active voucher that have no redemption yet (the matcher
    bulk-creates contracts, so no signal fires). Idempotent; each contract in its own transaction."""
    now = now or timezone.now()
    holders = list(Voucher.objects.filter(status=VoucherStatus.ACTIVE).values_list("organisation_id", "issued_at"))
    if not holders:
        return {"committed": 0, "blocked": 0}
    cond = Q()
    for org_id, issued_at in holders:
        cond |= Q(buyer_id=org_id, created_at__gte=issued_at)
    ids = list(
        Contract.objects.filter(cond, voucher_redemption__isnull=True).exclude(delivery__status=DeliveryStatus.SETTLED)
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    out = {"committed": 0, "blocked": 0}
    for pk in ids:
        try:
            r = redemption_commit(contract_id=pk, now=now)
        except Exception:
            log.exception("voucher commitment for contract %s failed", pk)
            out["failed"] = out.get("failed", 0) + 1
            continue
        if r is not None:
            out["committed" if r.status == RedemptionStatus.COMMITTED else "blocked"] += 1
    return out


# --- The funding source metering calls when escrow moves --------------------------------------------------

def escrow_moves_fund(moves: Sequence[EscrowMove]) -> list[ledger.EntryRequest]:
    """Registered with metering.funding: for each move of a contract with a live commitment, the voucher
    pays floor(committed x released / value) in total (committed -> buyer escrow, or back on a downward
    dispute); at settlement the unpaid commitment returns to the voucher, taken from the refund the buyer
    receives for the same undelivered part. Runs inside metering's transaction with the delivery rows
    locked, so the redemption rows need no lock of their own."""
    by_contract = {m.contract_id: m for m in moves}
    live = list(Redemption.objects.filter(contract_id__in=list(by_contract), status=RedemptionStatus.COMMITTED).select_related("voucher"))
    out: list[ledger.EntryRequest] = []
    for r in live:
        m = by_contract[r.contract_id]
        v = r.voucher
        target = _paid_for(r, m.released_to)
        delta = target - r.paid_fen
        ref = f"contract:{r.contract_id}"
        if delta:
            out.append(ledger.EntryRequest(
                idempotency_key=f"{m.key}:voucher", kind=EntryKind.VOUCHER, reference=ref,
                postings=[(v.committed_account_id, -delta), (m.buyer_escrow_id, delta)],
                memo=f"voucher {v.pk} {'pays' if delta > 0 else 'takes back'} its share of contract {r.contract_id}",
            ))
        r.paid_fen = target
        fields = ["paid_fen"]
        if m.final:
            unused = r.committed_fen - target
            if unused:
                out.append(ledger.EntryRequest(
                    idempotency_key=f"{m.key}:voucher-release", kind=EntryKind.VOUCHER, reference=ref,
                    postings=[(v.committed_account_id, -unused), (m.buyer_escrow_id, unused), (m.buyer_available_id, -unused), (v.account_id, unused)],
                    memo=f"voucher {v.pk}: commitment on undelivered part of contract {r.contract_id} released (out of the buyer's refund)",
                ))
            r.released_fen, r.status, r.settled_at = unused, RedemptionStatus.SETTLED, timezone.now()
            r.flags = usage_flags(contract_id=r.contract_id)
            fields += ["released_fen", "status", "settled_at", "flags"]
        r.save(update_fields=fields)
    return out


ENERGY_LOW, ENERGY_HIGH = Decimal("0.5"), Decimal("1.5")


def usage_flags(*, contract_id: int) -> list[str]:
    """Flags on a contract's metered usage for the auditor (the subsidy is not withheld for them): metered IT
    energy below half or above 1.5 times what the devices draw at rated power for the compute claimed."""
    agg = UsageEvent.objects.filter(contract_id=contract_id, energy_estimated=False).aggregate(
        kwh=Sum("energy_kwh"), rated_ws=Sum(F("device_seconds") * F("device_model__power_w")),
    )
    if not agg["rated_ws"]:
        return []
    rated = Decimal(agg["rated_ws"]) / 3_600_000
    metered = agg["kwh"] or Decimal(0)
    if not ENERGY_LOW * rated <= metered <= ENERGY_HIGH * rated:
        return [f"energy_mismatch: metered {metered:.3f} kWh against {rated:.3f} kWh at rated power"]
    return []


# --- Expiry ----------------------------------------------------------------------------------------------

def vouchers_expire_due(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Expire vouchers past their date and return their unused balance to the programme budget. Commitments
    still open run on; what they release later lands in the voucher account and the next run returns it.
    Idempotent (keys name the amount returned so far)."""
    now = now or timezone.now()
    ids = list(
        Voucher.objects.filter(Q(status=VoucherStatus.ACTIVE, expires_at__lte=now) | Q(status=VoucherStatus.EXPIRED, account__balance_fen__gt=0))
        .order_by("pk").values_list("pk", flat=True)
    )
    expired = returned = 0
    for pk in ids:
        with transaction.atomic():
            v = Voucher.objects.select_for_update(of=("self",)).select_related("account", "programme").get(pk=pk)
            if v.status == VoucherStatus.ACTIVE:
                v.status = VoucherStatus.EXPIRED
                expired += 1
            balance = Account.objects.get(pk=v.account_id).balance_fen
            if balance > 0:
                ledger.transfer(
                    source=v.account, destination=Account(pk=v.programme.budget_account_id), amount_fen=balance,
                    idempotency_key=f"voucher:{v.pk}:return:{v.returned_fen}", kind=EntryKind.VOUCHER,
                    memo=f"voucher {v.pk} expired: unused balance back to programme {v.programme.code}", reference=f"voucher:{v.pk}",
                )
                v.returned_fen += balance
                returned += balance
            v.save(update_fields=["status", "returned_fen"])
    return {"expired": expired, "returned_fen": returned}


def amount_to_fen(amount: Decimal) -> int:
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise VoucherError("At most two decimals.", field="amount")
    return int(fen)
