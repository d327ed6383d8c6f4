from celery import shared_task

from marketplace import services


@shared_task(name="marketplace.tasks.instruments_roll")
def instruments_roll() -> dict[str, int]:
    """List instruments ahead, open what is due and close at gate closure; idempotent."""
    return services.instruments_roll()
