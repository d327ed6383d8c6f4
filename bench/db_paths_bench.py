"""Per-request database paths: what the ORM costs against constant SQL, and psycopg list parameters against
PostgreSQL array literals (common.db). Client CPU per call, in this process, on PostgreSQL.

1. Account-token lookup: DRF's `Token.objects.select_related("user").get(key=...)` against
   marketplace.authentication's one constant statement (`User.objects.raw`, its cache off), and against
   its cache (`token_cached_us`: the default cache, Redis when REDIS_URL is set, and then the process's own
   copy, common.near, once its listener is subscribed).
2. A trader's organisations: the ORM query exchange.selectors used before, against its constant statement now.
3. One `unnest` of 9 arrays x 3 rows (the shape of the matcher's inserts): Python lists, adapted by psycopg
   element by element, against common.db.pg_array literals.
`SELECT 1` is measured alongside as the floor (a round trip and nothing else).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/suanli_dbpaths .venv/bin/python bench/db_paths_bench.py [--calls 2000] [--rounds 3]

The database is created and migrated if missing; one user, organisation and token are made in it. The last
line is JSON: the median over rounds of CPU microseconds per call for each path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_dbpaths"


def ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')  # nosec B608 # the bench's own database name
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=dict(os.environ, DATABASE_URL=url))


def per_call_us(fn, calls: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    ensure_database(url)

    import datetime as dt

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from common.db import pg_array
    from exchange import selectors
    from marketplace.authentication import TokenAuthentication
    from marketplace.models import MemberRole, Membership, Organisation, User

    user, _ = User.objects.get_or_create(username="bench-db-paths")
    org, _ = Organisation.objects.get_or_create(
        name="Bench DB Paths Co.", defaults={"kind": "buyer", "size_class": "small", "founded_on": dt.date(2020, 1, 1),
                                             "registration_region": "Shanghai Minhang", "credit_code": "91310000BENCHDB01"})
    Membership.objects.get_or_create(user=user, organisation=org, defaults={"role": MemberRole.TRADER})
    key = Token.objects.get_or_create(user=user)[0].key
    auth = TokenAuthentication()

    def token(seconds: int):
        def lookup():
            settings.AUTH_TOKEN_CACHE_SECONDS = seconds
            auth.authenticate_credentials(key)
        return lookup

    now = timezone.now()
    columns = [[1, 2, 3], ["accepted", "filled", "filled"], [5, 3, 2], [1500, 1500, 1500], ["", "", "x"],
               [None, 7, 8], [2, 2, 2], [now, now, now], [True, False, True]]
    types = ["bigint", "text", "integer", "bigint", "text", "bigint", "bigint", "timestamptz", "boolean"]
    sql = "SELECT count(*) FROM unnest(" + ", ".join(f"%s::{t}[]" for t in types) + ")"  # nosec B608 # constant

    def unnest(convert):
        with connection.cursor() as cur:
            cur.execute(sql, [convert(c) for c in columns])
            cur.fetchone()

    def ping():
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()

    paths = {
        "select_1_us": ping,
        "token_orm_us": lambda: Token.objects.select_related("user").get(key=key),
        "token_sql_us": token(0),
        "token_cached_us": token(60),
        "trading_orgs_orm_us": lambda: [m.organisation for m in user.memberships.filter(role__in=selectors.TRADING_ROLES).select_related("organisation").order_by("organisation_id")],
        "trading_orgs_sql_us": lambda: selectors._trading_organisations(user),
        "unnest_lists_us": lambda: unnest(list),
        "unnest_literals_us": lambda: unnest(pg_array),
    }
    results: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        for name, fn in paths.items():
            results[name].append(per_call_us(fn, args.calls))
        print(f"round {r + 1}: " + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in results.items()), flush=True)
    out = {name: round(statistics.median(values), 1) for name, values in results.items()}
    out["token_ratio"] = round(out["token_sql_us"] / out["token_orm_us"], 2)
    out["trading_orgs_ratio"] = round(out["trading_orgs_sql_us"] / out["trading_orgs_orm_us"], 2)
    out["unnest_ratio"] = round(out["unnest_literals_us"] / out["unnest_lists_us"], 2)
    out.update(calls=args.calls, rounds=args.rounds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
