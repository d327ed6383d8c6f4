"""The portal's "API keys" page (/api-keys/): list, create (the key shown on that one answer), revoke."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _

from apikeys import selectors, services
from apikeys.models import ApiKey, Scope
from common.api import whole_number
from common.errors import ServiceError
from portal.views import GET_OR_POST


@GET_OR_POST
@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    errors: dict[str, str] = {}
    created_key = None
    if request.method == "POST" and request.POST.get("action") == "revoke":
        key = get_object_or_404(ApiKey, pk=request.POST.get("key") or 0, user=request.user)
        services.api_key_revoke(key=key)
        messages.success(request, _("Key %(name)s revoked.") % {"name": key.name})
        return redirect("portal:api-keys")
    if request.method == "POST" and request.POST.get("action") == "create":
        name = request.POST.get("name", "").strip()
        days = request.POST.get("expires_days", "").strip()
        expires_at = None
        if not name or len(name) > 100:
            errors["name"] = _("Give the key a name of 1 to 100 characters.")
        if days:
            if whole_number(days, 1, 3650) is None:
                errors["expires_days"] = _("A whole number of days from 1 to 3650, or empty for no expiry.")
            else:
                expires_at = timezone.now() + dt.timedelta(days=int(days))
        if not errors:
            try:
                _row, created_key = services.api_key_create(
                    user=request.user, name=name, scopes=request.POST.getlist("scopes"), expires_at=expires_at)
            except ServiceError as exc:
                errors[exc.field if exc.field in ("scopes", "expires_days") else "name"] = str(exc)
    response = render(request, "portal/api_keys.html", {
        "keys": selectors.api_key_list_for_user(request.user), "created_key": created_key, "errors": errors,
        "post": request.POST if errors else {}, "scopes": [Scope.TRADE, Scope.WITHDRAW],
    }, status=400 if errors else 200)
    response["Cache-Control"] = "no-store"  # the page that shows a new key must not be kept anywhere
    return response
