"""The WSGI server sets the cyclic garbage collector for serving (common/collector.py): without it a threaded
gunicorn worker paused 85-185 ms in full collections about once a second under load, REST's p99."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wsgi_server_freezes_its_start_up_heap_and_collects_young_less_often():
    code = "import gc; before = gc.get_threshold(); import config.wsgi; print(gc.get_freeze_count(), *before, *gc.get_threshold())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    frozen, *thresholds = map(int, out[-7:])
    assert frozen > 50_000  # Django, DRF and the project's modules, out of every collection's scan
    assert thresholds[:3] == [700, 10, 10]  # Python's defaults before
    assert thresholds[3:] == [10_000, 10, 10]
