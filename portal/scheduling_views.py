"""Compute scheduling in the portal: a buyer states a demand (quantity, window, grade, caps, objective), reads
the plan (allocations, totals, the best single-instrument alternative, or the binding constraint) with a chart
of where and when the compute runs, and confirms it; then reads the execution report (fills against the
plan, what changed in the books). Calls scheduling's services and selectors directly.

Access: the acting organisation's members see its demands; only its admins and traders state, re-plan and
confirm them (others 403); another organisation's demand is 404. Regulators and operators read every demand
and change none."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST, require_safe

from common.errors import ServiceError
from exchange.models import OrderStatus
from marketplace.models import ChipClass
from marketplace.regions import Metro, Region
from marketplace.units import ComputeUnit
from portal.context import acting_membership
from portal.views import GET_OR_POST, TRADING_ROLES
from scheduling import services
from scheduling.models import Demand, DemandStatus, Objective, ResidualPolicy

SPREAD, SINGLE = "spread", "single"
CHILD_STATUS = {"new": gettext_lazy("not sent yet"), "skipped": gettext_lazy("skipped"), "pending": gettext_lazy("pending")}


class DemandForm(forms.Form):
    """The demand as the API takes it (scheduling.api.serializers.DemandInSerializer), for a browser."""

    client_demand_id = forms.CharField(widget=forms.HiddenInput, max_length=40)
    quantity = forms.DecimalField(label=gettext_lazy("Quantity (standard units)"), max_digits=14, decimal_places=6, min_value=Decimal("0.000001"))
    unit = forms.ChoiceField(label=gettext_lazy("Unit"), choices=ComputeUnit.choices, initial=ComputeUnit.FP16_PFLOPS_HOUR)
    earliest_start = forms.DateTimeField(label=gettext_lazy("Earliest start"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    deadline = forms.DateTimeField(label=gettext_lazy("Deadline"), widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    windows = forms.ChoiceField(label=gettext_lazy("Delivery windows"), initial=SPREAD, widget=forms.RadioSelect,
                                choices=[(SPREAD, gettext_lazy("spread over several windows")), (SINGLE, gettext_lazy("all in one window"))])
    chip_classes = forms.MultipleChoiceField(label=gettext_lazy("Chip classes (none ticked: any)"), choices=ChipClass.choices, required=False,
                                             widget=forms.CheckboxSelectMultiple)
    domestic_only = forms.BooleanField(label=gettext_lazy("Domestic chips only"), required=False)
    latency_metro = forms.ChoiceField(label=gettext_lazy("Latency measured to"), choices=Metro.choices, initial=Metro.SHANGHAI)
    max_latency_ms = forms.DecimalField(label=gettext_lazy("Max latency (ms)"), required=False, max_digits=7, decimal_places=2, min_value=Decimal("0"))
    min_renewable_share = forms.DecimalField(label=gettext_lazy("Min renewable share (%)"), required=False, max_digits=5, decimal_places=2,
                                             min_value=Decimal("0"), max_value=Decimal("100"))
    max_pue = forms.DecimalField(label=gettext_lazy("Max PUE"), required=False, max_digits=4, decimal_places=2, min_value=Decimal("1.00"))
    min_security_level = forms.IntegerField(label=gettext_lazy("Min security level"), required=False, min_value=1, max_value=5)
    max_price = forms.DecimalField(label=gettext_lazy("Price cap (CNY per unit)"), required=False, max_digits=12, decimal_places=2, min_value=Decimal("0.01"))
    max_total = forms.DecimalField(label=gettext_lazy("Total cap (CNY)"), required=False, max_digits=14, decimal_places=2, min_value=Decimal("0.01"))
    objective = forms.ChoiceField(label=gettext_lazy("Objective"), choices=Objective.choices, initial=Objective.CHEAPEST)
    yuan_per_kg_co2 = forms.DecimalField(label=gettext_lazy("Price of carbon (CNY per kg CO2, weighted)"), required=False, max_digits=10,
                                         decimal_places=4, min_value=Decimal("0"))
    residual = forms.ChoiceField(label=gettext_lazy("If not all is filled"), choices=ResidualPolicy.choices, initial=ResidualPolicy.LEAVE)

    def clean(self):
        data = super().clean()
        start, deadline = data.get("earliest_start"), data.get("deadline")
        if start and deadline and deadline <= start:
            self.add_error("deadline", _("The deadline must be after the earliest start."))
        if deadline and deadline <= timezone.now():
            self.add_error("deadline", _("The deadline has passed."))
        if data.get("objective") == Objective.WEIGHTED and not data.get("yuan_per_kg_co2"):
            self.add_error("yuan_per_kg_co2", _("A weighted objective needs a positive price of carbon (CNY per kg CO2)."))
        return data

    def demand_fields(self) -> dict:
        d = dict(self.cleaned_data)
        d["single_window"] = d.pop("windows") == SINGLE
        d["chip_classes"] = sorted(set(d.get("chip_classes") or []))
        d["yuan_per_kg_co2"] = d.get("yuan_per_kg_co2") or Decimal("0")
        return d


def _reader(request: HttpRequest):
    """(membership, may change): the acting membership (None for a regulator or operator, who read all)."""
    user = request.user
    if user.is_regulator or user.is_operator:
        return None, False
    membership = acting_membership(request)
    if membership is None:
        raise PermissionDenied(_("This page is for members of an organisation."))
    return membership, membership.role in TRADING_ROLES


def _visible(request: HttpRequest, membership):
    qs = Demand.objects.select_related("organisation", "user")
    return qs if membership is None else qs.filter(organisation_id=membership.organisation_id)


def _demand_for(request: HttpRequest, pk: int, *, change: bool):
    membership, may_change = _reader(request)
    demand = _visible(request, membership).filter(pk=pk).first()
    if demand is None:
        raise Http404(_("No such demand."))
    if change and not may_change:
        raise PermissionDenied(_("Only the organisation's admins and traders may plan or confirm its demands."))
    return demand, may_change


def confirm_key(demand: Demand) -> str:
    """The execute form's hidden key: bound to the plan shown (its time), so confirming twice (a double
    click, a resubmitted page) buys once, and a page showing an older plan cannot buy the new one."""
    return salted_hmac("portal.demand.confirm", f"{demand.pk}:{demand.plan.get('planned_at', '')}").hexdigest()[:32]


@GET_OR_POST
@login_required
def demands(request: HttpRequest) -> HttpResponse:
    """The organisation's demands and the form to state a new one (plans it at once: a quote)."""
    membership, may_change = _reader(request)
    if request.method == "POST":
        if not may_change:
            raise PermissionDenied(_("Only the organisation's admins and traders may state demands."))
        form = DemandForm(request.POST)
        if form.is_valid():
            try:
                demand, created = services.demand_create(user=request.user, organisation=membership.organisation, fields=form.demand_fields())
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            else:
                if created:
                    messages.success(request, _("Planned on the books as they are now: nothing is bought until you confirm."))
                return redirect("portal:demand", pk=demand.pk)
    else:
        start = timezone.localtime().replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        form = DemandForm(initial={"client_demand_id": f"portal-{uuid.uuid4().hex[:24]}", "earliest_start": start,
                                   "deadline": start + dt.timedelta(days=7)})
    rows = list(_visible(request, membership).order_by("-id")[:50])
    return render(request, "portal/demands.html", {
        "form": form if may_change else None, "demands": rows, "org": membership.organisation if membership else None,
    }, status=400 if form.errors else 200)


@require_safe
@login_required
def demand(request: HttpRequest, pk: int) -> HttpResponse:
    demand, may_change = _demand_for(request, pk, change=False)
    demand = services.demand_status_refresh(demand=demand)
    return _detail(request, demand, may_change)


def _detail(request: HttpRequest, demand: Demand, may_change: bool, *, error: str = "", status: int = 200) -> HttpResponse:
    plan = demand.plan or {}
    children = list(demand.children.select_related("instrument").order_by("round", "index"))
    execution = demand.execution or {}
    rounds = []
    for r in execution.get("rounds", []):
        kids = [c for c in children if c.round == r["round"]]
        rounds.append({**r, "children": kids, "planned_lots": sum(c.planned_lots for c in kids), "filled_lots": sum(c.filled_lots for c in kids),
                       "planned_cost_fen": sum(c.planned_cost_fen for c in kids), "filled_cost_fen": sum(c.filled_cost_fen for c in kids)})
    labels = dict(OrderStatus.choices) | CHILD_STATUS
    for c in children:
        c.status_label = labels.get(c.status, c.status)
    can_confirm = may_change and demand.status == DemandStatus.PLANNED
    totals, alt = plan.get("totals") or {}, plan.get("single_instrument_alternative")
    saving = alt["totals"]["cost_fen"] - totals["cost_fen"] if alt and totals else 0
    allocations = [{**a, "start": timezone.localtime(dt.datetime.fromisoformat(a["delivery_start"])),
                    "end": timezone.localtime(dt.datetime.fromisoformat(a["delivery_end"])), "units_plain": _plain(Decimal(a["units"]))}
                   for a in plan.get("allocations") or []]
    return render(request, "portal/demand.html", {
        "allocations": allocations,
        "planned_at": timezone.localtime(dt.datetime.fromisoformat(plan["planned_at"])) if plan.get("planned_at") else None,
        "demand": demand, "plan": plan, "totals": totals, "alt": alt, "alt_saving_fen": saving, "alt_extra_fen": -saving,
        "binding": plan.get("binding"), "chart": plan_chart(plan, children), "execution": execution, "rounds": rounds,
        "may_change": may_change, "can_replan": may_change and demand.status in (DemandStatus.PLANNED, DemandStatus.INFEASIBLE),
        "can_confirm": can_confirm, "confirm_key": confirm_key(demand) if can_confirm else "", "error": error,
        "residual_binding": (execution.get("residual_plan") or {}).get("binding"),
    }, status=status)


@require_POST
@login_required
def demand_replan(request: HttpRequest, pk: int) -> HttpResponse:
    demand, may_change = _demand_for(request, pk, change=True)
    try:
        services.demand_replan(demand=demand)
    except ServiceError as exc:
        return _detail(request, demand, may_change, error=str(exc), status=exc.status_code)
    messages.success(request, _("Re-planned on the books as they are now."))
    return redirect("portal:demand", pk=pk)


@require_POST
@login_required
def demand_execute(request: HttpRequest, pk: int) -> HttpResponse:
    demand, may_change = _demand_for(request, pk, change=True)
    key = request.POST.get("confirm_key", "")
    if not constant_time_compare(key, confirm_key(demand)):
        message = _("The plan changed since this page was shown: review the new plan and confirm again.")
        return _detail(request, demand, may_change, error=message, status=409)
    if demand.status != DemandStatus.PLANNED:  # this plan was confirmed already (a double submit): buy nothing more
        messages.info(request, _("This plan was confirmed already: the execution report is below."))
        return redirect("portal:demand", pk=pk)
    try:
        services.demand_execute(user=request.user, demand=demand)
    except ServiceError as exc:
        demand.refresh_from_db()  # the row _demand_for scoped to the reader's organisation
        return _detail(request, demand, may_change, error=str(exc), status=exc.status_code)
    messages.success(request, _("Confirmed: the child orders were sent; the report shows what filled."))
    return redirect("portal:demand", pk=pk)


# --- the chart: where (data centres) and when (delivery windows), bars sized by units ----------------------

REGIONS = dict(Region.choices)
CHART_WIDTH, CHART_LEFT, CHART_RIGHT, ROW_HEIGHT, CHART_TOP, AXIS_HEIGHT = 760, 190, 12, 40, 8, 34


def plan_chart(plan: dict, children: list | None = None) -> dict | None:
    """Geometry for an inline SVG of the plan: one row per data centre, time across (the span of the planned
    windows), one bar per allocation and data centre, its height in proportion to the units from there
    (the largest bar fills the row); after execution a darker inner bar shows the share of the instrument's
    planned lots that filled."""
    allocations = plan.get("allocations") or []
    if not allocations:
        return None
    centres: dict[int, dict] = {}
    spans = []
    for a in allocations:
        start, end = dt.datetime.fromisoformat(a["delivery_start"]), dt.datetime.fromisoformat(a["delivery_end"])
        spans.append((start, end))
        for dc in a["data_centres"]:
            centres.setdefault(dc["id"], {"id": dc["id"], "name": dc["name"], "region": _short_region(dc["region"])})
    t0, t1 = min(s for s, _ in spans), max(e for _, e in spans)
    span = (t1 - t0).total_seconds() or 1.0
    inner = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    order = sorted(centres.values(), key=lambda c: (c["name"], c["id"]))
    row_of = {c["id"]: i for i, c in enumerate(order)}
    filled: dict[int, tuple[int, int]] = {}
    for c in children or []:
        if c.round == 1:
            f, p = filled.get(c.instrument_id, (0, 0))
            filled[c.instrument_id] = (f + c.filled_lots, p + c.planned_lots)
    units_of = []  # (allocation, data centre, units from it, window)
    for a, window in zip(allocations, spans, strict=True):
        per_lot = Decimal(a["units"]) / a["lots"]
        for dc in a["data_centres"]:
            units_of.append((a, dc, per_lot * dc.get("lots", a["lots"]), window))
    biggest = max(u for _, _, u, _ in units_of) or Decimal(1)
    bars = []
    for a, dc, units, (start, end) in units_of:
        x = CHART_LEFT + (start - t0).total_seconds() / span * inner
        w = max(3.0, (end - start).total_seconds() / span * inner - 2)
        h = max(4.0, float(units / biggest) * (ROW_HEIGHT - 10))
        y = CHART_TOP + row_of[dc["id"]] * ROW_HEIGHT + (ROW_HEIGHT - h) / 2
        bar = {"x": round(x + 1, 1), "y": round(y, 1), "w": round(w, 1), "h": round(h, 1), "units": _plain(units),
               "instrument": a["instrument_code"], "instrument_id": a["instrument"], "data_centre": dc["name"], "data_centre_id": dc["id"],
               "start": timezone.localtime(start), "end": timezone.localtime(end), "fill_w": None, "filled_share": None}
        if a["instrument"] in filled and filled[a["instrument"]][1]:
            share = min(filled[a["instrument"]][0] / filled[a["instrument"]][1], 1.0)
            bar["filled_share"] = round(share * 100)
            bar["fill_w"] = round(w * share, 1)
        bars.append(bar)
    height = CHART_TOP + len(order) * ROW_HEIGHT + AXIS_HEIGHT
    rows = [{"y": CHART_TOP + i * ROW_HEIGHT, "mid": CHART_TOP + i * ROW_HEIGHT + ROW_HEIGHT / 2 + 4, **c} for i, c in enumerate(order)]
    ticks = []
    local0, local1 = timezone.localtime(t0), timezone.localtime(t1)
    day = local0.replace(hour=0, minute=0, second=0, microsecond=0)
    if day < local0:
        day += dt.timedelta(days=1)
    days = max(1, int((local1 - day).total_seconds() // 86400) + 1)
    step = max(1, -(-days // 8))  # at most about eight labels
    while day <= local1:
        x = CHART_LEFT + (day - local0).total_seconds() / span * inner
        anchor = "end" if x > CHART_WIDTH - CHART_RIGHT - 20 else "middle"
        ticks.append({"x": round(x, 1), "label": day.strftime("%m-%d"), "anchor": anchor})
        day += dt.timedelta(days=step)
    if not ticks or span < 86400:  # a plan inside one day: label its ends by the hour
        ticks = [{"x": CHART_LEFT, "label": local0.strftime("%m-%d %H:%M"), "anchor": "start"},
                 {"x": CHART_WIDTH - CHART_RIGHT, "label": local1.strftime("%H:%M"), "anchor": "end"}]
    axis_y = CHART_TOP + len(order) * ROW_HEIGHT
    return {"width": CHART_WIDTH, "height": height, "left": CHART_LEFT, "right": CHART_WIDTH - CHART_RIGHT, "axis_y": axis_y,
            "label_y": axis_y + 16, "rows": rows, "bars": bars, "ticks": ticks, "start": local0, "end": local1}


def _short_region(code: str) -> str:
    """A region's name without its parenthesis (the chart's label column is narrow)."""
    return str(REGIONS.get(code, code)).split(" (")[0].split("（")[0]


def _plain(d: Decimal) -> str:
    return f"{d.normalize():f}"
