"""Model fields shared by the apps."""

from __future__ import annotations

from django.db import models


class KeyField(models.CharField):
    """A CharField holding a machine key (an idempotency key, a client order id, a reference such as
    `order:12:abc`), compared byte by byte on PostgreSQL (COLLATE "C"): its indexes are written with every
    order, hold and journal entry, and a locale's collation makes each comparison in them a strcoll call
    (an insert into such an index cost ~1.3 us more a row under C.UTF-8, more under en_US.UTF-8; bench/RESULTS.md,
    fifteenth session). Keys are looked up by equality and never sorted for people, so nothing is lost.
    Other databases keep their default (SQLite compares bytes already)."""

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        if connection.vendor == "postgresql" and not self.db_collation:
            params["collation"] = "C"
        return params
