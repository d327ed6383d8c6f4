from celery import shared_task

from oversight import audit, surveillance


@shared_task(name="oversight.tasks.audit_ingest")
def audit_ingest() -> dict[str, int]:
    """Append new source rows to the hash chain and sign a checkpoint; idempotent."""
    return audit.audit_ingest()


@shared_task(name="oversight.tasks.surveillance_scan")
def surveillance_scan() -> dict[str, int]:
    """Run every surveillance scan over the lookback window; idempotent (alerts are unique per occurrence)."""
    return {str(k): v for k, v in surveillance.surveillance_scan().items()}
