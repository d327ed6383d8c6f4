"""Template context for every portal page: the user's organisations and the one they act for."""

from __future__ import annotations

from django.http import HttpRequest

from marketplace.models import Membership, Organisation

SESSION_KEY = "portal_organisation"


def memberships_for(request: HttpRequest) -> list[Membership]:
    user = request.user
    # A regulator's role wins over any membership: in the portal it never acts for an organisation.
    if not user.is_authenticated or user.is_regulator:
        return []
    cached = getattr(request, "_portal_memberships", None)
    if cached is None:
        cached = list(user.memberships.select_related("organisation").order_by("organisation__name"))
        request._portal_memberships = cached
    return cached


def acting_membership(request: HttpRequest) -> Membership | None:
    """The membership the user acts through: the one chosen with the switcher, else the first."""
    memberships = memberships_for(request)
    if not memberships:
        return None
    chosen = request.session.get(SESSION_KEY)
    return next((m for m in memberships if m.organisation_id == chosen), memberships[0])


def acting_organisation(request: HttpRequest) -> Organisation | None:
    membership = acting_membership(request)
    return membership.organisation if membership else None


def portal(request: HttpRequest) -> dict:
    membership = acting_membership(request)
    return {
        "portal_memberships": memberships_for(request),
        "acting_membership": membership,
        "acting_org": membership.organisation if membership else None,
    }
