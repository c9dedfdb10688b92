"""Fargate facts: valid task sizes, the per-second billing rule, and what Fargate costs in each region.

Pure functions only; no AWS calls. The prices are data: `fargate_prices.json` beside this module (shipped in the
layer), which a deployment extends or overrides with PRICE_TABLE_JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from taskrunner.errors import InvalidPriceTable, UnknownPriceRegion

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


# ------------------------------------------------------------------------------------------------ prices

#: The one price table: AWS's rates per region, each with its source and the day it was read.
PRICE_TABLE_FILE = Path(__file__).with_name("fargate_prices.json")
#: Where a deployment changes it (template parameters PriceTableJson and FargateSpotDiscountPercent).
PRICE_TABLE_VARIABLE = "PRICE_TABLE_JSON"
SPOT_DISCOUNT_VARIABLE = "FARGATE_SPOT_DISCOUNT_PERCENT"
#: "Fargate Spot runs at up to a 70% discount off the Fargate price" (aws.amazon.com/fargate/pricing).
DEFAULT_SPOT_DISCOUNT_PERCENT = Decimal(70)
_SHAPE = (
    '{"regions": {"<region>": {"x86_64": {"vcpu_hour": "0.04048", "gib_hour": "0.004445"}, "arm64": {...}, '
    '"ephemeral_storage_gib_hour": "0.000111", "source": "...", "as_of": "YYYY-MM-DD"}}}'
)


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a rate must be a number, not true or false")
    return value


#: USD per hour, as a decimal string (or a JSON number), above zero
Rate = Annotated[Decimal, BeforeValidator(_not_a_boolean), Field(gt=0, allow_inf_nan=False)]
RegionName = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Rates(_Strict):
    """USD per hour for one architecture."""

    vcpu_hour: Rate
    gib_hour: Rate

    def scaled(self, share: Decimal) -> Rates:
        return Rates(vcpu_hour=self.vcpu_hour * share, gib_hour=self.gib_hour * share)


class SpotRates(_Strict):
    """A region's Fargate Spot rates as AWS publishes them on its Fargate pricing page. They change over time (AWS
    sets them from long-term supply and demand), hence their date."""

    x86_64: Rates
    arm64: Rates
    source: Text
    as_of: date


class RegionRates(_Strict):
    """One region of the table: on-demand Linux rates, storage above the free 20 GB, and where they come from."""

    x86_64: Rates
    arm64: Rates
    ephemeral_storage_gib_hour: Rate
    source: Text
    as_of: date
    #: published Spot rates; without them Spot is on-demand less the deployment's Spot discount
    spot: SpotRates | None = None


class PriceTableDocument(_Strict):
    """The JSON shape of fargate_prices.json and of PRICE_TABLE_JSON."""

    about: str | None = None
    regions: dict[RegionName, RegionRates]


@dataclass(frozen=True)
class PriceTable:
    regions: Mapping[str, RegionRates]
    #: what Fargate Spot takes off on-demand where a region has no published Spot rates
    spot_discount_percent: Decimal = DEFAULT_SPOT_DISCOUNT_PERCENT


@dataclass(frozen=True)
class RegionPrices:
    """The rates a function meters with, and where they come from."""

    region: str
    x86_64: Rates
    arm64: Rates
    ephemeral_storage_gib_hour: Decimal
    source: str
    as_of: date
    spot_x86_64: Rates
    spot_arm64: Rates
    spot_source: str
    spot_as_of: date

    def rates(self, architecture: str, *, spot: bool = False) -> Rates:
        if architecture == "ARM64":
            return self.spot_arm64 if spot else self.arm64
        return self.spot_x86_64 if spot else self.x86_64


def parse_price_table(text: str, where: str) -> PriceTableDocument:
    """The table in `text`; InvalidPriceTable naming `where` and each fault (with its path) if it is malformed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPriceTable(where, f"not JSON ({exc}); expected {_SHAPE}") from None
    try:
        return PriceTableDocument.model_validate(data)
    except ValidationError as exc:
        faults = [f"{'.'.join(str(p) for p in e['loc']) or 'the table'}: {e['msg']}" for e in exc.errors()]
        hint = f"expected {_SHAPE}"
        if any(e["loc"] and e["loc"][-1] == "spot_multiplier" for e in exc.errors()):
            hint += f'; Spot is priced with {SPOT_DISCOUNT_VARIABLE} or a region\'s published "spot" rates'
        raise InvalidPriceTable(where, f"{'; '.join(faults)}; {hint}") from None


def _spot_discount(text: str) -> Decimal:
    try:
        percent = Decimal(text.strip())
    except InvalidOperation:
        percent = Decimal("NaN")
    if not percent.is_finite() or not Decimal(0) <= percent < Decimal(100):
        raise InvalidPriceTable(
            SPOT_DISCOUNT_VARIABLE,
            f"{text!r} is not a percentage from 0 up to (not including) 100: what Fargate Spot takes off the "
            "on-demand price (AWS: up to 70%)",
        )
    return percent


def configured_price_table(price_table_json: str | None, spot_discount_percent: str | None) -> PriceTable:
    """The shipped table with PRICE_TABLE_JSON's regions added or replacing the shipped ones, and the Spot discount
    of FARGATE_SPOT_DISCOUNT_PERCENT. InvalidPriceTable names the variable that is malformed."""
    table = DEFAULT_PRICE_TABLE
    if price_table_json:
        document = parse_price_table(price_table_json, PRICE_TABLE_VARIABLE)
        table = replace(table, regions={**table.regions, **document.regions})
    if spot_discount_percent:
        table = replace(table, spot_discount_percent=_spot_discount(spot_discount_percent))
    return table


def region_prices(region: str, table: PriceTable | None = None) -> RegionPrices:
    """The prices for `region`. A region the table lacks raises UnknownPriceRegion: it never borrows another's."""
    table = table or DEFAULT_PRICE_TABLE
    entry = table.regions.get(region)
    if entry is None:
        raise UnknownPriceRegion(region, table.regions)
    if entry.spot is not None:
        spot_x86_64, spot_arm64 = entry.spot.x86_64, entry.spot.arm64
        spot_source, spot_as_of = entry.spot.source, entry.spot.as_of
    else:
        discount = table.spot_discount_percent
        share = (Decimal(100) - discount) / Decimal(100)
        spot_x86_64, spot_arm64 = entry.x86_64.scaled(share), entry.arm64.scaled(share)
        spot_source = (
            f"on-demand less {discount.normalize():f}% (FargateSpotDiscountPercent; AWS: Spot runs at up to 70% off)"
            f"; on-demand: {entry.source}"
        )
        spot_as_of = entry.as_of
    return RegionPrices(
        region=region,
        x86_64=entry.x86_64,
        arm64=entry.arm64,
        ephemeral_storage_gib_hour=entry.ephemeral_storage_gib_hour,
        source=entry.source,
        as_of=entry.as_of,
        spot_x86_64=spot_x86_64,
        spot_arm64=spot_arm64,
        spot_source=spot_source,
        spot_as_of=spot_as_of,
    )


DEFAULT_PRICE_TABLE = PriceTable(parse_price_table(PRICE_TABLE_FILE.read_text(), PRICE_TABLE_FILE.name).regions)


@dataclass(frozen=True)
class Charge:
    billed_seconds: int
    vcpu: Decimal
    memory_gib: Decimal
    vcpu_seconds: Decimal
    gib_seconds: Decimal
    ephemeral_storage_gib_seconds: Decimal
    cost_usd: Decimal
    #: where the rates used come from, and the day they were read
    price_source: str
    price_as_of: date


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
    # AWS publishes Spot rates for vCPU and memory only; ephemeral storage has the one rate.
    rates = prices.rates(architecture, spot=spot)
    usd_seconds_per_hour = (
        vcpu_seconds * rates.vcpu_hour
        + gib_seconds * rates.gib_hour
        + storage_seconds * prices.ephemeral_storage_gib_hour
    )
    cost = usd_seconds_per_hour / Decimal(3600)
    return Charge(
        billed_seconds=billed,
        vcpu=vcpu,
        memory_gib=memory_gib,
        vcpu_seconds=vcpu_seconds,
        gib_seconds=gib_seconds,
        ephemeral_storage_gib_seconds=storage_seconds,
        cost_usd=cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP),
        price_source=prices.spot_source if spot else prices.source,
        price_as_of=prices.spot_as_of if spot else prices.as_of,
    )
