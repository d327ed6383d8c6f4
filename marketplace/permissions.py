"""Who may change the catalogue. Reading the public catalogue needs no login; writing always does.

Regulators read everything and write nothing; operators run the venue; organisation admins manage their own
organisation and data centres; admins and traders list capacity.
"""

from __future__ import annotations

from rest_framework import permissions

from marketplace.models import MemberRole
from marketplace.selectors import organisation_ids_for_user


class IsOperatorOrReadOnly(permissions.BasePermission):
    message = "Only platform operators may change this."

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_operator)


class IsNotRegulator(permissions.BasePermission):
    message = "Regulators have read-only access."

    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and not request.user.is_regulator)


class OwnedByMemberOrReadOnly(permissions.BasePermission):
    """Object writes need the given roles in the object's owning organisation (or the operator role)."""

    message = "You can change only what your own organisation owns."
    roles: tuple[str, ...] = (MemberRole.ADMIN,)
    owner_attr = "owner_id"

    def has_object_permission(self, request, view, obj) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        user = request.user
        if user.is_operator:
            return True
        return getattr(obj, self.owner_attr) in organisation_ids_for_user(user, self.roles)


class OrganisationAdminOrReadOnly(OwnedByMemberOrReadOnly):
    owner_attr = "pk"


class DataCentreOwnerOrReadOnly(OwnedByMemberOrReadOnly):
    owner_attr = "owner_id"


class ListingOwnerOrReadOnly(OwnedByMemberOrReadOnly):
    roles = (MemberRole.ADMIN, MemberRole.TRADER)
    owner_attr = "supplier_id"
