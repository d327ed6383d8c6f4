"""Voucher desk: an SME applies and follows its applications, vouchers and redemptions; the voucher
authority reviews applications and reads each programme's utilisation (vouchers' services and selectors)."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _

from common.api import id_of
from common.errors import ServiceError
from marketplace.models import PlatformRole, SizeClass
from portal.views import GET_OR_POST, GROUP_LABELS, _fen_from_cny, member_required
from vouchers import selectors, services
from vouchers.models import Application, ApplicationStatus, Programme, Redemption, Voucher


@GET_OR_POST
@member_required
def desk(request: HttpRequest, membership) -> HttpResponse:
    org = membership.organisation
    errors: dict[str, str] = {}
    now = timezone.now()
    open_programmes = list(Programme.objects.filter(valid_from__lte=now, valid_until__gt=now).order_by("code"))
    if request.method == "POST":
        amount = _fen_from_cny(request.POST.get("requested", ""))
        programme = next((p for p in open_programmes if str(p.pk) == request.POST.get("programme")), None)
        if programme is None:
            errors["programme"] = _("Choose a programme that is open.")
        if amount is None:
            errors["requested"] = _("Enter a positive amount in CNY with at most two decimals.")
        if not errors:
            try:
                application, _created = services.application_submit(
                    user=request.user, programme=programme, organisation=org, credit_code=request.POST.get("credit_code", "").strip(),
                    declared_size_class=request.POST.get("size_class", ""), requested_fen=amount,
                    idempotency_key=request.POST.get("idempotency_key") or uuid.uuid4().hex, industry=request.POST.get("industry", "").strip(),
                )
                messages.success(request, _("Application sent: the authority decides."))
                return redirect("portal:vouchers")
            except ServiceError as exc:
                field = exc.field if getattr(exc, "field", None) in ("credit_code", "size_class", "declared_size_class", "requested", "programme") else "form"
                errors["size_class" if field == "declared_size_class" else field] = str(exc)
    applications = Application.objects.filter(organisation=org).select_related("programme").order_by("-id")[:50]
    vouchers = [{"voucher": v, **selectors.voucher_summary(v)}
                for v in Voucher.objects.filter(organisation=org).select_related("programme", "account", "committed_account").order_by("-id")[:20]]
    redemptions = Redemption.objects.filter(voucher__organisation=org).select_related("contract__instrument", "contract__seller", "voucher__programme").order_by("-id")[:50]
    return render(request, "portal/vouchers.html", {
        "org": org, "programmes": open_programmes, "applications": applications, "vouchers": vouchers, "redemptions": redemptions,
        "errors": errors, "post": request.POST if errors else {}, "size_classes": SizeClass.choices, "new_key": uuid.uuid4().hex,
        "is_admin": membership.role == "admin",
    }, status=400 if errors else 200)


@GET_OR_POST
@login_required
def review(request: HttpRequest) -> HttpResponse:
    """Authorities decide; regulators and operators may read."""
    if not selectors.sees_all(request.user):
        raise PermissionDenied(_("This page is for the voucher authority."))
    errors: dict[int, str] = {}
    can_decide = request.user.platform_role == PlatformRole.AUTHORITY or request.user.is_superuser
    if request.method == "POST" and not can_decide:  # before reading the form: a refusal, whatever was sent
        raise PermissionDenied(_("Only the voucher authority decides applications."))
    application_id = id_of(request.POST.get("application", ""))
    application = Application.objects.filter(pk=application_id).first() if request.method == "POST" and application_id else None  # nosemgrep: object-by-id-without-owner -- the voucher authority's page (sees_all and can_decide checked above)
    if request.method == "POST" and application is None:
        messages.error(request, _("No such application."))
    elif request.method == "POST":
        try:
            if request.POST.get("decision") == "approve":
                raw = request.POST.get("amount", "").strip()
                amount = _fen_from_cny(raw) if raw else None
                if raw and amount is None:
                    raise services.VoucherError(_("Enter a positive amount in CNY with at most two decimals."), field="amount")
                services.application_approve(user=request.user, application_id=application.pk, amount_fen=amount)
                messages.success(request, _("Approved: the voucher is issued."))
            else:
                services.application_reject(user=request.user, application_id=application.pk, reason=request.POST.get("reason", ""))
                messages.success(request, _("Rejected."))
            return redirect("portal:voucher-review")
        except ServiceError as exc:
            if exc.status_code == 403:
                raise PermissionDenied(str(exc)) from None
            errors[application.pk] = str(exc)
    pending = list(Application.objects.filter(status=ApplicationStatus.PENDING).select_related("programme", "organisation").order_by("id")[:100])
    for a in pending:
        a.error = errors.pop(a.pk, "")
    for message in errors.values():  # about an application no longer pending
        messages.error(request, message)
    by = request.GET.get("by", "district")
    if by not in selectors.REPORT_GROUPS:
        by = "district"
    reports = []
    for programme in selectors.programme_list().order_by("code"):
        report = selectors.utilisation_report(programme=programme, by=by)
        budget = report["budget_balance_fen"] + report["issued_fen"]
        report["issued_pct"] = round(report["issued_fen"] * 100 / budget) if budget else 0
        report["paid_pct"] = round(report["paid_fen"] * 100 / budget) if budget else 0
        reports.append({"programme": programme, "report": report})
    return render(request, "portal/voucher_review.html", {
        "pending": pending, "reports": reports, "by": by, "by_label": GROUP_LABELS.get(by, by),
        "groups": [(g, GROUP_LABELS.get(g, g)) for g in selectors.REPORT_GROUPS],
        "can_decide": can_decide,
    }, status=400 if request.method == "POST" else 200)
