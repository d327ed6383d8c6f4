from django.core.management.base import BaseCommand, CommandError

from ledger.verify import ledger_verify


class Command(BaseCommand):
    help = "Verify the ledger: balanced entries, cached balances equal to postings, no overdrawn account, holds."

    def handle(self, *args, **options):
        report = ledger_verify()
        for problem in report.problems:
            self.stderr.write(problem)
        summary = f"{report.accounts} accounts, {report.entries} entries, {report.postings} postings"
        if not report.ok:
            raise CommandError(f"ledger verification FAILED ({len(report.problems)} problems) over {summary}")
        self.stdout.write(f"ledger OK: {summary}; every entry balances and every balance matches its postings")
