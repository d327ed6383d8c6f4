"""The book's invariant check must survive `python -O` (which strips `assert`): Book.restore relies on it to
refuse an inconsistent snapshot, e.g. one whose bids cross its asks."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    from exchange.engine import STP, Book, BookConfig, Order, Side, Status
    book = Book(BookConfig(reference_price=100), Status.CONTINUOUS)
    book.submit(Order(1, 1, Side.BUY, 100, 1), 0)
    snap = book.snapshot()
    del snap["checksum"]
    snap["orders"].append([2, 2, int(Side.SELL), 95, 1, None, int(STP.CANCEL_NEWEST), snap["arrival"] + 1, False])  # crosses the bid
    snap["arrival"] += 1
    try:
        Book.restore(snap)
    except AssertionError as exc:
        print("refused:", exc)
    else:
        print("loaded a crossed book")
""")


def test_restore_refuses_a_crossed_snapshot_even_under_python_O():
    for flags in ([], ["-O"]):
        out = subprocess.run([sys.executable, *flags, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "refused: book crossed at rest", (flags, out)
