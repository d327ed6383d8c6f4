"""The portal: server-rendered pages over the apps' selectors and services; live parts (book, tape, own
orders) come over the websockets and the order ticket posts to the REST API (see static/portal/*.js).

Access: public pages for anyone; member pages need a sign-in (redirect) and act for the organisation chosen
with the switcher (only the user's own); the supplier console needs a supplier organisation (403); the
regulator console a regulator or operator (403)."""

from __future__ import annotations

import csv
import datetime as dt
import uuid
from decimal import Decimal, InvalidOperation
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from common.api import whole_number
from common.errors import ServiceError
from exchange import selectors as exchange_selectors
from exchange.models import BookState, Contract, Order, OrderStatus, Trade
from ledger import selectors as ledger_selectors
from ledger.models import Account, Payout, TopUp
from ledger.payments import services as payments
from marketplace import selectors as market_selectors
from marketplace.models import ChipClass, Instrument, InstrumentStatus, Listing, MemberRole, Product
from marketplace.regions import Region
from portal.context import SESSION_KEY, acting_membership, memberships_for

TRADING_ROLES = (MemberRole.ADMIN, MemberRole.TRADER)
GET_OR_POST = require_http_methods(["GET", "HEAD", "POST"])  # a page with a form; other methods are 405
# Labels for the grouping keys of the inventory report and the voucher utilisation report.
GROUP_LABELS = {
    "region": gettext_lazy("region"), "supplier": gettext_lazy("supplier"), "chip_class": gettext_lazy("chip class"),
    "domestic": gettext_lazy("domestic or imported chips"), "device_model": gettext_lazy("device model"),
    "data_centre": gettext_lazy("data centre"), "district": gettext_lazy("buyer's district"), "industry": gettext_lazy("industry"),
    "chip": gettext_lazy("chip class"),
}


def member_required(view):
    """Signed in (else redirect to sign-in) and a member of at least one organisation (else 403)."""

    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        membership = acting_membership(request)
        if membership is None:
            raise PermissionDenied(_("This page is for members of an organisation."))
        return view(request, membership, *args, **kwargs)

    return wrapped


def overseer_required(view):
    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not (request.user.is_regulator or request.user.is_operator):
            raise PermissionDenied(_("This page is for regulators."))
        return view(request, *args, **kwargs)

    return wrapped


def _last_prices(instruments: list[Instrument]) -> dict[int, dict]:
    """Last price and 24 h volume per instrument, in two queries."""
    since = timezone.now() - dt.timedelta(hours=24)
    ids = [i.pk for i in instruments]
    last = dict(BookState.objects.filter(instrument_id__in=ids).values_list("instrument_id", "last_price_fen_per_lot"))
    volume = {
        row["instrument_id"]: row
        for row in Trade.objects.filter(instrument_id__in=ids, created_at__gte=since)
        .values("instrument_id").annotate(volume=Sum("quantity"), trades=Count("id"), value=Sum("value_fen"))
    }
    return {i: {"last": last.get(i), "volume": volume.get(i, {}).get("volume") or 0, "trades": volume.get(i, {}).get("trades") or 0} for i in ids}


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    instruments = list(
        Instrument.objects.filter(status__in=[InstrumentStatus.OPEN, InstrumentStatus.HALTED])
        .select_related("product").order_by("product__code", "delivery_start")[:60]
    )
    stats = _last_prices(instruments)
    rows = [{"instrument": i, **stats[i.pk]} for i in instruments]
    inventory = market_selectors.inventory_report(group_by="region")["total"]
    return render(request, "portal/home.html", {"rows": rows, "inventory": inventory})


_FILTER_BOUND = Decimal(10**9)


def _decimal(raw: str | None) -> Decimal | None:
    """A filter's number, or None. "NaN" and "Infinity" parse as decimals, and filtering on them was a 500, as was
    1e999999 on PostgreSQL (numeric overflow): a finite number is held within +-10^9, which every filtered
    column's values are, so the filter means the same."""
    try:
        value = Decimal(raw) if raw not in (None, "") else None
    except InvalidOperation:
        return None
    if value is None or not value.is_finite():
        return None
    return max(-_FILTER_BOUND, min(value, _FILTER_BOUND))


@require_safe
def products(request: HttpRequest) -> HttpResponse:
    """The catalogue with filters: chip class, region (a listing in a data centre there), latency ceiling,
    minimum green share, minimum security level."""
    qs = Product.objects.filter(is_active=True).order_by("code")
    f = request.GET
    if f.get("chip_class") in ChipClass.values:
        qs = qs.filter(chip_class=f["chip_class"])
    if f.get("region") in Region.values:
        qs = qs.filter(listings__data_centre__region=f["region"], listings__is_active=True).distinct()
    latency = _decimal(f.get("max_latency"))
    if latency is not None:
        qs = qs.filter(max_latency_ms__isnull=False, max_latency_ms__lte=latency)
    green = _decimal(f.get("min_green"))
    if green is not None:
        qs = qs.filter(min_renewable_share__gte=green)
    security = whole_number(f.get("min_security", ""), 0, 100)
    if security is not None:
        qs = qs.filter(min_security_level__gte=security)
    open_counts = {}
    for inst in Instrument.objects.filter(product__in=list(qs), status=InstrumentStatus.OPEN).order_by("delivery_start"):
        open_counts.setdefault(inst.product_id, []).append(inst)
    rows = [{"product": p, "instruments": open_counts.get(p.pk, [])[:5]} for p in qs]
    return render(request, "portal/products.html", {
        "rows": rows, "chip_classes": ChipClass.choices, "regions": Region.choices, "filters": f,
        "security_levels": range(1, 6),
    })


@require_safe
def inventory(request: HttpRequest) -> HttpResponse:
    group_by = request.GET.get("group_by", "region")
    if group_by not in market_selectors.INVENTORY_GROUPS:
        group_by = "region"
    report = market_selectors.inventory_report(group_by=group_by)
    centres = market_selectors.data_centre_list().filter(is_active=True).order_by("name")
    return render(request, "portal/inventory.html", {"report": report, "centres": centres, "groups": [(g, GROUP_LABELS[g]) for g in market_selectors.INVENTORY_GROUPS], "group_by": group_by})


@require_POST
def organisation_switch(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect("login")
    wanted = request.POST.get("organisation", "")
    if any(str(m.organisation_id) == wanted for m in memberships_for(request)):
        request.session[SESSION_KEY] = int(wanted)
    else:
        messages.error(request, _("No such organisation among yours."))
    target = request.POST.get("next", "/")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "/"
    return redirect(target)


@require_safe
def instrument(request: HttpRequest, pk: int) -> HttpResponse:
    inst = get_object_or_404(Instrument.objects.select_related("product"), pk=pk)
    now = timezone.now()
    membership = acting_membership(request)
    can_trade = membership is not None and membership.role in TRADING_ROLES
    available_fen = None
    listings = []
    if can_trade:
        available_fen = ledger_selectors.balances_get(organisation=membership.organisation)["available"]
        listings = list(Listing.objects.filter(supplier=membership.organisation, product=inst.product, is_active=True).select_related("data_centre", "device_model"))
    band = inst.reference_price * inst.price_band_bps / 10000
    candles = exchange_selectors.candles_get(instrument=inst, interval="1h", since=now - dt.timedelta(days=3), until=now + dt.timedelta(hours=1))
    tape = list(Trade.objects.filter(instrument=inst).order_by("-seq").values("seq", "price_fen_per_lot", "quantity", "taker_side", "created_at")[:30])
    config = {
        "instrument": inst.pk,
        "lot_size": str(inst.lot_size),
        "tick": str(inst.tick_size),
        "band_low": str((inst.reference_price - band).quantize(Decimal("0.01"))),
        "band_high": str((inst.reference_price + band).quantize(Decimal("0.01"))),
        "min_lots": inst.min_order_lots,
        "max_lots": inst.max_order_lots,
        "taker_fee_bps": inst.taker_fee_bps,
        "available_fen": available_fen,
        "organisation": membership.organisation_id if membership else None,
        "signed_in": request.user.is_authenticated,
        "candles": candles,
        # Status words for the live parts, in the page's language.
        "labels": {str(value): str(label) for value, label in [*OrderStatus.choices, *InstrumentStatus.choices]},
        "tape": [{**t, "created_at": t["created_at"].isoformat()} for t in tape],
    }
    my_orders = []
    if membership is not None:
        my_orders = Order.objects.filter(organisation=membership.organisation, instrument=inst).order_by("-id")[:20]
    return render(request, "portal/instrument.html", {
        "inst": inst, "config": config, "can_trade": can_trade, "listings": listings, "my_orders": my_orders,
        "band_low": config["band_low"], "band_high": config["band_high"],
    })


@require_safe
@member_required
def orders(request: HttpRequest, membership) -> HttpResponse:
    org = membership.organisation
    open_orders = Order.objects.filter(organisation=org, status__in=[OrderStatus.OPEN, OrderStatus.PENDING]).select_related("instrument").order_by("-id")[:100]
    recent = Order.objects.filter(organisation=org).exclude(status__in=[OrderStatus.OPEN, OrderStatus.PENDING]).select_related("instrument").order_by("-id")[:50]
    fills = Trade.objects.filter(Q(buyer=org) | Q(seller=org)).select_related("instrument").order_by("-id")[:50]
    contracts = Contract.objects.filter(Q(buyer=org) | Q(seller=org)).select_related("instrument", "buyer", "seller").order_by("-id")[:50]
    return render(request, "portal/orders.html", {
        "open_orders": open_orders, "recent": recent, "fills": fills, "contracts": contracts, "org": org,
        "can_trade": membership.role in TRADING_ROLES,
    })


def _fen_from_cny(raw: str) -> int | None:
    value = _decimal(raw)
    if value is None or value <= 0 or value != value.quantize(Decimal("0.01")):
        return None
    return int(value * 100)


LOW_BALANCE_KEY = "portal_low_balance_fen"


@GET_OR_POST
@member_required
def wallet(request: HttpRequest, membership) -> HttpResponse:
    org = membership.organisation
    errors: dict[str, str] = {}
    if request.method == "POST":
        action = request.POST.get("action")
        if membership.role not in TRADING_ROLES and action != "alert":
            raise PermissionDenied(_("Viewers may not move money."))
        amount = _fen_from_cny(request.POST.get("amount", ""))
        if action == "alert":
            threshold = _fen_from_cny(request.POST.get("threshold", ""))
            if threshold is None and request.POST.get("threshold"):
                errors["threshold"] = _("Enter an amount in CNY, e.g. 1000.00.")
            else:
                request.session[f"{LOW_BALANCE_KEY}:{org.pk}"] = threshold
                messages.success(request, _("Low-balance alert saved."))
                return redirect("portal:wallet")
        elif amount is None:
            errors[f"{action}_amount"] = _("Enter a positive amount in CNY with at most two decimals.")
        else:
            key = request.POST.get("idempotency_key") or uuid.uuid4().hex
            try:
                if action == "top_up":
                    top_up, _created = payments.top_up_create(
                        organisation=org, amount_fen=amount, idempotency_key=key,
                        bank_reference=request.POST.get("bank_reference", "").strip(), requested_by=request.user)
                    if top_up.checkout_url:  # Stripe Checkout, when configured
                        return redirect(top_up.checkout_url)
                    messages.success(request, _("Top-up recorded: transfer the amount with the reference shown; an operator confirms it."))
                    return redirect("portal:wallet")
                if action == "payout":
                    if membership.role != MemberRole.ADMIN:
                        raise PermissionDenied(_("Only an organisation's administrators may request payouts."))
                    payments.payout_request(organisation=org, amount_fen=amount, idempotency_key=key,
                                            destination=request.POST.get("destination", ""), requested_by=request.user)
                    messages.success(request, _("Payout requested."))
                    return redirect("portal:wallet")
            except ServiceError as exc:
                field = getattr(exc, "field", None) or "amount"
                errors[f"{action}_{field}" if field in ("amount", "destination", "bank_reference") else f"{action}_amount"] = str(exc)
    balances = ledger_selectors.balances_get(organisation=org)
    accounts = Account.objects.filter(organisation=org)
    postings = ledger_selectors.posting_list_for_accounts(accounts)[:50]
    threshold = request.session.get(f"{LOW_BALANCE_KEY}:{org.pk}")
    return render(request, "portal/wallet.html", {
        "org": org, "balances": balances, "postings": postings, "errors": errors, "threshold": threshold,
        "low": threshold is not None and balances["available"] < threshold,
        "top_ups": TopUp.objects.filter(organisation=org).order_by("-id")[:20],
        "payouts": Payout.objects.filter(organisation=org).order_by("-id")[:20],
        "can_move": membership.role in TRADING_ROLES, "is_admin": membership.role == MemberRole.ADMIN,
        "new_key": uuid.uuid4().hex, "post": request.POST if errors else {},
    }, status=400 if errors else 200)


class _Echo:
    def write(self, value):
        return value


@require_safe
@member_required
def statement_csv(request: HttpRequest, membership) -> StreamingHttpResponse:
    accounts = Account.objects.filter(organisation=membership.organisation)
    rows = ledger_selectors.posting_list_for_accounts(accounts).order_by("id")
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(["posting", "time", "account", "kind", "reference", "memo", "amount_cny", "balance_after_cny"])
        for p in rows.iterator(chunk_size=1000):
            yield writer.writerow([p.pk, p.entry.created_at.isoformat(), p.account.kind, p.entry.kind, p.entry.reference, p.entry.memo,
                                   f"{Decimal(p.amount_fen) / 100:.2f}", f"{Decimal(p.balance_after_fen) / 100:.2f}"])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="statement-{membership.organisation_id}.csv"'
    return response


@require_safe
@member_required
def supplier(request: HttpRequest, membership) -> HttpResponse:
    org = membership.organisation
    if org.kind != "supplier":
        raise PermissionDenied(_("The supplier console is for supplier organisations."))
    centres = market_selectors.data_centre_list().filter(owner=org).order_by("name")
    listings = Listing.objects.filter(supplier=org).select_related("data_centre", "product", "device_model").order_by("-id")[:100]
    contracts = list(Contract.objects.filter(seller=org).select_related("instrument", "buyer").order_by("-id")[:50])
    deliveries = {}
    try:
        from metering.models import ContractDelivery

        for d in ContractDelivery.objects.filter(contract__in=contracts):
            deliveries[d.contract_id] = d
    except (ImportError, LookupError):  # metering not there: no progress column
        pass
    rows = [{"contract": c, "delivery": deliveries.get(c.pk)} for c in contracts]
    report = market_selectors.inventory_report(group_by="data_centre", supplier=org)
    return render(request, "portal/supplier.html", {
        "org": org, "centres": centres, "listings": listings, "rows": rows, "report": report,
        "payouts": Payout.objects.filter(organisation=org).order_by("-id")[:20],
    })


@require_safe
@overseer_required
def regulator(request: HttpRequest) -> HttpResponse:
    f = request.GET
    qs = Trade.objects.select_related("instrument", "buyer", "seller").order_by("-id")
    if f.get("instrument", "").strip():
        qs = qs.filter(instrument__code__icontains=f["instrument"].strip())
    if f.get("organisation", "").strip():
        name = f["organisation"].strip()
        qs = qs.filter(Q(buyer__name__icontains=name) | Q(seller__name__icontains=name) | Q(buyer__name_zh__icontains=name) | Q(seller__name_zh__icontains=name))
    from oversight.models import Alert

    alerts = Alert.objects.order_by("-id")[:20]
    return render(request, "portal/regulator.html", {"trades": qs[:100], "filters": f, "alerts": alerts, "export_query": f.urlencode()})


@require_safe
@overseer_required
def metrics(request: HttpRequest) -> HttpResponse:
    from oversight import metrics as oversight_metrics

    until = timezone.now()
    report = oversight_metrics.policy_metrics(level="platform", since=until - dt.timedelta(days=30), until=until)
    platform = report["groups"][0] if report["groups"] else {"metrics": {}, "meets_targets": {}}
    bars = []
    for name, target in report["targets"].items():
        value = platform["metrics"].get(name)
        goal = Decimal(target["value"])
        v = Decimal(str(value)) if value is not None else None
        # Bar length: the value as a share of the target, capped at 150%. A ceiling ("<=") is a pass or a
        # fail, not a share: at the line when met, past it when not.
        meets = platform.get("meets_targets", {}).get(name)
        if target["op"] == "<=":
            pct = 0 if meets is None else (100 if meets else 150)
        else:
            pct = min(int(v * 100 / goal), 150) if v is not None and goal else 0
        bars.append({"name": name, "text": target["text"], "op": target["op"], "target": target["value"], "value": value,
                     "meets": meets, "pct": pct})
    return render(request, "portal/metrics.html", {"report": report, "platform": platform, "bars": bars})
