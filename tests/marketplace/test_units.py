from decimal import Decimal

import pytest

from marketplace.units import ComputeUnit, device_hours_to_units, units_to_device_hours
from tests.factories import DeviceModelFactory, ascend


@pytest.mark.django_db
def test_one_h100_hour_is_0989_fp16_pflops_hours():
    h100 = DeviceModelFactory()
    assert device_hours_to_units(h100, 1, ComputeUnit.FP16_PFLOPS_HOUR) == Decimal("0.989")
    assert device_hours_to_units(h100, Decimal("24"), ComputeUnit.FP16_PFLOPS_HOUR) == Decimal("23.736")
    assert device_hours_to_units(h100, 10, ComputeUnit.FP64_PFLOPS_HOUR) == Decimal("0.34")


@pytest.mark.django_db
def test_conversion_is_exact_in_both_directions():
    a100 = DeviceModelFactory(name="A100 SXM", fp16_tflops=Decimal("312"), fp32_tflops=Decimal("19.5"))
    units = device_hours_to_units(a100, Decimal("7.5"), ComputeUnit.FP32_PFLOPS_HOUR)
    assert units == Decimal("0.14625")
    assert units_to_device_hours(a100, units, ComputeUnit.FP32_PFLOPS_HOUR) == Decimal("7.5")


@pytest.mark.django_db
def test_unrated_precision_is_refused_and_floats_are_refused():
    npu = ascend()
    with pytest.raises(ValueError, match="no FP32"):
        device_hours_to_units(npu, 1, ComputeUnit.FP32_PFLOPS_HOUR)
    with pytest.raises(TypeError):
        device_hours_to_units(npu, 1.5, ComputeUnit.FP16_PFLOPS_HOUR)
