"""Fargate's size table and billing rule (DESIGN §5)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from taskrunner import fargate
from taskrunner.fargate import VALID_MEMORY_BY_CPU, billed_seconds, charge, memory_fits_cpu, region_prices

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)

# The table as AWS documents it, written out independently of the implementation's ranges.
DOCUMENTED = {
    256: [512, 1024, 2048],
    512: [1024, 2048, 3072, 4096],
    1024: [2048, 3072, 4096, 5120, 6144, 7168, 8192],
    2048: [m * 1024 for m in range(4, 17)],
    4096: [m * 1024 for m in range(8, 31)],
    8192: [m * 1024 for m in range(16, 61, 4)],
    16384: [m * 1024 for m in range(32, 121, 8)],
}


def test_size_table_matches_the_documented_one():
    assert {cpu: list(mems) for cpu, mems in VALID_MEMORY_BY_CPU.items()} == DOCUMENTED


@given(cpu=st.sampled_from(sorted(DOCUMENTED)), memory=st.integers(min_value=0, max_value=140_000))
def test_memory_fits_cpu_exactly_when_the_table_says_so(cpu, memory):
    assert memory_fits_cpu(cpu, memory) == (memory in DOCUMENTED[cpu])


@given(cpu=st.integers(min_value=0, max_value=40_000).filter(lambda c: c not in DOCUMENTED), memory=st.integers())
def test_no_memory_fits_an_unknown_cpu(cpu, memory):
    assert not memory_fits_cpu(cpu, memory)


@pytest.mark.parametrize(
    ("elapsed", "billed"),
    [
        (timedelta(seconds=0.5), 60),
        (timedelta(seconds=59.9), 60),
        (timedelta(seconds=60), 60),
        (timedelta(seconds=60, milliseconds=1), 61),
        (timedelta(seconds=60.2), 61),
        (timedelta(seconds=61), 61),
        (timedelta(hours=2, microseconds=1), 7201),
    ],
)
def test_billed_seconds_rounds_up_with_a_one_minute_minimum(elapsed, billed):
    assert billed_seconds(T0, T0 + elapsed) == billed


def test_a_task_that_never_started_pulling_is_not_billed():
    assert billed_seconds(None, T0) == 0
    assert billed_seconds(None, None) == 0


@given(micros=st.integers(min_value=0, max_value=14 * 86_400 * 1_000_000))
def test_billed_seconds_is_the_ceiling_of_the_elapsed_time_but_at_least_60(micros):
    billed = billed_seconds(T0, T0 + timedelta(microseconds=micros))
    assert billed == max(60, math.ceil(Decimal(micros) / Decimal(1_000_000)))
    assert billed >= 60
    assert billed - micros / 1_000_000 < 1 or billed == 60


def test_on_demand_x86_cost_uses_the_us_east_1_rates():
    c = charge(
        billed=3600,
        cpu_units=1024,
        memory_mib=2048,
        ephemeral_storage_gib=20,
        architecture="X86_64",
        spot=False,
        prices=region_prices("us-east-1"),
    )
    assert c.vcpu == 1 and c.memory_gib == 2
    assert c.vcpu_seconds == 3600 and c.gib_seconds == 7200
    assert c.ephemeral_storage_gib_seconds == 0
    assert c.cost_usd == Decimal("0.04048") + 2 * Decimal("0.004445")


def test_arm_spot_and_extra_storage_costs():
    prices = region_prices("us-east-1")
    c = charge(
        billed=3600,
        cpu_units=256,
        memory_mib=512,
        ephemeral_storage_gib=30,
        architecture="ARM64",
        spot=True,
        prices=prices,
    )
    on_demand = Decimal("0.25") * Decimal("0.03238") + Decimal("0.5") * Decimal("0.00356") + 10 * Decimal("0.000111")
    assert c.ephemeral_storage_gib_seconds == 36_000
    assert c.cost_usd == (on_demand * Decimal("0.30")).quantize(fargate.COST_QUANTUM)


def test_price_table_is_configurable_per_region():
    table = {
        "eu-west-1": {
            "x86_64": {"vcpu_hour": "0.1", "gib_hour": "0.01"},
            "arm64": {"vcpu_hour": "0.08", "gib_hour": "0.008"},
            "ephemeral_storage_gib_hour": "0.0002",
            "spot_multiplier": "0.5",
        }
    }
    prices = region_prices("eu-west-1", table)
    assert prices.x86_64.vcpu_hour == Decimal("0.1")
    assert region_prices("ap-south-1").x86_64.vcpu_hour == Decimal("0.04048")  # falls back to us-east-1
