"""Fargate's size table, billing rule and prices (DESIGN §5)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from samtranslator.yaml_helper import yaml_parse
from taskrunner import fargate
from taskrunner.errors import InvalidPriceTable, TaskRunnerError, UnknownPriceRegion
from taskrunner.fargate import VALID_MEMORY_BY_CPU, billed_seconds, charge, memory_fits_cpu, region_prices
from taskrunner.models import Architecture, Capacity, Metering, TaskSpec
from taskrunner.observation import TaskObservation
from taskrunner.service import TaskService
from taskrunner.settings import Settings

from tests.support.fakes import FakeCompute, FakeLogs, InMemoryTaskStore, RecordingOrchestrator
from tests.support.stack import TEMPLATE, Stack

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


# ------------------------------------------------------------------------------------------------ prices

#: the regions whose every rate fargate_prices.json sources from AWS's price list (its "about" says which not)
SHIPPED_REGIONS = ("eu-west-2", "us-east-1", "us-east-2")

SIZE_1_VCPU_2_GIB = TaskSpec(image="busybox", cpu=1024, memory=2048)
#: a region no shipped table has, and rates for it that are obviously not AWS's (test data)
TEST_REGION_RATES = {
    "x86_64": {"vcpu_hour": "0.05", "gib_hour": "0.005"},
    "arm64": {"vcpu_hour": "0.04", "gib_hour": "0.004"},
    "ephemeral_storage_gib_hour": "0.0002",
    "source": "test rates",
    "as_of": "2026-11-01",
}


def one_hour(spec: TaskSpec, prices: fargate.RegionPrices, *, spot: bool = False) -> fargate.Charge:
    return charge(
        billed=3600,
        cpu_units=spec.cpu,
        memory_mib=spec.memory,
        ephemeral_storage_gib=spec.ephemeral_storage_gib,
        architecture=spec.architecture.value,
        spot=spot,
        prices=prices,
    )


@dataclass
class Deployment:
    """A TaskService as a function builds it from its environment, with in-memory ports."""

    service: TaskService

    @classmethod
    def in_region(cls, region: str, **environment: str) -> Deployment:
        settings = Settings.from_environment({**Stack().environment(), "AWS_REGION": region, **environment})
        service = TaskService(
            store=InMemoryTaskStore(),
            orchestrator=RecordingOrchestrator(),
            compute=FakeCompute(),
            logs=FakeLogs(),
            settings=settings,
            clock=lambda: T0,
        )
        return cls(service)

    def meter_one_hour(self, spec: TaskSpec, *, capacity_provider: str = "FARGATE") -> Metering:
        task = self.service.submit("default", spec)
        observation = TaskObservation(
            ecs_task_arn="arn:aws:ecs:eu-west-2:123456789012:task/taskrunner/0123456789abcdef",
            last_status="STOPPED",
            started_by=task.task_id,
            capacity_provider=capacity_provider,
            pull_started_at=T0,
            stopped_at=T0 + timedelta(hours=1),
        )
        return self.service.meter(task, observation)


def test_us_east_1_rates_are_the_documented_ones():
    prices = region_prices("us-east-1")
    assert (prices.x86_64.vcpu_hour, prices.x86_64.gib_hour) == (Decimal("0.04048"), Decimal("0.004445"))
    assert (prices.arm64.vcpu_hour, prices.arm64.gib_hour) == (Decimal("0.03238"), Decimal("0.00356"))
    assert prices.ephemeral_storage_gib_hour == Decimal("0.000111")


def test_the_price_table_is_one_data_file_shipped_in_the_layer():
    # Given the layer's source folder (sam build copies all of it into the layer's python/ folder)
    layer_package = Path(fargate.__file__).parent
    # Then the table is a JSON file in the taskrunner package, and it is the table the code uses
    assert fargate.PRICE_TABLE_FILE.parent == layer_package
    assert layer_package.parent.name == "common" and layer_package.parent.parent.name == "layers"
    document = json.loads(fargate.PRICE_TABLE_FILE.read_text())
    assert set(document["regions"]) == set(fargate.DEFAULT_PRICE_TABLE.regions)


@pytest.mark.parametrize("region", SHIPPED_REGIONS)
def test_every_shipped_region_has_every_rate_with_its_source_and_date(region):
    entry = fargate.DEFAULT_PRICE_TABLE.regions[region]
    prices = region_prices(region)
    rates = [
        prices.x86_64.vcpu_hour,
        prices.x86_64.gib_hour,
        prices.arm64.vcpu_hour,
        prices.arm64.gib_hour,
        prices.ephemeral_storage_gib_hour,
    ]
    assert all(isinstance(r, Decimal) and r.is_finite() and r > 0 for r in rates), rates
    # AWS prices Linux/ARM below Linux/x86 on both axes in every region it lists
    assert prices.arm64.vcpu_hour < prices.x86_64.vcpu_hour
    assert prices.arm64.gib_hour < prices.x86_64.gib_hour
    assert prices.ephemeral_storage_gib_hour < prices.x86_64.gib_hour
    assert entry.source.strip() and "AWS" in entry.source
    assert date(2026, 1, 1) <= entry.as_of <= date.today()
    assert (prices.source, prices.as_of) == (entry.source, entry.as_of)


def test_the_shipped_table_holds_the_sourced_regions():
    assert set(fargate.DEFAULT_PRICE_TABLE.regions) == set(SHIPPED_REGIONS)


@pytest.mark.parametrize("region", ["eu-west-1", "ap-southeast-2", "us-east-7"])
def test_a_region_without_prices_fails_loudly_instead_of_using_us_east_1(region):
    with pytest.raises(UnknownPriceRegion) as raised:
        region_prices(region)
    error = raised.value
    assert isinstance(error, TaskRunnerError)
    assert error.region == region
    message = str(error)
    assert region in message
    assert all(known in message for known in fargate.DEFAULT_PRICE_TABLE.regions)
    assert "PRICE_TABLE_JSON" in message and "PriceTableJson" in message


def test_a_function_in_a_region_without_prices_fails_when_it_builds_its_service():
    with pytest.raises(UnknownPriceRegion, match="ap-southeast-2"):
        Deployment.in_region("ap-southeast-2")


def test_metering_in_london_uses_londons_rates():
    # Given a function deployed in eu-west-2 with the shipped table
    deployment = Deployment.in_region("eu-west-2")
    # When it meters an hour of 1 vCPU / 2 GiB x86 and of the same on ARM
    x86 = deployment.meter_one_hour(SIZE_1_VCPU_2_GIB)
    arm = deployment.meter_one_hour(SIZE_1_VCPU_2_GIB.model_copy(update={"architecture": Architecture.ARM64}))
    # Then the cost is London's (AWS price list, 2026-09-11), not us-east-1's (0.04048 + 2 x 0.004445)
    assert Decimal(str(x86.cost_usd)) == Decimal("0.04656") + 2 * Decimal("0.00511")
    assert Decimal(str(arm.cost_usd)) == Decimal("0.03725") + 2 * Decimal("0.00409")
    assert x86.region == "eu-west-2"


def test_price_table_json_adds_a_region_the_shipped_table_lacks():
    # Given PRICE_TABLE_JSON with Sydney's rates
    table = json.dumps({"regions": {"ap-southeast-2": TEST_REGION_RATES}})
    deployment = Deployment.in_region("ap-southeast-2", PRICE_TABLE_JSON=table)
    # When a task is metered there
    metering = deployment.meter_one_hour(SIZE_1_VCPU_2_GIB.model_copy(update={"ephemeral_storage_gib": 30}))
    # Then those rates are used, storage above 20 GiB included
    assert Decimal(str(metering.cost_usd)) == Decimal("0.05") + 2 * Decimal("0.005") + 10 * Decimal("0.0002")
    # and the shipped regions are still there
    extended = Settings.from_environment({"AWS_REGION": "ap-southeast-2", "PRICE_TABLE_JSON": table}).price_table()
    assert extended is not None
    assert region_prices("us-east-1", extended) == region_prices("us-east-1")


def test_price_table_json_replaces_a_shipped_region():
    table = json.dumps({"regions": {"us-east-1": TEST_REGION_RATES}})
    settings = Settings.from_environment({"AWS_REGION": "us-east-1", "PRICE_TABLE_JSON": table})
    prices = region_prices("us-east-1", settings.price_table())
    assert prices.x86_64.vcpu_hour == Decimal("0.05")
    assert (prices.source, prices.as_of) == ("test rates", date(2026, 11, 1))
    assert region_prices("eu-west-2", settings.price_table()) == region_prices("eu-west-2")


def _with(**changes: object) -> dict[str, object]:
    return {**TEST_REGION_RATES, **changes}


MALFORMED_TABLES = {
    "not JSON": "{not json",
    "not an object": "[]",
    "the old shape, regions at the top": json.dumps({"eu-west-1": TEST_REGION_RATES}),
    "regions not an object": json.dumps({"regions": []}),
    "a region name that is not one": json.dumps({"regions": {"Ireland": TEST_REGION_RATES}}),
    "a rate missing": json.dumps({"regions": {"eu-west-1": _with(arm64={"vcpu_hour": "0.04"})}}),
    "an architecture missing": json.dumps(
        {"regions": {"eu-west-1": {k: v for k, v in TEST_REGION_RATES.items() if k != "arm64"}}}
    ),
    "a negative rate": json.dumps({"regions": {"eu-west-1": _with(ephemeral_storage_gib_hour="-0.1")}}),
    "a zero rate": json.dumps({"regions": {"eu-west-1": _with(x86_64={"vcpu_hour": "0", "gib_hour": "0.005"})}}),
    "a rate that is not a number": json.dumps({"regions": {"eu-west-1": _with(ephemeral_storage_gib_hour="cheap")}}),
    "a rate that is a boolean": json.dumps({"regions": {"eu-west-1": _with(ephemeral_storage_gib_hour=True)}}),
    "an infinite rate": json.dumps({"regions": {"eu-west-1": _with(ephemeral_storage_gib_hour="Infinity")}}),
    "no source": json.dumps({"regions": {"eu-west-1": {k: v for k, v in TEST_REGION_RATES.items() if k != "source"}}}),
    "a date that is not one": json.dumps({"regions": {"eu-west-1": _with(as_of="last week")}}),
    "the old fixed Spot multiplier": json.dumps({"regions": {"eu-west-1": _with(spot_multiplier="0.30")}}),
}


@pytest.mark.parametrize("text", MALFORMED_TABLES.values(), ids=MALFORMED_TABLES.keys())
def test_a_malformed_price_table_json_fails_with_a_clear_message(text):
    # Given a function whose PRICE_TABLE_JSON is malformed
    settings = Settings.from_environment({**Stack().environment(), "AWS_REGION": "eu-west-1", "PRICE_TABLE_JSON": text})
    # When it builds its service (at cold start) it fails, naming the variable and the template parameter
    with pytest.raises(InvalidPriceTable) as raised:
        TaskService(
            store=InMemoryTaskStore(),
            orchestrator=RecordingOrchestrator(),
            compute=FakeCompute(),
            logs=FakeLogs(),
            settings=settings,
        )
    assert "PRICE_TABLE_JSON" in str(raised.value) and "PriceTableJson" in str(raised.value)


def test_the_malformed_table_error_says_where_it_is_wrong():
    text = MALFORMED_TABLES["a negative rate"]
    with pytest.raises(InvalidPriceTable, match=r"regions\.eu-west-1\.ephemeral_storage_gib_hour"):
        Settings.from_environment({"AWS_REGION": "eu-west-1", "PRICE_TABLE_JSON": text}).price_table()


# ------------------------------------------------------------------------------------------------ Spot


def test_spot_is_the_on_demand_rate_less_the_default_discount():
    prices = region_prices("us-east-1")
    assert Decimal(70) == fargate.DEFAULT_SPOT_DISCOUNT_PERCENT
    spot = one_hour(SIZE_1_VCPU_2_GIB, prices, spot=True)
    assert spot.cost_usd == ((Decimal("0.04048") + 2 * Decimal("0.004445")) * Decimal("0.30")).quantize(
        fargate.COST_QUANTUM
    )


def test_the_spot_discount_is_a_setting():
    # Given a deployment whose FargateSpotDiscountPercent is 65 (AWS's published Spot price ÷ on-demand = 0.35)
    deployment = Deployment.in_region("eu-west-2", FARGATE_SPOT_DISCOUNT_PERCENT="65")
    # When a Spot task is metered
    metering = deployment.meter_one_hour(SIZE_1_VCPU_2_GIB, capacity_provider="FARGATE_SPOT")
    # Then its vCPU and memory cost 35 % of London's on-demand rates
    on_demand = Decimal("0.04656") + 2 * Decimal("0.00511")
    assert Decimal(str(metering.cost_usd)) == (on_demand * Decimal("0.35")).quantize(fargate.COST_QUANTUM)
    assert metering.capacity is Capacity.SPOT


@pytest.mark.parametrize("percent", ["100", "-1", "seventy", "NaN"])
def test_a_spot_discount_outside_0_to_100_fails_with_a_clear_message(percent):
    settings = Settings.from_environment({"AWS_REGION": "us-east-1", "FARGATE_SPOT_DISCOUNT_PERCENT": percent})
    with pytest.raises(InvalidPriceTable, match="FARGATE_SPOT_DISCOUNT_PERCENT"):
        settings.price_table()


def test_published_spot_rates_in_the_table_win_over_the_discount():
    # Given Spot rates for a region, copied with their date from AWS's Fargate pricing page
    spot = {
        "x86_64": {"vcpu_hour": "0.02", "gib_hour": "0.002"},
        "arm64": {"vcpu_hour": "0.015", "gib_hour": "0.0015"},
        "source": "test Spot rates",
        "as_of": "2026-11-20",
    }
    table = json.dumps({"regions": {"ap-southeast-2": {**TEST_REGION_RATES, "spot": spot}}})
    prices = region_prices(
        "ap-southeast-2",
        Settings.from_environment(
            {"AWS_REGION": "ap-southeast-2", "PRICE_TABLE_JSON": table, "FARGATE_SPOT_DISCOUNT_PERCENT": "50"}
        ).price_table(),
    )
    # When a Spot task runs an hour with 30 GiB of storage
    c = one_hour(SIZE_1_VCPU_2_GIB.model_copy(update={"ephemeral_storage_gib": 30}), prices, spot=True)
    # Then vCPU and memory cost the Spot rates; storage, which AWS gives no Spot rate, its one rate
    assert c.cost_usd == Decimal("0.02") + 2 * Decimal("0.002") + 10 * Decimal("0.0002")
    assert (c.price_source, c.price_as_of) == ("test Spot rates", date(2026, 11, 20))


def test_spot_storage_is_billed_at_the_storage_rate():
    prices = region_prices("us-east-1")
    c = one_hour(TaskSpec(image="busybox", cpu=256, memory=512, ephemeral_storage_gib=30), prices, spot=True)
    compute = (Decimal("0.25") * Decimal("0.04048") + Decimal("0.5") * Decimal("0.004445")) * Decimal("0.30")
    assert c.cost_usd == (compute + 10 * Decimal("0.000111")).quantize(fargate.COST_QUANTUM)


def test_a_charge_says_which_rates_it_used():
    prices = region_prices("eu-west-2")
    on_demand = one_hour(SIZE_1_VCPU_2_GIB, prices)
    spot = one_hour(SIZE_1_VCPU_2_GIB, prices, spot=True)
    assert (on_demand.price_source, on_demand.price_as_of) == (prices.source, prices.as_of)
    assert spot.price_as_of == prices.as_of
    assert "70" in spot.price_source and "FargateSpotDiscountPercent" in spot.price_source
    assert prices.source in spot.price_source


def test_the_metering_records_which_rates_it_used():
    metering = Deployment.in_region("eu-west-2").meter_one_hour(SIZE_1_VCPU_2_GIB)
    london = fargate.DEFAULT_PRICE_TABLE.regions["eu-west-2"]
    assert (metering.price_source, metering.price_as_of) == (london.source, london.as_of)


@given(
    region=st.sampled_from(SHIPPED_REGIONS),
    size=st.sampled_from([(cpu, memory) for cpu, memories in DOCUMENTED.items() for memory in memories]),
    architecture=st.sampled_from(["X86_64", "ARM64"]),
    storage=st.integers(min_value=20, max_value=200),
    billed=st.integers(min_value=60, max_value=86_400),
)
def test_spot_never_costs_more_than_on_demand(region, size, architecture, storage, billed):
    cpu, memory = size
    prices = region_prices(region)
    costs = [
        charge(
            billed=billed,
            cpu_units=cpu,
            memory_mib=memory,
            ephemeral_storage_gib=storage,
            architecture=architecture,
            spot=spot,
            prices=prices,
        ).cost_usd
        for spot in (False, True)
    ]
    assert 0 < costs[1] < costs[0]


# ------------------------------------------------------------------------------------------------ template


def test_the_template_passes_the_price_settings_to_every_function():
    template = yaml_parse(TEMPLATE.read_text())
    parameters = template["Parameters"]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["PRICE_TABLE_JSON"] == {"Ref": "PriceTableJson"}
    assert variables["FARGATE_SPOT_DISCOUNT_PERCENT"] == {"Ref": "FargateSpotDiscountPercent"}
    assert parameters["PriceTableJson"]["Type"] == "String"
    assert parameters["PriceTableJson"]["Default"] == ""
    assert '"regions"' in parameters["PriceTableJson"]["Description"]
    spot = parameters["FargateSpotDiscountPercent"]
    assert Decimal(str(spot["Default"])) == fargate.DEFAULT_SPOT_DISCOUNT_PERCENT
    assert "70" in spot["Description"]
