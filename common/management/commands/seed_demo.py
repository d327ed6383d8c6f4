"""Load a realistic demo market. Safe to run again: existing rows are kept, nothing is duplicated."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils.module_loading import autodiscover_modules

from common import demo


class Command(BaseCommand):
    help = "Load the demo market: suppliers, data centres, products, instruments, funded buyers, platform users."

    def add_arguments(self, parser):
        parser.add_argument(
            "--password",
            help=f"Set every demo user's password to this (default for new users: {demo.DEFAULT_PASSWORD!r}; "
            "existing users keep theirs unless this is given).",
        )

    def handle(self, *args, password: str | None = None, **options):
        autodiscover_modules("demo")
        ctx = demo.SeedContext(password=password)
        with transaction.atomic():
            for run in demo.steps():
                run(ctx)
        for note in ctx.notes:
            self.stdout.write(note)
        self.stdout.write(
            f"Demo market ready: {ctx.created} new rows. "
            "Demo users: supplier1-6, buyer1-6, authority, regulator, operator."
        )
