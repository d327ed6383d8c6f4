"""The servers set the cyclic garbage collector for serving (common/collector.py): without it a threaded
gunicorn worker paused 85-185 ms in full collections about once a second under load (REST's p99), and
uvicorn 50-60 ms (the echo consumer's p99 72 ms against 27 with it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["config.wsgi", "config.asgi"])
def test_a_server_freezes_its_start_up_heap_and_collects_young_less_often(module):
    code = f"import gc; before = gc.get_threshold(); import {module}; print(gc.get_freeze_count(), *before, *gc.get_threshold())"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MATCHER_TRANSPORT": "inline", "SUANLI_EMBEDDED_SCHEDULER": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True).stdout.split()
    frozen, *thresholds = map(int, out[-7:])
    assert frozen > 50_000  # Django, DRF and the project's modules, out of every collection's scan
    assert thresholds[:3] == [700, 10, 10]  # Python's defaults before
    assert thresholds[3:] == [10_000, 10, 10]
