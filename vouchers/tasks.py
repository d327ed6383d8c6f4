from celery import shared_task

from vouchers import services


@shared_task(name="vouchers.tasks.redemptions_commit_new")
def redemptions_commit_new() -> dict[str, int]:
    """Commit voucher shares of new contracts of voucher holders (or record why they are blocked). Idempotent."""
    return services.redemptions_commit_new()


@shared_task(name="vouchers.tasks.vouchers_expire_due")
def vouchers_expire_due() -> dict[str, int]:
    """Expire vouchers past their date; unused balances go back to the programme budget. Idempotent."""
    return services.vouchers_expire_due()
