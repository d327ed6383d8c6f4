"""Ledger benchmark: balanced transfers per second through the real posting service, against pgbench.

Usage::

    .venv/bin/python bench/ledger_bench.py [--workers 8] [--batch 20] [--seconds 10] [--rounds 3]
        [--accounts 10000] [--hot 10] [--fresh] [--profile FILE]

DATABASE_URL names the ledger database (default postgres://postgres@127.0.0.1:5432/suanli_bench); it is
created if missing and migrated. pgbench uses a database of its own on the same server (the ledger's name
with ``_pgbench``), initialised once with ``pgbench -i -s 10``.

Workload:

* ``--accounts`` customer accounts (organisations opened with ``accounts_open``, four accounts each, all of
  them non-negative kinds), funded by one entry from a provider clearing account;
* N worker processes (spawned, ``django.setup()`` in each, one connection each) kept alive for the whole
  run; each posts batches of B transfers with ``ledger.services.entries_post`` (one transaction per batch,
  the accounts locked FOR UPDATE in id order by the service), amounts 1-1,000 fen, pairs drawn at random
  among all the accounts ("spread") or among the first ``--hot`` of them ("hot");
* each round runs pgbench's TPC-B-like script (``pgbench -c N -j 2 -T secs -M prepared``), then the spread
  case, then the hot case, one at a time, for ``--seconds`` each.

What is counted: a transfer counts when the call that posted its batch returned (the transaction
committed). Throughput is committed transfers over the time from the common start to the last worker's
last commit. Failures are counted by kind (deadlock, serialization failure, insufficient funds, other)
and are not retried: a failed batch rolled back and counts for nothing.

After each case the number of entries (and postings) stored under the case's reference is compared with
what the workers reported: nothing lost, nothing doubled. At the end the whole journal is checked in SQL:
all postings sum to 0, every entry's postings sum to 0 and number at least two, every cached balance
equals the sum of its postings and the balance_after of its last posting, no non-negative account is or
ever was (per balance_after) below zero.

Medians of the rounds are reported; ratio_to_pgbench is the median of the per-round ratios (each case
against the pgbench run of the same round). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench"
FUND_FEN = 10**9  # 10M CNY per account: a random walk of 1-1,000 fen steps never reaches zero
MAX_AMOUNT_FEN = 1_000
ORG_PREFIX = "bench-org-"


def _django_setup(url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = url
    import django

    django.setup()


def _pg_args(url: str) -> tuple[list[str], str]:
    """pgbench/psql connection options and the database name of a postgres:// URL."""
    u = urlsplit(url)
    args = ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    return args, u.path.lstrip("/")


def _admin_connect(url: str):
    import psycopg

    u = urlsplit(url)
    return psycopg.connect(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname="postgres",
        autocommit=True,
    )


def database_ensure(url: str, *, fresh: bool) -> None:
    _, name = _pg_args(url)
    with _admin_connect(url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


# --- Setup in the parent -------------------------------------------------------------------------------


def accounts_prepare(n_accounts: int) -> tuple[list[int], int]:
    """Open enough organisations' accounts and top every one of them up to FUND_FEN; returns the account
    ids (sorted) and the clearing account's id."""
    import datetime

    from django.db import transaction

    from ledger.models import Account, AccountKind, EntryKind
    from ledger.services import EntryRequest, accounts_open, entries_post, platform_account
    from marketplace.models import Organisation, OrganisationKind, SizeClass
    from marketplace.validators import make_credit_code, validate_credit_code

    n_orgs = -(-n_accounts // 4)
    have = set(Organisation.objects.filter(name__startswith=ORG_PREFIX).values_list("name", flat=True))
    missing = []
    for i in range(n_orgs):
        name = f"{ORG_PREFIX}{i:06d}"
        if name not in have:
            code = make_credit_code("91310000", f"B{i:07d}")
            validate_credit_code(code)
            missing.append(
                Organisation(
                    name=name,
                    credit_code=code,
                    kind=OrganisationKind.BOTH,
                    size_class=SizeClass.SMALL,
                    founded_on=datetime.date(2020, 1, 1),
                    registration_region="Shanghai Pudong",
                )
            )
    t0 = time.perf_counter()
    if missing:
        Organisation.objects.bulk_create(missing, batch_size=1000)
    orgs = list(Organisation.objects.filter(name__startswith=ORG_PREFIX).order_by("name")[:n_orgs])
    opened = set(Account.objects.filter(organisation__in=orgs).values_list("organisation_id", flat=True).distinct())
    with transaction.atomic():
        for org in orgs:
            if org.pk not in opened:
                accounts_open(organisation=org)
    ids = sorted(Account.objects.filter(organisation__in=orgs).values_list("id", flat=True))[:n_accounts]
    clearing = platform_account(kind=AccountKind.PROVIDER_CLEARING, name="bench")
    low = list(Account.objects.filter(pk__in=ids, balance_fen__lt=FUND_FEN // 2).values_list("id", "balance_fen"))
    if low:
        postings = [(pk, FUND_FEN - bal) for pk, bal in low]
        postings.append((clearing.pk, -sum(amount for _, amount in postings)))
        entries_post(
            [
                EntryRequest(
                    idempotency_key=f"bench:fund:{secrets.token_hex(8)}",
                    kind=EntryKind.TOP_UP,
                    postings=postings,
                    memo="ledger_bench funding",
                    reference="bench:fund",
                )
            ]
        )
    if missing or low:
        print(
            f"setup: {len(missing)} organisations created, {len(low)} accounts funded in {time.perf_counter() - t0:.1f} s"
        )
    return ids, clearing.pk


def journal_verify() -> dict[str, int]:
    """Counts of violations over the whole journal (all zero when the ledger is sound)."""
    from django.db import connection

    from ledger.models import NON_NEGATIVE_KINDS

    kinds = [k.value for k in NON_NEGATIVE_KINDS]
    checks = {
        "postings_sum_fen": "SELECT COALESCE(SUM(amount_fen), 0) FROM ledger_posting",
        "unbalanced_entries": """SELECT count(*) FROM (SELECT entry_id FROM ledger_posting GROUP BY entry_id
                                  HAVING SUM(amount_fen) <> 0 OR count(*) < 2) x""",
        "entries_without_postings": """SELECT count(*) FROM ledger_journalentry e
                                        WHERE NOT EXISTS (SELECT 1 FROM ledger_posting p WHERE p.entry_id = e.id)""",
        "cached_balance_mismatch": """SELECT count(*) FROM ledger_account a LEFT JOIN
                                       (SELECT account_id, SUM(amount_fen) s FROM ledger_posting GROUP BY account_id) p
                                       ON p.account_id = a.id WHERE a.balance_fen <> COALESCE(p.s, 0)""",
        "last_balance_after_mismatch": """SELECT count(*) FROM ledger_account a JOIN LATERAL
                                           (SELECT balance_after_fen FROM ledger_posting p WHERE p.account_id = a.id
                                            ORDER BY p.id DESC LIMIT 1) l ON true
                                           WHERE l.balance_after_fen <> a.balance_fen""",
        "negative_accounts": "SELECT count(*) FROM ledger_account WHERE kind = ANY(%s) AND balance_fen < 0",
        "negative_balance_after": """SELECT count(*) FROM ledger_posting p JOIN ledger_account a ON a.id = p.account_id
                                      WHERE a.kind = ANY(%s) AND p.balance_after_fen < 0""",
    }
    out = {}
    with connection.cursor() as cur:
        for name, sql in checks.items():
            cur.execute(sql, [kinds] if "%s" in sql else None)
            out[name] = int(cur.fetchone()[0])
        cur.execute("SELECT (SELECT count(*) FROM ledger_journalentry), (SELECT count(*) FROM ledger_posting)")
        out["entries_total"], out["postings_total"] = cur.fetchone()
    return out


def case_count(reference: str) -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            """SELECT count(DISTINCT e.id), count(p.id) FROM ledger_journalentry e
               LEFT JOIN ledger_posting p ON p.entry_id = e.id WHERE e.reference = %s""",
            [reference],
        )
        entries, postings = cur.fetchone()
    return int(entries), int(postings)


# --- Workers ---------------------------------------------------------------------------------------------


def _worker_main(index: int, url: str, commands: mp.Queue, results: mp.Queue, profile: str | None) -> None:
    _django_setup(url)
    import psycopg
    from django.db import IntegrityError, OperationalError, connection

    from ledger.models import EntryKind
    from ledger.services import EntryRequest, LedgerError, entries_post

    db = {"seconds": 0.0, "queries": 0}

    def timed_execute(execute, sql, params, many, context):
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            db["seconds"] += time.perf_counter() - t
            db["queries"] += 1

    connection.ensure_connection()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend_pid = cur.fetchone()[0]
    original_commit = connection._commit

    def timed_commit():  # COMMIT does not go through execute(): time it too (it waits for the WAL flush)
        t = time.perf_counter()
        try:
            return original_commit()
        finally:
            db["seconds"] += time.perf_counter() - t
            db["queries"] += 1

    connection._commit = timed_commit
    results.put(("ready", index))
    profiler = None
    if profile and index == 0:
        import cProfile

        profiler = cProfile.Profile()
    while True:
        command = commands.get()
        if command is None:
            break
        accounts, batch, seconds, reference, seed, start_at = command
        rng = random.Random(seed)
        errors: dict[str, int] = {}
        latencies: list[float] = []
        committed = 0
        seq = 0
        db["seconds"], db["queries"] = 0.0, 0
        while time.time() < start_at:
            time.sleep(0.001)
        cpu_start, backend_cpu_start = time.process_time(), _backend_cpu(backend_pid)
        t_start = time.monotonic()
        deadline = t_start + seconds
        t_end = t_start
        if profiler:
            profiler.enable()
        with connection.execute_wrapper(timed_execute):
            while time.monotonic() < deadline:
                requests = []
                for _ in range(batch):
                    a, b = rng.sample(accounts, 2)
                    amount = rng.randint(1, MAX_AMOUNT_FEN)
                    seq += 1
                    requests.append(
                        EntryRequest(
                            idempotency_key=f"{reference}:{index}:{seq}",
                            kind=EntryKind.TRANSFER,
                            postings=((a, -amount), (b, amount)),
                            reference=reference,
                        )
                    )
                t = time.perf_counter()
                try:
                    entries_post(requests)
                except OperationalError as e:
                    cause = e.__cause__
                    if isinstance(cause, psycopg.errors.DeadlockDetected):
                        kind = "deadlock"
                    elif isinstance(cause, psycopg.errors.SerializationFailure):
                        kind = "serialization_failure"
                    else:
                        kind = f"operational:{type(cause or e).__name__}"
                    errors[kind] = errors.get(kind, 0) + 1
                    continue
                except (LedgerError, IntegrityError) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                t_end = time.monotonic()
                latencies.append(time.perf_counter() - t)
                committed += batch
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        backend_cpu = _backend_cpu(backend_pid)
        results.put(
            (
                "done",
                index,
                {
                    "cpu_seconds": time.process_time() - cpu_start,
                    "backend_cpu_seconds": None if backend_cpu is None else backend_cpu - backend_cpu_start,
                    "committed": committed,
                    "errors": errors,
                    "t_start": t_start,
                    "t_end": t_end,
                    "latencies": latencies,
                    "db_seconds": db["seconds"],
                    "queries": db["queries"],
                },
            )
        )
    connection.close()


def _backend_cpu(pid: int) -> float | None:
    """CPU seconds used so far by a PostgreSQL backend, when the server runs on this machine."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Pool:
    """N long-lived worker processes, each with its own Django setup and database connection."""

    def __init__(self, n: int, url: str, profile: str | None) -> None:
        ctx = mp.get_context("spawn")
        self.results: mp.Queue = ctx.Queue()
        self.queues = [ctx.Queue() for _ in range(n)]
        self.procs = [
            ctx.Process(target=_worker_main, args=(i, url, self.queues[i], self.results, profile), daemon=True)
            for i in range(n)
        ]
        for p in self.procs:
            p.start()
        for _ in range(n):
            self._get("ready")

    def _get(self, tag: str) -> tuple:
        while True:
            try:
                message = self.results.get(timeout=5)
            except Exception:
                dead = [p.pid for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker process(es) {dead} died") from None
                continue
            if message[0] == tag:
                return message

    def run(self, *, accounts: list[int], batch: int, seconds: float, reference: str, seed: int) -> dict[str, Any]:
        start_at = time.time() + 0.2
        for i, q in enumerate(self.queues):
            q.put((accounts, batch, seconds, reference, seed * 1000 + i, start_at))
        reports = [self._get("done")[2] for _ in self.queues]
        committed = sum(r["committed"] for r in reports)
        elapsed = max(r["t_end"] for r in reports) - min(r["t_start"] for r in reports)
        errors: dict[str, int] = {}
        for r in reports:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        lat = sorted(x for r in reports for x in r["latencies"])
        txns = len(lat)
        busy = sum(lat)
        db_seconds = sum(r["db_seconds"] for r in reports)
        backend = [r["backend_cpu_seconds"] for r in reports]
        return {
            "client_cpu_us_per_transfer": 1e6 * sum(r["cpu_seconds"] for r in reports) / committed
            if committed
            else 0.0,
            "server_cpu_us_per_transfer": (1e6 * sum(backend) / committed)
            if committed and None not in backend
            else None,
            "committed": committed,
            "elapsed_s": elapsed,
            "per_s": committed / elapsed if elapsed > 0 else 0.0,
            "transactions": txns,
            "errors": errors,
            "txn_ms_p50": 1000 * lat[len(lat) // 2] if lat else 0.0,
            "txn_ms_p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0,
            "db_share": db_seconds / busy if busy else 0.0,
            "queries_per_txn": sum(r["queries"] for r in reports) / txns if txns else 0.0,
        }

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)


# --- pgbench -------------------------------------------------------------------------------------------


def pgbench_prepare(url: str, scale: int) -> str:
    args, name = _pg_args(url)
    pg_db = f"{name}_pgbench"
    with _admin_connect(url) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [pg_db]).fetchone():
            conn.execute(f'CREATE DATABASE "{pg_db}"')
    u = urlsplit(url)
    import psycopg

    with psycopg.connect(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname=pg_db,
        autocommit=True,
    ) as conn:
        try:
            branches = conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            branches = None
    if branches != scale:
        print(f"pgbench -i -s {scale} {pg_db} ...")
        subprocess.run(["pgbench", *args, "-i", "-q", "-s", str(scale), pg_db], check=True, capture_output=True)
    return pg_db


def pgbench_run(url: str, pg_db: str, clients: int, seconds: int) -> float:
    args, _ = _pg_args(url)
    cmd = ["pgbench", *args, "-c", str(clients), "-j", "2", "-T", str(seconds), "-M", "prepared", pg_db]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not match:
        raise RuntimeError(f"cannot parse pgbench output:\n{out}")
    return float(match.group(1))


# --- Main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8, help="N: worker processes, and pgbench clients")
    parser.add_argument("--batch", type=int, default=20, help="B: transfers per transaction (spread case)")
    parser.add_argument(
        "--hot-batch", type=int, default=None, help="transfers per transaction in the hot case (default: B)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each case and of each pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--hot", type=int, default=10, help="number of hot accounts")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale factor")
    parser.add_argument("--cases", default="spread,hot", help="comma-separated subset of spread,hot")
    parser.add_argument("--no-pgbench", action="store_true", help="skip pgbench (exploration only)")
    parser.add_argument("--fresh", action="store_true", help="drop and recreate the ledger database first")
    parser.add_argument("--profile", metavar="FILE", help="cProfile worker 0 (all cases) into FILE")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    hot_batch = args.hot_batch or args.batch
    cases = [c for c in args.cases.split(",") if c]

    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    database_ensure(url, fresh=args.fresh)
    _django_setup(url)
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    accounts, _clearing = accounts_prepare(args.accounts)
    hot_accounts = accounts[: args.hot]
    pg_db = None if args.no_pgbench else pgbench_prepare(url, args.scale)
    connection.close()  # nothing held open while the workers run

    run_id = f"bench:{time.strftime('%Y%m%dT%H%M%S')}:{secrets.token_hex(3)}"
    with connection.cursor() as cur:
        cur.execute("SELECT version()")
        server = cur.fetchone()[0].split(" on ")[0]
    print(f"{server}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    print(
        f"N={args.workers} workers, B={args.batch} (hot {hot_batch}) transfers/transaction, {args.seconds} s per case, "
        f"{args.rounds} rounds, {len(accounts)} accounts ({len(hot_accounts)} hot); run {run_id}"
    )
    pool = Pool(args.workers, url, args.profile)
    rounds: list[dict[str, Any]] = []
    lost_or_doubled = 0
    try:
        for r in range(1, args.rounds + 1):
            row: dict[str, Any] = {"round": r}
            if pg_db:
                row["pgbench_tps"] = pgbench_run(url, pg_db, args.workers, args.seconds)
            for case in cases:
                reference = f"{run_id}:{r}:{case}"
                res = pool.run(
                    accounts=hot_accounts if case == "hot" else accounts,
                    batch=hot_batch if case == "hot" else args.batch,
                    seconds=args.seconds,
                    reference=reference,
                    seed=args.seed * 100 + r * 10 + (case == "hot"),
                )
                entries, postings = case_count(reference)
                res["stored_entries"], res["stored_postings"] = entries, postings
                if entries != res["committed"] or postings != 2 * res["committed"]:
                    lost_or_doubled += 1
                row[case] = res
                connection.close()
            rounds.append(row)
            _print_round(row, cases)
    finally:
        pool.close()

    checks = journal_verify()
    invariants_ok = lost_or_doubled == 0 and all(v == 0 for k, v in checks.items() if not k.endswith("_total"))
    summary = _summarise(rounds, cases, args, hot_batch, checks, invariants_ok, lost_or_doubled)
    _print_summary(summary, checks)
    print(json.dumps(summary, separators=(",", ":")))
    if args.profile:
        import pstats

        print(f"\ncProfile of worker 0 ({args.profile}):", file=sys.stderr)
        pstats.Stats(args.profile, stream=sys.stderr).sort_stats("cumulative").print_stats(30)


def _print_round(row: dict[str, Any], cases: list[str]) -> None:
    if row["round"] == 1:
        print(
            f"{'round':>5} {'case':>7} {'pgbench tps':>12} {'transfers/s':>12} {'ratio':>6} {'txn/s':>8} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'db %':>5} {'cli us/t':>8} {'srv us/t':>8} {'errors':>6} {'stored':>6}"
        )
    tps = row.get("pgbench_tps")
    for case in cases:
        res = row[case]
        ratio = f"{res['per_s'] / tps:6.2f}" if tps else "     -"
        errors = sum(res["errors"].values())
        stored = "ok" if res["stored_entries"] == res["committed"] else f"{res['stored_entries']}!"
        print(
            f"{row['round']:>5} {case:>7} {tps or 0:>12.0f} {res['per_s']:>12.0f} {ratio} "
            f"{res['transactions'] / res['elapsed_s']:>8.0f} {res['txn_ms_p50']:>7.1f} {res['txn_ms_p99']:>7.1f} "
            f"{100 * res['db_share']:>5.0f} {res['client_cpu_us_per_transfer']:>8.0f} "
            f"{res['server_cpu_us_per_transfer'] or 0:>8.0f} {errors:>6} {stored:>6}"
        )
        if res["errors"]:
            print(f"      errors: {res['errors']}")


def _summarise(rounds, cases, args, hot_batch, checks, invariants_ok, lost_or_doubled) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 1) if values else 0.0

    tps = [r["pgbench_tps"] for r in rounds if "pgbench_tps" in r]
    out: dict[str, Any] = {
        "bench": "ledger",
        "workers": args.workers,
        "batch": args.batch,
        "hot_batch": hot_batch,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "accounts": args.accounts,
        "hot_accounts": args.hot,
    }
    errors: dict[str, int] = {}
    for case in cases:
        prefix = "transfers" if case == "spread" else "hot_transfers"
        per_s = [r[case]["per_s"] for r in rounds]
        out[f"{prefix}_per_s"] = med(per_s)
        out[f"{prefix}_per_s_rounds"] = [round(x, 1) for x in per_s]
        out[f"{case}_txn_ms_p50"] = med([r[case]["txn_ms_p50"] for r in rounds])
        out[f"{case}_client_cpu_us_per_transfer"] = med([r[case]["client_cpu_us_per_transfer"] for r in rounds])
        server = [r[case]["server_cpu_us_per_transfer"] for r in rounds]
        if None not in server:
            out[f"{case}_server_cpu_us_per_transfer"] = med(server)
        if tps:
            ratio_key = "ratio_to_pgbench" if case == "spread" else "hot_ratio_to_pgbench"
            out[ratio_key] = round(statistics.median(r[case]["per_s"] / r["pgbench_tps"] for r in rounds), 3)
        for r in rounds:
            for k, v in r[case]["errors"].items():
                errors[k] = errors.get(k, 0) + v
    if tps:
        out["pgbench_tps"] = med(tps)
        out["pgbench_tps_rounds"] = [round(x, 1) for x in tps]
    out["errors"] = errors
    out["lost_or_doubled_cases"] = lost_or_doubled
    out["invariants_ok"] = invariants_ok
    out["entries_total"] = checks["entries_total"]
    if tps and "spread" in cases:
        out["goal_spread_met"] = out["transfers_per_s"] >= out["pgbench_tps"]
    if "hot" in cases:
        out["goal_hot_met"] = out["hot_transfers_per_s"] >= 1000
    return out


def _print_summary(summary: dict[str, Any], checks: dict[str, int]) -> None:
    print("invariants: " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    parts = []
    for key in ("pgbench_tps", "transfers_per_s", "ratio_to_pgbench", "hot_transfers_per_s", "hot_ratio_to_pgbench"):
        if key in summary:
            parts.append(f"{key}={summary[key]}")
    print("medians: " + ", ".join(parts) + f"; invariants {'OK' if summary['invariants_ok'] else 'VIOLATED'}")


if __name__ == "__main__":
    main()
