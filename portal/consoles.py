"""Console actions: a supplier's metering file upload, a regulator's alert review and audit-chain check."""

from __future__ import annotations

import csv
import io
import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from common.api import BIGINT_MAX, whole_number
from common.errors import ServiceError
from marketplace.models import MemberRole
from portal.views import GET_OR_POST, member_required, overseer_required

INT_FIELDS = ("contract", "data_centre", "device_model", "device_count")
MAX_UPLOAD_BYTES = 5 * 1024 * 1024


def usage_events_parse(name: str, data: bytes) -> list:
    """A JSON file (a list of events, or {"events": [...]}) or a CSV file with a header row of the event
    fields. CSV cells are text: ids and counts become integers when they are whole numbers, empty optional
    cells are dropped, so metering validates every event as it would over the API."""
    text = data.decode("utf-8-sig")
    if name.lower().endswith(".json") or text.lstrip().startswith(("[", "{")):
        body = json.loads(text)
        return body.get("events", []) if isinstance(body, dict) else body
    events = []
    for row in csv.DictReader(io.StringIO(text)):
        event = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        for key in INT_FIELDS:
            number = whole_number(event.get(key, ""), 0, BIGINT_MAX)
            if number is not None:
                event[key] = number
        for key in ("energy_kwh", "utilisation_pct"):
            if event.get(key) == "":
                event.pop(key)
        events.append(event)
    return events


@require_POST
@member_required
def metering_upload(request: HttpRequest, membership) -> HttpResponse:
    from metering import services as metering

    org = membership.organisation
    if org.kind != "supplier" or membership.role not in (MemberRole.ADMIN, MemberRole.TRADER):
        raise PermissionDenied(_("Only a supplier's traders and administrators upload usage."))
    upload = request.FILES.get("file")
    error = ""
    if upload is None:
        error = _("Choose a file.")
    elif upload.size > MAX_UPLOAD_BYTES:
        error = _("The file is larger than 5 MB: split it.")
    else:
        try:
            events = usage_events_parse(upload.name, upload.read())
        except (ValueError, UnicodeDecodeError) as exc:
            events, error = [], _("The file is neither a JSON list of events nor a CSV with a header row: %(e)s") % {"e": exc}
        if not error and not (isinstance(events, list) and 0 < len(events) <= metering.MAX_BATCH):
            error = _("A file holds 1 to %(n)d events.") % {"n": metering.MAX_BATCH}
    if error:
        messages.error(request, error)
        return redirect("portal:supplier")
    outcome = metering.usage_batch_ingest(supplier_ids=[org.pk], events=events)
    rejected = [r for r in outcome.results if r.get("status") == "rejected"][:20]
    return render(request, "portal/metering_result.html", {"org": org, "outcome": outcome, "rejected": rejected})


@require_POST
@overseer_required
def alert_review(request: HttpRequest, pk: int) -> HttpResponse:
    from oversight import services as oversight

    try:
        oversight.alert_review(alert_id=pk, actor=request.user, to_status=request.POST.get("status", ""), note=request.POST.get("note", ""))
        messages.success(request, _("Alert %(id)d updated.") % {"id": pk})
    except ServiceError as exc:
        if exc.status_code == 403:
            raise PermissionDenied(str(exc)) from None
        messages.error(request, _("Alert %(id)d: %(error)s") % {"id": pk, "error": exc})
    return redirect("portal:regulator")


@GET_OR_POST
@overseer_required
def audit_verify(request: HttpRequest) -> HttpResponse:
    from oversight import audit

    result = audit.audit_verify() if request.method == "POST" else None
    return render(request, "portal/audit.html", {"result": result})
