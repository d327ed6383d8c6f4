"""A matcher shard's load figures: what an operator reads to decide when to add shards (README, scaling out)."""

import logging

from exchange.transport import LoadFigures


def test_load_figures_add_up_and_log_a_line_per_window(settings, caplog, monkeypatch):
    settings.MATCHER_LOAD_LOG_SECONDS = 10
    clock = [1000.0]
    monkeypatch.setattr("exchange.transport.time.monotonic", lambda: clock[0])
    figures = LoadFigures(shard=1)
    for commands, seconds in [(3, 0.004), (1, 0.002), (8, 0.010), (4, 0.004)]:
        figures.add(commands, seconds)
    assert {k: figures.as_hash()[k] for k in ("batches", "commands", "busy_us")} == {"batches": 4, "commands": 16, "busy_us": 20_000}

    with caplog.at_level(logging.INFO, logger="exchange.transport"):
        clock[0] += 5
        figures.log_due()  # half a window: nothing yet
        assert caplog.messages == []
        clock[0] += 5
        figures.log_due()
    assert caplog.messages == [
        "matcher shard 1: 16 commands in 4 batches over 10 s (4.0 per batch, 2/s), busy 0%, batch p50 4.0 ms p99 10.0 ms max 10.0 ms"
    ]
    # The next window starts empty; the cumulative figures (the Redis hash) keep counting.
    figures.add(2, 0.5)
    clock[0] += 10
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exchange.transport"):
        figures.log_due()
    assert caplog.messages == [
        "matcher shard 1: 2 commands in 1 batches over 10 s (2.0 per batch, 0/s), busy 5%, batch p50 500.0 ms p99 500.0 ms max 500.0 ms"
    ]
    assert figures.as_hash()["commands"] == 18 and figures.as_hash()["batches"] == 5


def test_an_idle_window_logs_nothing_and_zero_turns_the_log_off(settings, caplog, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("exchange.transport.time.monotonic", lambda: clock[0])
    figures = LoadFigures(shard=0)
    settings.MATCHER_LOAD_LOG_SECONDS = 0
    figures.add(5, 0.01)
    clock[0] += 3600
    with caplog.at_level(logging.INFO, logger="exchange.transport"):
        figures.log_due()
        settings.MATCHER_LOAD_LOG_SECONDS = 60
        figures.window, figures.window_commands = [], 0
        figures.log_due()  # a whole window without batches
    assert caplog.messages == []
