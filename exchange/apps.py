from django.apps import AppConfig


class ExchangeConfig(AppConfig):
    name = "exchange"
    verbose_name = "Exchange"

    def ready(self) -> None:
        from marketplace.signals import instrument_trading_changed

        instrument_trading_changed.connect(_tell_matcher, dispatch_uid="exchange_instrument_trading_changed")


def _tell_matcher(sender, *, instrument_id: int, action: str, **kwargs) -> None:
    """An operator halted or resumed an instrument: the book stops (or starts) taking orders and amends."""
    import logging

    from exchange import transport

    try:
        transport.send([{"op": action, "instrument": instrument_id}])
    except Exception:  # the status is stored; a matcher that (re)loads the book reads it from there
        logging.getLogger(__name__).exception("could not tell the matcher to %s instrument %s", action, instrument_id)
