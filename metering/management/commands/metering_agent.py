"""`manage.py metering_agent`: post usage records to the metering API in batches, with retries."""

from __future__ import annotations

import datetime as dt
import json
import os

from django.core.management.base import BaseCommand, CommandError

from metering.agent import Agent, AgentError, read_records, simulate


def _when(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise CommandError(f"{value}: give a time zone, e.g. 2026-11-29T08:00:00+08:00")
    return parsed


class Command(BaseCommand):
    help = ("Send usage records (a .jsonl or .csv file, or --simulate) to /api/v1/metering/events/ in batches. "
            "Safe to rerun after a crash: records keep their event ids and the server drops duplicates.")

    def add_arguments(self, parser):
        parser.add_argument("--url", default=os.environ.get("SUANLI_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--token", default=os.environ.get("SUANLI_TOKEN", ""), help="API token (or SUANLI_TOKEN)")
        parser.add_argument("--file", help="usage records: JSON lines (.jsonl) or CSV with a header row")
        parser.add_argument("--batch", type=int, default=1000, help="events per request (at most 10000)")
        parser.add_argument("--retries", type=int, default=5)
        parser.add_argument("--backoff", type=float, default=0.5, help="seconds before the first retry; doubles each time")
        parser.add_argument("--rejects", help="write rejected events (with reasons) to this JSON-lines file")
        sim = parser.add_argument_group("simulation (demo)")
        sim.add_argument("--simulate", action="store_true", help="generate readings instead of reading a file")
        sim.add_argument("--contract", type=int)
        sim.add_argument("--data-centre", type=int)
        sim.add_argument("--device-model", type=int)
        sim.add_argument("--devices", type=int, default=1)
        sim.add_argument("--start", help="ISO time with zone (default: an hour ago, on the minute)")
        sim.add_argument("--end", help="ISO time with zone (default: now, on the minute)")
        sim.add_argument("--step-minutes", type=int, default=5)
        sim.add_argument("--utilisation", type=int, default=90)
        sim.add_argument("--power-w", type=int, help="device power, to report energy")

    def handle(self, *args, **o):
        if not o["token"]:
            raise CommandError("An API token is required (--token or SUANLI_TOKEN).")
        if not 1 <= o["batch"] <= 10_000:
            raise CommandError("--batch must be from 1 to 10000.")
        if o["simulate"]:
            missing = [name for name in ("contract", "data_centre", "device_model") if not o[name]]
            if missing:
                raise CommandError("--simulate needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
            now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
            start = _when(o["start"]) if o["start"] else now - dt.timedelta(hours=1)
            end = _when(o["end"]) if o["end"] else now
            records = simulate(contract=o["contract"], data_centre=o["data_centre"], device_model=o["device_model"],
                               devices=o["devices"], start=start, end=end, step=dt.timedelta(minutes=o["step_minutes"]),
                               utilisation_pct=o["utilisation"], power_w=o["power_w"])
        elif o["file"]:
            records = read_records(o["file"])
        else:
            raise CommandError("Give --file PATH or --simulate.")
        try:
            agent = Agent(url=o["url"], token=o["token"], retries=o["retries"], backoff=o["backoff"],
                          log=lambda m: self.stderr.write(m) if o["verbosity"] > 1 else None)
            report = agent.run(records, batch_size=o["batch"])
        except (AgentError, OSError) as exc:
            raise CommandError(str(exc)) from None
        if o["rejects"]:
            with open(o["rejects"], "w") as f:
                for r in report.rejects:
                    f.write(json.dumps(r) + "\n")
        reasons = ", ".join(f"{k} {v}" for k, v in report.reasons.most_common()) or "none"
        self.stdout.write(
            f"sent {report.sent} events in {report.batches} batches: {report.accepted} accepted, {report.duplicates} duplicate, "
            f"{report.rejected} rejected (reasons: {reasons}); {report.retries} retries"
        )
