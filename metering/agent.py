"""The supplier-side metering agent: reads usage records (JSON lines or CSV) or simulates devices, and posts
them in batches to /api/v1/metering/events/ with retries. Event ids come from the records (or, simulated,
from the contract, device group and time), so a crash and a rerun send the same ids and the server answers
them `duplicate`: nothing is counted twice.

Stdlib only (urllib), so it runs on a supplier's host without the project installed around it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

INT_FIELDS = ("contract", "data_centre", "device_model", "device_count")
RETRY_STATUSES = {429, 500, 502, 503, 504}


class AgentError(Exception):
    pass


def read_records(path: str | Path) -> Iterator[dict]:
    """Usage records from a .jsonl/.json-lines file (one object a line) or a .csv file with a header row
    of the event's field names; empty CSV cells are left out."""
    path = Path(path)
    with path.open(newline="") as f:
        if path.suffix.lower() == ".csv":
            for row in csv.DictReader(f):
                record = {k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip() != ""}
                for name in INT_FIELDS:
                    if name in record and record[name].lstrip("-").isdigit():
                        record[name] = int(record[name])
                yield record
        else:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise AgentError(f"{path}:{n}: not JSON ({exc.msg})") from None


def simulate(*, contract: int, data_centre: int, device_model: int, devices: int, start: dt.datetime, end: dt.datetime,
             step: dt.timedelta, utilisation_pct: int = 90, power_w: int | None = None) -> Iterator[dict]:
    """Readings of `devices` devices every `step` from start to end (the last one cut at end). Ids are
    deterministic: sim-{contract}-{data centre}-{model}-{start epoch}."""
    t = start
    while t < end:
        t1 = min(t + step, end)
        record = {
            "event_id": f"sim-{contract}-{data_centre}-{device_model}-{int(t.timestamp())}", "contract": contract,
            "data_centre": data_centre, "device_model": device_model, "start": t.isoformat(), "end": t1.isoformat(),
            "device_count": devices, "utilisation_pct": utilisation_pct,
        }
        if power_w:
            hours = (t1 - t).total_seconds() / 3600
            record["energy_kwh"] = f"{power_w * devices * hours * utilisation_pct / 100 / 1000:.3f}"
        yield record
        t = t1


def batched(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class AgentReport:
    batches: int = 0
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    reasons: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)


class Agent:
    def __init__(self, *, url: str, token: str, retries: int = 5, backoff: float = 0.5, timeout: float = 60.0, log=None):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):  # urlopen would also read file: URLs
            raise AgentError(f"The exchange URL must start with http:// or https://, not {url!r}.")
        self.endpoint = url.rstrip("/") + "/api/v1/metering/events/"
        self.token = token
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.log = log or (lambda message: None)

    def post(self, batch: list[dict], report: AgentReport) -> dict:
        """One batch, retried on network errors and 429/5xx with exponential backoff; bad data (other 4xx)
        is not retried. The same batch resent is harmless: its ids are already stored."""
        body = json.dumps({"events": batch}).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Token {self.token}",
            })
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310 # scheme checked in __init__
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:500].decode(errors="replace")
                if exc.code not in RETRY_STATUSES:
                    raise AgentError(f"HTTP {exc.code}: {detail}") from None
                problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                problem = str(getattr(exc, "reason", exc))
            if attempt == self.retries:
                raise AgentError(f"gave up after {self.retries + 1} attempts: {problem}")
            report.retries += 1
            delay = self.backoff * 2**attempt
            self.log(f"batch failed ({problem}); retrying in {delay:.1f} s")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def run(self, records: Iterable[dict], *, batch_size: int = 1000) -> AgentReport:
        report = AgentReport()
        for batch in batched(records, batch_size):
            answer = self.post(batch, report)
            report.batches += 1
            report.sent += len(batch)
            report.accepted += answer["accepted"]
            report.duplicates += answer["duplicates"]
            report.rejected += answer["rejected"]
            for result in answer["results"]:
                if result["status"] == "rejected":
                    report.reasons[result["reason"]] += 1
                    report.rejects.append(result)
            self.log(f"batch {report.batches}: {answer['accepted']} accepted, {answer['duplicates']} duplicate, {answer['rejected']} rejected")
        return report
