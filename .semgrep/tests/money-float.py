from decimal import Decimal

from django.db import models
from rest_framework import serializers

from common.money import format_cny


def shown(budget, app, order, row, amount_fen, price_fen_per_lot, lot):
    # ruleid: float-near-money
    a = float(amount_fen)
    # ruleid: float-near-money
    b = f"{budget.balance_fen / 100:.2f} CNY"
    # ruleid: float-near-money
    c = price_fen_per_lot / lot
    # ruleid: float-near-money
    d = order.fee_fen * 0.003
    # ruleid: float-near-money
    e = 1.1 * row["amount_fen"]
    # ruleid: float-near-money
    total_cost = 0.0
    # ruleid: float-near-money
    total_cost += 2.5
    # ruleid: float-near-money
    f = float(app.requested_amount)
    return a, b, c, d, e, f, total_cost


class Quote(models.Model):
    # ruleid: float-near-money
    price = models.FloatField()
    # ok: float-near-money
    price_fen = models.BigIntegerField()
    # ok: float-near-money
    utilisation = models.FloatField()

    def __str__(self):
        return str(self.price_fen)


class QuoteSerializer(serializers.Serializer):
    # ruleid: float-near-money
    amount = serializers.FloatField()
    # ok: float-near-money
    amount_fen = serializers.IntegerField()


def exact(budget, order, amount_fen, price_fen_per_lot, lot, inst, carbon_g, seconds):
    # ok: float-near-money
    a = f"{Decimal(budget.balance_fen) / 100:.2f} CNY"
    # ok: float-near-money
    b = format_cny(amount_fen)
    # ok: float-near-money
    c = price_fen_per_lot // lot
    # ok: float-near-money
    d = order.fee_fen * 3 // 1000
    # ok: float-near-money
    e = Decimal(price_fen_per_lot) / 100 / lot
    # ok: float-near-money
    f = f"{inst.price_band_bps / 100:g}%"
    # ok: float-near-money
    g = float(carbon_g) * 0.5
    # ok: float-near-money
    h = amount_fen / Decimal(100)
    # ok: float-near-money
    i = float(seconds)
    return a, b, c, d, e, f, g, h, i
