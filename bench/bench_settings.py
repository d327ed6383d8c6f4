"""Settings for bench/exchange_bench.py's baseline server: the project's settings with one extra route,
a validate-only order endpoint (bench/bench_urls.py). Nothing else differs, so the baseline pays the same
middleware, authentication and serializer costs as real order entry, and none of its writes."""

from config.settings import *  # noqa: F401,F403

ROOT_URLCONF = "bench.bench_urls"
