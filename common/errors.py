"""Service-layer errors that reach API clients as data (HTTP status plus field-level messages)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    field = "non_field_errors"

    def __init__(self, message: str, *, field: str | None = None, status_code: int | None = None):
        super().__init__(message)
        if field:
            self.field = field
        if status_code:
            self.status_code = status_code

    @property
    def detail(self) -> dict[str, list[str]]:
        return {self.field: [str(self)]}
