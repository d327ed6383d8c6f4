"""Money and quantities: Decimal quantised in one place, never float."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

FEN = Decimal("0.01")


def to_decimal(value: Decimal | int | str) -> Decimal:
    if isinstance(value, float):
        raise TypeError("money and quantities are never floats")
    return value if isinstance(value, Decimal) else Decimal(value)


def quantize_cny(value: Decimal | int | str) -> Decimal:
    """CNY to the fen, banker's rounding."""
    return to_decimal(value).quantize(FEN, rounding=ROUND_HALF_EVEN)


def cny_to_fen(value: Decimal | int | str) -> int:
    """CNY to integer fen; refuses values that are not a whole number of fen."""
    amount = to_decimal(value)
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{amount} CNY is not a whole number of fen")
    return int(fen)


def fen_to_cny(fen: int) -> Decimal:
    """Integer fen as a Decimal CNY amount with two places."""
    return (Decimal(fen) / 100).quantize(FEN)


def format_cny(fen: int) -> str:
    return str(fen_to_cny(fen))
