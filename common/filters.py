"""Filters shared by the list endpoints."""

from __future__ import annotations

import datetime as dt

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, given to the database in UTC. PostgreSQL refuses offsets beyond +-15:59 (ISO allows
    up to 23:59), which failed the query and, inside a transaction, everything after it."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return value
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            raise ValidationError("Enter a time between the years 1 and 9999 in UTC.", code="invalid") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField
