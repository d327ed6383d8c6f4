"""Standard compute units: PFLOPS-hours at a stated precision, so different chips trade as one product.

One device of a model rated R TFLOPS (dense) at precision P, running for h hours, delivers exactly
R * h / 1000 PFLOPS-hours at P. All arithmetic is Decimal; nothing is rounded until a caller quantises.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import models
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    from marketplace.models import DeviceModel

TFLOPS_PER_PFLOPS = Decimal(1000)


class ComputeUnit(models.TextChoices):
    FP16_PFLOPS_HOUR = "FP16_PFH", _("PFLOPS-hour at FP16 dense (intelligent computing)")
    FP32_PFLOPS_HOUR = "FP32_PFH", _("PFLOPS-hour at FP32 (general computing)")
    FP64_PFLOPS_HOUR = "FP64_PFH", _("PFLOPS-hour at FP64 (high-performance computing)")


UNIT_RATING_FIELD = {
    ComputeUnit.FP16_PFLOPS_HOUR: "fp16_tflops",
    ComputeUnit.FP32_PFLOPS_HOUR: "fp32_tflops",
    ComputeUnit.FP64_PFLOPS_HOUR: "fp64_tflops",
}


def rating_tflops(device_model: DeviceModel, unit: str) -> Decimal | None:
    """The model's dense rating in TFLOPS at the unit's precision, or None where it has none."""
    return getattr(device_model, UNIT_RATING_FIELD[ComputeUnit(unit)])


def device_hours_to_units(device_model: DeviceModel, device_hours: Decimal | int, unit: str) -> Decimal:
    """Exact standard units delivered by `device_hours` of `device_model`."""
    if isinstance(device_hours, float):
        raise TypeError("device hours must be Decimal or int")
    rating = rating_tflops(device_model, unit)
    if rating is None:
        raise ValueError(f"{device_model} has no {ComputeUnit(unit).name} rating")
    return Decimal(device_hours) * rating / TFLOPS_PER_PFLOPS


def units_to_device_hours(device_model: DeviceModel, units: Decimal | int, unit: str) -> Decimal:
    """Device hours of `device_model` needed for `units` standard units (may be fractional)."""
    rating = rating_tflops(device_model, unit)
    if not rating:
        raise ValueError(f"{device_model} has no {ComputeUnit(unit).name} rating")
    return Decimal(units) * TFLOPS_PER_PFLOPS / rating
