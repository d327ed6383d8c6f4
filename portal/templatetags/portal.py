"""Formatting for the portal's templates: money in fen, prices per lot shown per unit."""

from __future__ import annotations

from decimal import Decimal

from django import template

from common.money import format_cny

register = template.Library()


@register.filter
def fen(value) -> str:
    """Integer fen as CNY with two places (e.g. 1234567 -> ¥12,345.67)."""
    if value in (None, ""):
        return "—"
    return "¥" + format_cny(int(value))


@register.filter
def unit_price(price_fen_per_lot, lot_size) -> str:
    """An engine price (fen per lot) as CNY per standard unit, to the cent."""
    if price_fen_per_lot in (None, ""):
        return "—"
    return str((Decimal(int(price_fen_per_lot)) / 100 / Decimal(lot_size)).quantize(Decimal("0.01")))


@register.simple_tag(takes_context=True)
def local_name(context, obj) -> str:
    """An organisation's or product's Chinese name when the page is in Chinese and it has one."""
    from django.utils.translation import get_language

    if (get_language() or "").startswith("zh") and getattr(obj, "name_zh", ""):
        return obj.name_zh
    return obj.name
