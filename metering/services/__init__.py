"""Metering services: ingestion and rating (ingest), money movements (money), settlement and disputes."""

from metering.services.ingest import (
    MAX_BATCH,
    BatchTooLarge,
    IngestResult,
    deliveries_ensure,
    grace_period,
    usage_batch_ingest,
)
from metering.services.settlement import (
    MeteringError,
    deliveries_settle_due,
    delivery_settle,
    dispute_open,
    dispute_resolve,
    supplier_reputation_update,
)

__all__ = [
    "MAX_BATCH", "BatchTooLarge", "IngestResult", "MeteringError", "deliveries_ensure", "deliveries_settle_due",
    "delivery_settle", "dispute_open", "dispute_resolve", "grace_period", "supplier_reputation_update",
    "usage_batch_ingest",
]
