"""The metering agent against a live server: file formats, reruns after a crash, retries."""

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from metering.agent import Agent, AgentError
from metering.models import ContractDelivery, UsageEvent
from tests.metering.conftest import event


@pytest.mark.django_db(transaction=True)
def test_agent_sends_a_file_and_a_rerun_counts_nothing_twice(deal, live_server, tmp_path, capsys):
    token = Token.objects.create(user=deal["seller_user"]).key
    jsonl = tmp_path / "usage.jsonl"
    jsonl.write_text("\n".join(json.dumps(event(deal, i, offset_minutes=i)) for i in range(5)) + "\n")
    csv = tmp_path / "usage.csv"
    rows = [event(deal, f"c{i}", offset_minutes=60 + i, utilisation_pct="75") for i in range(3)]
    rows.append(event(deal, "c-bad", offset_minutes=-30))  # before the window
    header = ["event_id", "contract", "data_centre", "device_model", "start", "end", "device_count", "utilisation_pct"]
    csv.write_text(",".join(header) + "\n" + "".join(",".join(str(r.get(h, "")) for h in header) + "\n" for r in rows))
    call_command("metering_agent", url=live_server.url, token=token, file=str(jsonl), batch=2)
    assert "sent 5 events in 3 batches: 5 accepted, 0 duplicate, 0 rejected" in capsys.readouterr().out
    rejects = tmp_path / "rejects.jsonl"
    call_command("metering_agent", url=live_server.url, token=token, file=str(csv), rejects=str(rejects))
    assert "3 accepted, 0 duplicate, 1 rejected (reasons: outside_window 1)" in capsys.readouterr().out
    assert json.loads(rejects.read_text())["event_id"] == "ev-c-bad"
    delivered = ContractDelivery.objects.get(pk=deal["contract"].pk).delivered_micro
    # A crash and a rerun: the same ids, answered duplicate, nothing counted twice.
    call_command("metering_agent", url=live_server.url, token=token, file=str(jsonl), batch=2)
    assert "0 accepted, 5 duplicate" in capsys.readouterr().out
    assert ContractDelivery.objects.get(pk=deal["contract"].pk).delivered_micro == delivered == 8 * 989_000
    assert UsageEvent.objects.get(event_id="ev-c0").utilisation_pct == 75


@pytest.mark.django_db(transaction=True)
def test_agent_simulates_devices_with_stable_ids(deal, live_server, capsys):
    token = Token.objects.create(user=deal["seller_user"]).key
    start = deal["window_start"]
    args = dict(url=live_server.url, token=token, simulate=True, contract=deal["contract"].pk, data_centre=deal["dc"].pk,
                device_model=deal["h100"].pk, devices=2, start=start.isoformat(), end=(start + dt.timedelta(minutes=60)).isoformat(),
                step_minutes=15, power_w=700)
    call_command("metering_agent", **args)
    assert "sent 4 events in 1 batches: 4 accepted" in capsys.readouterr().out
    call_command("metering_agent", **args)
    assert "0 accepted, 4 duplicate" in capsys.readouterr().out
    d = ContractDelivery.objects.get(pk=deal["contract"].pk)
    assert d.delivered_micro == 2 * 989_000  # 2 H100 for one hour
    assert not UsageEvent.objects.filter(energy_estimated=True).exists()


def test_agent_requires_a_token_and_a_source():
    with pytest.raises(CommandError, match="token"):
        call_command("metering_agent", token="", file="x.jsonl")
    with pytest.raises(CommandError, match="--file PATH or --simulate"):
        call_command("metering_agent", token="t")


def test_agent_refuses_a_url_that_is_not_http(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("{}")
    with pytest.raises(AgentError, match="http:// or https://"):
        Agent(url=f"file://{secret}", token="t")
    with pytest.raises(CommandError, match="http:// or https://"):
        call_command("metering_agent", url="ftp://exchange.example.cn", token="t", file=str(secret))


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then a canned batch answer; 400 when told to."""

    failures = 2
    seen: list[bytes] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(body)
        if self.path.endswith("bad/api/v1/metering/events/"):
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"events": ["nope"]}')
            return
        if len(type(self).seen) <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            return
        n = len(json.loads(body)["events"])
        answer = {"accepted": n, "duplicates": 0, "rejected": 0, "results": [{"status": "accepted"}] * n, "contracts": {}}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(answer).encode())

    def log_message(self, *args):
        pass


def test_agent_retries_server_errors_with_the_same_batch_and_not_bad_data():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        report = Agent(url=url, token="t", backoff=0.01).run([{"event_id": "a"}, {"event_id": "b"}], batch_size=10)
        assert (report.accepted, report.retries, len(_Flaky.seen)) == (2, 2, 3)
        assert len(set(_Flaky.seen)) == 1  # the same body each time
        with pytest.raises(AgentError, match="HTTP 400"):
            Agent(url=url + "/bad", token="t", backoff=0.01).run([{"event_id": "a"}])
        _Flaky.seen.clear()
        _Flaky.failures = 10
        with pytest.raises(AgentError, match="gave up after 3 attempts"):
            Agent(url=url, token="t", retries=2, backoff=0.01).run([{"event_id": "a"}])
    finally:
        server.shutdown()
