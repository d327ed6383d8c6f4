import json

from django.core.management.base import BaseCommand

from oversight.audit import audit_ingest


class Command(BaseCommand):
    help = "Append new source rows (order events, trades, contracts, journal entries, admin actions, reviews) to the audit chain."

    def handle(self, *args, **options):
        self.stdout.write(json.dumps(audit_ingest()))
