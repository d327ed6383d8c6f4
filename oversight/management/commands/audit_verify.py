import json

from django.core.management.base import BaseCommand, CommandError

from oversight.audit import audit_ingest, audit_verify


class Command(BaseCommand):
    help = "Verify the hash-chained audit log and its signed checkpoints; name the first broken record."

    def add_arguments(self, parser):
        parser.add_argument("--no-sources", action="store_true", help="check the chain only, not the source rows")
        parser.add_argument("--ingest", action="store_true", help="append new source rows first")

    def handle(self, *args, no_sources=False, ingest=False, **options):
        if ingest:
            self.stdout.write(f"ingested: {json.dumps(audit_ingest())}")
        result = audit_verify(check_sources=not no_sources)
        self.stdout.write(json.dumps(result.as_dict()))
        if not result.ok:
            raise CommandError(f"audit chain broken at record #{result.first_broken_seq}: {result.reason}")
        self.stdout.write(self.style.SUCCESS(f"audit chain intact: {result.records} records, {result.checkpoints} checkpoints"))
