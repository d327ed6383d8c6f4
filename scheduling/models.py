"""A buyer's demand for compute routed across instruments, and the child orders that execute its plan."""

from __future__ import annotations

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from exchange.models import Order
from marketplace.models import Instrument, Organisation, User
from marketplace.regions import Metro
from marketplace.units import ComputeUnit


class Objective(models.TextChoices):
    CHEAPEST = "cheapest", _("cheapest")
    LOWEST_CARBON = "lowest_carbon", _("lowest carbon")
    WEIGHTED = "weighted", _("weighted (yuan per kg CO2)")


class ResidualPolicy(models.TextChoices):
    REPLAN = "replan", _("re-plan the residual")
    LEAVE = "leave", _("leave the residual")


class DemandStatus(models.TextChoices):
    PLANNED = "planned", _("planned")
    INFEASIBLE = "infeasible", _("infeasible")
    EXECUTING = "executing", _("executing")
    FILLED = "filled", _("filled")
    PARTIAL = "partially_filled", _("partially filled")
    UNFILLED = "unfilled", _("unfilled")


class Demand(models.Model):
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="demands")
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="demands")
    client_demand_id = models.CharField(max_length=40)
    unit = models.CharField(max_length=16, choices=ComputeUnit.choices, default=ComputeUnit.FP16_PFLOPS_HOUR)
    quantity = models.DecimalField(_("standard units"), max_digits=14, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))])
    earliest_start = models.DateTimeField()
    deadline = models.DateTimeField()
    single_window = models.BooleanField(default=False)
    chip_classes = models.JSONField(default=list, blank=True)
    domestic_only = models.BooleanField(default=False)
    latency_metro = models.CharField(max_length=16, choices=Metro.choices, default=Metro.SHANGHAI)
    max_latency_ms = models.DecimalField(max_digits=7, decimal_places=2, null=True, blank=True)
    min_renewable_share = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    max_pue = models.DecimalField(max_digits=4, decimal_places=2, null=True, blank=True)
    min_security_level = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)])
    max_price = models.DecimalField(_("price cap (CNY per unit)"), max_digits=12, decimal_places=2, null=True, blank=True)
    max_total = models.DecimalField(_("total cap (CNY)"), max_digits=14, decimal_places=2, null=True, blank=True)
    objective = models.CharField(max_length=16, choices=Objective.choices, default=Objective.CHEAPEST)
    yuan_per_kg_co2 = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("0"))
    residual = models.CharField(max_length=8, choices=ResidualPolicy.choices, default=ResidualPolicy.LEAVE)
    status = models.CharField(max_length=16, choices=DemandStatus.choices, default=DemandStatus.PLANNED)
    plan = models.JSONField(default=dict, blank=True)
    execution = models.JSONField(default=dict, blank=True, help_text="rounds: changes since the plan, children placed, fills")
    rounds = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "client_demand_id"], name="demand_client_id_unique"),
            models.CheckConstraint(condition=models.Q(deadline__gt=models.F("earliest_start")), name="demand_window_positive"),
        ]

    def __str__(self) -> str:
        return f"demand {self.pk} {self.quantity} {self.status}"


class DemandChild(models.Model):
    """One IOC buy placed for a demand: its limit is the plan's, its client_order_id fixed by (demand, round,
    index), so a retried execution sends the same order and never a second one."""

    demand = models.ForeignKey(Demand, on_delete=models.CASCADE, related_name="children")
    round = models.PositiveSmallIntegerField()
    index = models.PositiveSmallIntegerField()
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    client_order_id = models.CharField(max_length=64)
    planned_lots = models.PositiveIntegerField()
    lots = models.PositiveIntegerField(help_text="lots sent (the plan's, less what the book no longer offers)")
    limit_fen_per_lot = models.BigIntegerField()
    planned_cost_fen = models.BigIntegerField()
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, default="new", help_text="new, skipped, sent, pending, rejected, or the order's status")
    filled_lots = models.PositiveIntegerField(default=0)
    filled_cost_fen = models.BigIntegerField(default=0)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["round", "index"]
        constraints = [models.UniqueConstraint(fields=["demand", "round", "index"], name="demandchild_unique")]

    def __str__(self) -> str:
        return f"{self.client_order_id}: {self.filled_lots}/{self.lots}"
