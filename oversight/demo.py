"""Demo oversight: bring the audit chain up to date and run the surveillance scans over what the other
steps made, so the regulator's views have something in them. Idempotent like the jobs it calls."""

from __future__ import annotations

from common.demo import SeedContext, step
from oversight.audit import audit_ingest
from oversight.surveillance import surveillance_scan


@step(order=90)
def oversight_catch_up(ctx: SeedContext) -> None:
    added = sum(audit_ingest().values())
    alerts = sum(surveillance_scan().values())
    ctx.notes.append(f"audit chain: {added} new record(s); surveillance: {alerts} new alert(s)")
