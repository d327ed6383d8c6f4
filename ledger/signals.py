from django.db.models.signals import post_save
from django.dispatch import receiver

from marketplace.models import Organisation


@receiver(post_save, sender=Organisation, dispatch_uid="ledger_open_accounts")
def open_accounts(sender, instance: Organisation, created: bool, **kwargs) -> None:
    """Every organisation gets its accounts when it is registered."""
    if created:
        from ledger.services import accounts_open

        accounts_open(organisation=instance)
