"""Shared API plumbing: strict input, pagination, and errors as data."""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.utils.functional import cached_property
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from common.errors import ServiceError


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class NewestFirst(CursorPagination):
    """Lists that grow without end (orders, fills, the trade tape, the regulator's tapes): newest first, with
    `next`/`previous` cursor links and no total. A page is read through an index and never counts or skips
    the rows before it, so its cost does not grow with the history (page numbers cost a COUNT of the whole
    list and an OFFSET: the public tape counted every trade on every request, bench/RESULTS.md)."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


BIGINT_MAX = 2**63 - 1


def whole_number(value: Any, lo: int, hi: int) -> int | None:
    """A whole number from request input (query string, form, JSON, CSV) within [lo, hi], or None. Only ASCII
    digits count: `str.isdigit` also accepts "²" (which int() refuses: a 500) and other scripts' digits, and a
    number past 64 bits overflowed SQLite (another 500, found by the schemathesis run)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    else:
        text = str(value)
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            return None
        number = int(text)
    return number if lo <= number <= hi else None


def id_of(value: Any) -> int | None:
    """A database id from request input (1 to 2^63 - 1), or None."""
    return whole_number(value, 1, BIGINT_MAX)


class StrictFieldsMixin:
    """Reject input keys the serializer does not accept, so a typo never passes silently."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ReusedFieldsMixin:
    """Build a serializer's fields once per thread instead of once per instance.

    DRF deep-copies every declared field for each serializer instance (a field's copy re-runs its
    constructor): for the 12-field order serializer that was 12% of the websocket server's CPU per order. The
    fields are bound to the first instance a thread made; later instances of that class in the thread use
    them. Only for serializers whose fields keep no per-request state and never read `context` or `parent`
    while validating (no request-dependent defaults, no nested serializers); a thread validates one
    instance at a time, so none is shared between two validations in flight."""

    _reused = threading.local()

    @cached_property
    def fields(self):
        cache = self._reused.__dict__.setdefault("by_class", {})
        fields = cache.get(type(self))
        if fields is None:
            fields = cache[type(self)] = super().fields
        return fields


def _django_error_detail(exc: DjangoValidationError) -> Any:
    if hasattr(exc, "error_dict"):
        return {
            ("non_field_errors" if field == "__all__" else field): [m for e in errors for m in e.messages]
            for field, errors in exc.error_dict.items()
        }
    return {"non_field_errors": exc.messages}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's handler, plus model/service ValidationErrors as HTTP 400 with field-level messages."""
    if isinstance(exc, ServiceError):
        return Response(exc.detail, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_django_error_detail(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    return drf_exception_handler(exc, context)
