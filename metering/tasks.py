from celery import shared_task

from metering import services


@shared_task(name="metering.tasks.deliveries_settle_due")
def deliveries_settle_due() -> dict[str, int]:
    """Settle contracts whose window and grace period are over; refresh supplier reputation. Idempotent."""
    return services.deliveries_settle_due()


@shared_task(name="metering.tasks.delivery_settle")
def delivery_settle(contract_id: int) -> str:
    """Settle one contract (idempotent)."""
    return services.delivery_settle(contract_id=contract_id).status
