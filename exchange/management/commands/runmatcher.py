"""Run one matcher shard: `manage.py runmatcher --shard K --shards N` (production, over Redis)."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from exchange.transport import serve_redis


class Command(BaseCommand):
    help = "Run the single writer for the instruments with id %% N == K: recover from the database, then serve."

    def add_arguments(self, parser):
        parser.add_argument("--shard", type=int, default=0)
        parser.add_argument("--shards", type=int, default=settings.MATCHER_SHARDS)

    def handle(self, *args, shard: int, shards: int, **options):
        if not settings.REDIS_URL:
            raise CommandError("runmatcher needs REDIS_URL; the embedded default runs the matcher inside the server.")
        if not 0 <= shard < shards:
            raise CommandError("--shard must be in [0, --shards)")
        if shards != settings.MATCHER_SHARDS:
            raise CommandError(f"--shards {shards} differs from MATCHER_SHARDS={settings.MATCHER_SHARDS}: web processes would route to the wrong shard")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(f"matcher shard {shard}/{shards} serving", ending="\n")
        self.stdout.flush()
        serve_redis(shard=shard, shards=shards, stop=stop)
        self.stdout.write(f"matcher shard {shard}/{shards} stopped")
