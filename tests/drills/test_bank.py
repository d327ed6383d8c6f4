"""Fault drill, Jepsen's bank test: real OS processes, each with its own database connection, move money
at random among 50 customers and one hot account through the ledger's services (transfers, multi-leg
entries, holds placed, captured and released, replays of the same idempotency key) while a reader process
samples the total. The checker asserts, at every sample and at the end: the total is conserved exactly, no
account is below zero, each cached balance equals its postings, and the final balances are exactly the
initial ones plus the effects the workers were told succeeded (no lost and no phantom writes).

The control runs the same workload against a deliberately naive read-modify-write (read the balances,
check, write the new values back without a lock) on a scratch table, and the same checker must report a
violation there: it proves the checker can fail. The naive code lives here, never in the app.

This module is also the worker: `python tests/drills/test_bank.py worker|reader '<json>'` (the test starts
them). Each prints "ready", waits for "go" on stdin, runs for the configured seconds and prints one JSON
line with what it did. DRILL_BANK_SECONDS (default 4) and DRILL_BANK_WORKERS (default 4) scale it up.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("DRILL_BANK_SECONDS", "4"))
WORKERS = int(os.environ.get("DRILL_BANK_WORKERS", "4"))
MIN_OPS = 40  # per worker: on a loaded machine a worker runs past SECONDS (up to 3x) until it has done this many
CUSTOMERS = 50
CUSTOMER_FUNDS = 5_000
HOT_FUNDS = 200_000
SCRATCH = "drill_naive_balance"


# --- The checker: the same for the real ledger and the naive control ----------------------------------------

def history_check(*, expected_total: int, samples: list[list[int]], initial: dict[int, int], final: dict[int, int],
                  acknowledged: dict[int, int]) -> list[str]:
    """Problems found in a run; empty when it was correct. `samples` are [accounts seen, total, minimum,
    accounts whose cached balance differs from their postings (-1: not checked)], each read in one snapshot."""
    problems = []
    for n, (count, total, lowest, mismatched) in enumerate(samples):
        if count != len(initial):
            problems.append(f"sample {n}: saw {count} accounts, not {len(initial)}")
        if total != expected_total:
            problems.append(f"sample {n}: total {total}, expected {expected_total} (money created or destroyed)")
        if lowest < 0:
            problems.append(f"sample {n}: an account is at {lowest}, below zero")
        if mismatched > 0:
            problems.append(f"sample {n}: {mismatched} cached balances differ from their postings")
    if sum(final.values()) != expected_total:
        problems.append(f"final total {sum(final.values())}, expected {expected_total}")
    for pk, balance in sorted(final.items()):
        if balance < 0:
            problems.append(f"account {pk} ends at {balance}, below zero")
        expected = initial[pk] + acknowledged.get(pk, 0)
        if balance != expected:
            problems.append(f"account {pk} ends at {balance}, but the acknowledged operations leave {expected} (lost or phantom write)")
    return problems


# --- Worker processes ----------------------------------------------------------------------------------------

def _naive_apply(deltas: dict[int, int]) -> bool:
    """THE CONTROL, deliberately wrong: read, check, write back the computed balances, with no lock and no
    transaction spanning the read and the writes. Concurrent movements overwrite each other's results."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"SELECT id, balance FROM {SCRATCH} WHERE id = ANY(%s)", [list(deltas)])
        after = {pk: balance + deltas[pk] for pk, balance in cur.fetchall()}
        if any(balance < 0 for balance in after.values()):
            return False
        for pk, balance in after.items():
            cur.execute(f"UPDATE {SCRATCH} SET balance = %s WHERE id = %s", [balance, pk])
    return True


def _work(config: dict, backend: str) -> dict:
    """Random movements until the time is up; returns the net effect of every acknowledged one per account."""
    from django.db import connection

    from ledger import services
    from ledger.models import Account, EntryKind, Hold
    from marketplace.models import Organisation

    rng = random.Random(config["seed"])  # the same seed in both phases: the control replays the same choices
    naive = backend == "naive"
    customers = [tuple(c) for c in config["customers"]]  # (organisation, available, held)
    hot = config["hot"]
    spendable = [c[1] for c in customers] + [hot]
    orgs = Organisation.objects.in_bulk([c[0] for c in customers])
    acknowledged: dict[int, int] = {}
    counts = {"transfer": 0, "multi": 0, "hold": 0, "replay": 0, "conflict": 0, "refused": 0}
    errors: list[str] = []
    done: list[tuple[int, int, int, str]] = []  # transfers that succeeded: (source, destination, amount, key)

    def ack(deltas: dict[int, int]) -> None:
        for pk, amount in deltas.items():
            acknowledged[pk] = acknowledged.get(pk, 0) + amount

    def pair() -> tuple[int, int]:
        if rng.random() < 0.5:  # half of all movements touch the hot account, one way or the other
            other = rng.choice(spendable[:-1])
            return (hot, other) if rng.random() < 0.5 else (other, hot)
        a, b = rng.sample(spendable, 2)
        return a, b

    start = time.monotonic()
    i = 0
    while (elapsed := time.monotonic() - start) < config["seconds"] or (i < MIN_OPS and elapsed < 3 * config["seconds"]):
        i += 1
        key = f"drill:{config['seed']}:{i}"
        roll = rng.random()
        try:
            if roll < 0.4:
                src, dst = pair()
                amount = rng.randint(1, 6_000)
                deltas = {src: -amount, dst: amount}
                if naive:
                    ok = _naive_apply(deltas)
                else:
                    services.transfer(source=Account(pk=src), destination=Account(pk=dst), amount_fen=amount, idempotency_key=key)
                    ok = True
                    done.append((src, dst, amount, key))
                if ok:
                    ack(deltas)
                    counts["transfer"] += 1
                else:
                    counts["refused"] += 1
            elif roll < 0.6:
                src, *dsts = rng.sample(spendable, rng.randint(3, 4))
                amounts = [rng.randint(1, 2_000) for _ in dsts]
                deltas = {src: -sum(amounts), **dict(zip(dsts, amounts, strict=True))}
                if naive:
                    ok = _naive_apply(deltas)
                else:
                    services.entries_post([services.EntryRequest(idempotency_key=key, kind=EntryKind.TRANSFER, postings=list(deltas.items()))])
                    ok = True
                if ok:
                    ack(deltas)
                    counts["multi"] += 1
                else:
                    counts["refused"] += 1
            elif roll < 0.9:
                org, available, held = rng.choice(customers)
                dst = rng.choice([a for a in spendable if a != available])
                amount = rng.randint(2, 4_000)
                part = rng.randint(1, amount - 1)
                # place (available -> held), capture part (held -> dst), release the rest (held -> available)
                if naive:
                    if not _naive_apply({available: -amount, held: amount}):
                        counts["refused"] += 1
                        continue
                    ack({available: -amount, held: amount})
                    for deltas in ({held: -part, dst: part}, {held: part - amount, available: amount - part}):
                        if _naive_apply(deltas):
                            ack(deltas)
                else:
                    hold = services.hold_place(organisation=orgs[org], amount_fen=amount, reference=key)
                    ack({available: -amount, held: amount})
                    services.hold_capture(hold=hold, amount_fen=part, destination=Account(pk=dst), idempotency_key=f"{key}:capture")
                    ack({held: -part, dst: part})
                    hold = services.hold_release(hold=hold, idempotency_key=f"{key}:release")
                    ack({held: part - amount, available: amount - part})
                    if Hold.objects.get(pk=hold.pk).status != "closed":
                        errors.append(f"hold {key} still open after capture and release")
                counts["hold"] += 1
            elif done and not naive:
                # A client retry of a transfer that succeeded: answered from the journal, nothing moves. The
                # same key for a different amount is refused.
                src, dst, amount, old = rng.choice(done)
                services.transfer(source=Account(pk=src), destination=Account(pk=dst), amount_fen=amount, idempotency_key=old)
                counts["replay"] += 1
                try:
                    services.transfer(source=Account(pk=src), destination=Account(pk=dst), amount_fen=amount + 1, idempotency_key=old)
                    errors.append(f"key {old} replayed with a different amount was accepted")
                except services.IdempotencyConflict:
                    counts["conflict"] += 1
        except services.InsufficientFunds:
            counts["refused"] += 1
        except Exception as exc:  # anything else is a finding: report it, keep going
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    connection.close()
    return {"acknowledged": acknowledged, "counts": counts, "errors": errors[:20]}


def _read(config: dict, backend: str) -> dict:
    """Sample every account's balance in one snapshot, as often as possible, until the test says stop."""
    from django.db import connection, transaction

    ids = config["ids"]
    naive = backend == "naive"
    samples = []
    while not select.select([sys.stdin], [], [], 0)[0]:  # until the test says "stop", after the workers end
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            if naive:
                cur.execute(f"SELECT count(*), sum(balance), min(balance) FROM {SCRATCH} WHERE id = ANY(%s)", [ids])
                samples.append([*map(int, cur.fetchone()), -1])
                continue
            cur.execute("SELECT count(*), sum(balance_fen), min(balance_fen) FROM ledger_account WHERE id = ANY(%s)", [ids])
            count, total, lowest = cur.fetchone()
            cur.execute(
                "SELECT count(*) FROM ledger_account a LEFT JOIN (SELECT account_id, sum(amount_fen) AS s FROM ledger_posting "
                "WHERE account_id = ANY(%s) GROUP BY account_id) p ON p.account_id = a.id "
                "WHERE a.id = ANY(%s) AND a.balance_fen <> coalesce(p.s, 0)",
                [ids, ids],
            )
            samples.append([count, int(total), lowest, cur.fetchone()[0]])
        time.sleep(0.005)
    sys.stdin.readline()  # the "stop"
    connection.close()
    return {"samples": samples}


def _main(role: str, config: dict) -> None:
    """One process for every phase: "ready", then per "go <backend>" line one JSON line of results."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    while True:
        print("ready", flush=True)
        command = sys.stdin.readline().split()
        if not command or command[0] != "go":
            return
        out = _read(config, command[1]) if role == "reader" else _work(config, command[1])
        print(json.dumps(out), flush=True)


# --- The test ------------------------------------------------------------------------------------------------

def _spawn(role: str, config: dict) -> subprocess.Popen:
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ, PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="config.settings",
               DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}")
    return subprocess.Popen([sys.executable, __file__, role, json.dumps(config)], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Drill:
    """The worker processes and the reader; each phase releases them together and collects their reports."""

    def __init__(self, *, customers: list[tuple[int, int, int]], hot: int, seconds: float = SECONDS, workers: int = WORKERS):
        self.seconds = seconds
        self.ids = sorted({a for c in customers for a in c[1:]} | {hot})
        common = {"customers": customers, "hot": hot, "seconds": seconds}
        self.procs = [_spawn("worker", {**common, "seed": w}) for w in range(workers)]
        self.procs.append(_spawn("reader", {**common, "ids": self.ids}))

    @staticmethod
    def _died(p: subprocess.Popen) -> AssertionError:
        p.kill()
        return AssertionError(f"a drill process died: {p.stderr.read()[-3000:]}")

    def _line(self, p: subprocess.Popen) -> str:
        line = p.stdout.readline()
        if not line:
            raise self._died(p)
        return line.strip()

    def _send(self, p: subprocess.Popen, text: str) -> None:
        try:
            p.stdin.write(text + "\n")
            p.stdin.flush()
        except BrokenPipeError:
            raise self._died(p) from None

    def phase(self, backend: str) -> dict:
        for p in self.procs:
            assert self._line(p) == "ready"
        for p in self.procs:
            self._send(p, f"go {backend}")
        outs = [json.loads(self._line(p)) for p in self.procs[:-1]]
        reader = self.procs[-1]
        self._send(reader, "stop")  # the workers are done: the reader takes its last sample
        samples = json.loads(self._line(reader))["samples"]
        acknowledged: dict[int, int] = {}
        counts: dict[str, int] = {}
        errors: list[str] = []
        for out in outs:
            for pk, amount in out["acknowledged"].items():
                acknowledged[int(pk)] = acknowledged.get(int(pk), 0) + amount
            for k, n in out["counts"].items():
                counts[k] = counts.get(k, 0) + n
            errors += out["errors"]
        return {"acknowledged": acknowledged, "counts": counts, "errors": errors, "samples": samples}

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.communicate("exit\n", timeout=30)
                except (subprocess.TimeoutExpired, OSError):
                    p.kill()
                    p.wait()


@pytest.fixture
def bank(transactional_db):
    """50 customers with 50.00 CNY each and a hot account with 2000.00 CNY, funded from a clearing account
    in one entry."""
    from ledger import services
    from ledger.models import Account, AccountKind
    from tests.factories import OrganisationFactory

    orgs = OrganisationFactory.create_batch(CUSTOMERS + 1, kind="buyer")  # each opens its accounts (ledger.signals)
    accounts = {(a.organisation_id, a.kind): a.pk for a in Account.objects.filter(organisation__in=orgs)}
    customers = [(o.pk, accounts[(o.pk, AccountKind.AVAILABLE)], accounts[(o.pk, AccountKind.HELD)]) for o in orgs[:-1]]
    hot = accounts[(orgs[-1].pk, AccountKind.AVAILABLE)]
    clearing = services.platform_account(kind=AccountKind.PROVIDER_CLEARING, name="offline")
    postings = [(c[1], CUSTOMER_FUNDS) for c in customers] + [(hot, HOT_FUNDS), (clearing.pk, -CUSTOMERS * CUSTOMER_FUNDS - HOT_FUNDS)]
    services.entries_post([services.EntryRequest(idempotency_key="fund", kind="top_up", postings=postings)])
    return customers, hot


def _balances(table: str, column: str, ids: list[int]) -> dict[int, int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"SELECT id, {column} FROM {table} WHERE id = ANY(%s)", [ids])
        return dict(cur.fetchall())


@pytest.mark.postgres
@pytest.mark.slow
def test_concurrent_processes_conserve_money_and_the_naive_control_is_caught(bank):
    customers, hot = bank
    ids = sorted({a for c in customers for a in c[1:]} | {hot})
    initial = _balances("ledger_account", "balance_fen", ids)
    expected_total = CUSTOMERS * CUSTOMER_FUNDS + HOT_FUNDS
    assert sum(initial.values()) == expected_total

    drill = Drill(customers=customers, hot=hot)
    try:
        _ledger_phase(drill, initial, expected_total)
        _control_phase(drill, initial, expected_total)
    finally:
        drill.close()


def _ledger_phase(drill: Drill, initial: dict[int, int], expected_total: int) -> None:
    """The real ledger, under concurrent processes."""
    from django.core.management import call_command

    from ledger.models import Hold, JournalEntry
    from ledger.verify import ledger_verify

    run = drill.phase("ledger")
    assert run["errors"] == []
    counts = run["counts"]
    # The drill did real work, in every kind of movement, and hit the non-negative rule.
    assert counts["transfer"] > 25 and counts["multi"] > 10 and counts["hold"] > 20 and counts["replay"] > 5, counts
    assert counts["conflict"] == counts["replay"] and counts["refused"] > 0, counts
    assert len(run["samples"]) > 20, "the reader sampled too rarely to say anything"
    final = _balances("ledger_account", "balance_fen", drill.ids)
    problems = history_check(expected_total=expected_total, samples=run["samples"], initial=initial, final=final,
                             acknowledged=run["acknowledged"])
    assert problems == [], problems[:10]
    assert Hold.objects.filter(status="open").count() == 0
    # One journal entry per acknowledged movement (replays added none): transfers, multi-leg entries, and
    # three per hold cycle, plus the funding.
    assert JournalEntry.objects.count() == 1 + counts["transfer"] + counts["multi"] + 3 * counts["hold"]
    report = ledger_verify()
    assert report.ok, report.problems
    call_command("ledger_verify")  # the operator's command agrees (raises CommandError otherwise)


def _control_phase(drill: Drill, initial: dict[int, int], expected_total: int) -> None:
    """The same workload (same seeds), the same checker, a naive read-modify-write on a scratch copy of the
    starting balances."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        cur.execute(f"CREATE TABLE {SCRATCH} (id bigint PRIMARY KEY, balance bigint NOT NULL)")
        cur.execute(f"INSERT INTO {SCRATCH} SELECT unnest(%s::bigint[]), unnest(%s::bigint[])", [list(initial), list(initial.values())])
    try:
        control = drill.phase("naive")
        assert control["errors"] == []
        assert control["counts"]["transfer"] > 25, control["counts"]
        naive_final = _balances(SCRATCH, "balance", drill.ids)
    finally:
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
    caught = history_check(expected_total=expected_total, samples=control["samples"], initial=initial, final=naive_final,
                           acknowledged=control["acknowledged"])
    # The checker fails the naive version: lost updates leave balances that no acknowledged history explains.
    assert any("lost or phantom write" in p for p in caught), caught[:10]
    assert any("expected" in p and "total" in p for p in caught), caught[:10]


if __name__ == "__main__":
    _main(sys.argv[1], json.loads(sys.argv[2]))
