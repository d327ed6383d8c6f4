"""Demo funding: each SME buyer starts with money in its wallet, as if it had topped up by bank transfer."""

from common.demo import SeedContext, step
from ledger import services
from ledger.models import AccountKind, EntryKind, JournalEntry, Provider
from marketplace.demo import BUYERS
from marketplace.models import Organisation

# CNY, in fen: enough for a few days of a small training cluster at demo prices.
BUYER_FUNDS_FEN = [2_000_000_00, 500_000_00, 300_000_00, 1_200_000_00, 800_000_00, 650_000_00]


@step(order=20)
def fund_buyers(ctx: SeedContext) -> None:
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name=Provider.OFFLINE)
    services.platform_account(kind=AccountKind.FEES)
    for row, amount in zip(BUYERS, BUYER_FUNDS_FEN, strict=True):
        org = Organisation.objects.get(credit_code=row[3])
        available = services.account_for(organisation=org, kind=AccountKind.AVAILABLE)
        key = f"demo:fund:{org.credit_code}"
        if JournalEntry.objects.filter(idempotency_key=key).exists():
            continue
        services.transfer(
            source=clearing, destination=available, amount_fen=amount, idempotency_key=key,
            kind=EntryKind.TOP_UP, memo="demo opening balance (bank transfer)",
        )
        ctx.created += 1
