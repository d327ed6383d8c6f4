"""What the catalogue tells the apps above it (which it must not import)."""

from django.dispatch import Signal

# Sent after commit when an operator halts or resumes an instrument: kwargs instrument_id, action ("halt"|"resume").
instrument_trading_changed = Signal()
