"""Fargate facts: valid task sizes and the per-second billing rule (DESIGN §5).

Pure functions only; no AWS calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

#: CPU units → the memory values (MiB) Fargate accepts with them.
VALID_MEMORY_BY_CPU: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}
VALID_CPU: tuple[int, ...] = tuple(VALID_MEMORY_BY_CPU)

MINIMUM_BILLED_SECONDS = 60
FREE_EPHEMERAL_STORAGE_GIB = 20
#: ECS rejects RunTask overrides whose JSON form is longer than this.
MAX_OVERRIDES_JSON_CHARS = 8192


def memory_fits_cpu(cpu: int, memory: int) -> bool:
    return memory in VALID_MEMORY_BY_CPU.get(cpu, ())


def billed_seconds(pull_started_at: datetime | None, stopped_at: datetime | None) -> int:
    """Fargate bills from the start of the image pull until the task stops, per second, rounded up,
    with a one-minute minimum. A task that never started pulling its image is not billed."""
    if pull_started_at is None:
        return 0
    if stopped_at is None or stopped_at <= pull_started_at:
        return MINIMUM_BILLED_SECONDS
    elapsed = stopped_at - pull_started_at
    elapsed_us = (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
    whole_seconds = -(-elapsed_us // 1_000_000)  # ceiling without floating point
    return max(MINIMUM_BILLED_SECONDS, whole_seconds)


@dataclass(frozen=True)
class Rates:
    """USD per hour for one architecture."""

    vcpu_hour: Decimal
    gib_hour: Decimal


@dataclass(frozen=True)
class RegionPrices:
    x86_64: Rates
    arm64: Rates
    ephemeral_storage_gib_hour: Decimal
    #: Multiplier applied to the whole charge for Fargate Spot (0.30 = 70 % off).
    spot_multiplier: Decimal

    def rates(self, architecture: str) -> Rates:
        return self.arm64 if architecture == "ARM64" else self.x86_64


def _d(value: str | float | int) -> Decimal:
    return Decimal(str(value))


#: The one price table. Override per deployment with the PRICE_TABLE_JSON setting (same shape).
DEFAULT_PRICE_TABLE: dict[str, dict[str, object]] = {
    "us-east-1": {
        "x86_64": {"vcpu_hour": "0.04048", "gib_hour": "0.004445"},
        "arm64": {"vcpu_hour": "0.03238", "gib_hour": "0.00356"},
        "ephemeral_storage_gib_hour": "0.000111",
        "spot_multiplier": "0.30",
    },
}


def region_prices(region: str, table: dict[str, dict[str, object]] | None = None) -> RegionPrices:
    """Prices for `region`; regions missing from the table fall back to us-east-1."""
    table = table or DEFAULT_PRICE_TABLE
    raw = table.get(region) or table.get("us-east-1") or DEFAULT_PRICE_TABLE["us-east-1"]

    def rates(key: str) -> Rates:
        r = raw[key]
        assert isinstance(r, dict)
        return Rates(vcpu_hour=_d(r["vcpu_hour"]), gib_hour=_d(r["gib_hour"]))

    return RegionPrices(
        x86_64=rates("x86_64"),
        arm64=rates("arm64"),
        ephemeral_storage_gib_hour=_d(str(raw["ephemeral_storage_gib_hour"])),
        spot_multiplier=_d(str(raw["spot_multiplier"])),
    )


@dataclass(frozen=True)
class Charge:
    billed_seconds: int
    vcpu: Decimal
    memory_gib: Decimal
    vcpu_seconds: Decimal
    gib_seconds: Decimal
    ephemeral_storage_gib_seconds: Decimal
    cost_usd: Decimal


COST_QUANTUM = Decimal("0.0000000001")


def charge(
    *,
    billed: int,
    cpu_units: int,
    memory_mib: int,
    ephemeral_storage_gib: int,
    architecture: str,
    spot: bool,
    prices: RegionPrices,
) -> Charge:
    vcpu = Decimal(cpu_units) / Decimal(1024)
    memory_gib = Decimal(memory_mib) / Decimal(1024)
    extra_storage = Decimal(max(0, ephemeral_storage_gib - FREE_EPHEMERAL_STORAGE_GIB))
    seconds = Decimal(billed)
    vcpu_seconds = vcpu * seconds
    gib_seconds = memory_gib * seconds
    storage_seconds = extra_storage * seconds
    rates = prices.rates(architecture)
    hourly = (
        vcpu_seconds * rates.vcpu_hour
        + gib_seconds * rates.gib_hour
        + storage_seconds * prices.ephemeral_storage_gib_hour
    )
    cost = hourly / Decimal(3600)
    if spot:
        cost *= prices.spot_multiplier
    return Charge(
        billed_seconds=billed,
        vcpu=vcpu,
        memory_gib=memory_gib,
        vcpu_seconds=vcpu_seconds,
        gib_seconds=gib_seconds,
        ephemeral_storage_gib_seconds=storage_seconds,
        cost_usd=cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP),
    )
