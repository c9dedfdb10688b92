"""The public models: every rule of TaskSpec, and forward-only status transitions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from taskrunner.fargate import VALID_MEMORY_BY_CPU
from taskrunner.models import TERMINAL_STATUSES, TaskSpec, TaskStatus, run_task_overrides


def errors_of(**fields):
    with pytest.raises(ValidationError) as info:
        TaskSpec(**fields)
    return info.value.errors()


def test_defaults_follow_the_contract():
    spec = TaskSpec(image="python:3.12-slim")
    assert (spec.cpu, spec.memory, spec.architecture, spec.ephemeral_storage_gib, spec.timeout_seconds) == (
        256,
        512,
        "X86_64",
        20,
        3600,
    )
    assert spec.capacity == "ON_DEMAND"


def test_wrong_memory_names_the_cpu_and_lists_valid_values():
    [error] = errors_of(image="x", cpu=256, memory=4096)
    assert error["loc"] == ("memory",)
    assert "cpu 256" in error["msg"] and "512, 1024, 2048" in error["msg"]
    assert error["ctx"]["valid_values"] == [512, 1024, 2048]


def test_unknown_cpu_lists_the_valid_cpus_and_does_not_also_blame_memory():
    [error] = errors_of(image="x", cpu=300, memory=512)
    assert error["loc"] == ("cpu",)
    assert error["ctx"]["valid_values"] == sorted(VALID_MEMORY_BY_CPU)


@given(st.sampled_from([(c, m) for c, ms in VALID_MEMORY_BY_CPU.items() for m in ms]))
def test_every_size_in_the_table_is_accepted(size):
    cpu, memory = size
    assert TaskSpec(image="busybox", cpu=cpu, memory=memory).memory == memory


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "python:3.12-slim",
        "public.ecr.aws/docker/library/python:3.12",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app@sha256:" + "a" * 64,
        "localhost:5000/x/y:1",
    ],
)
def test_image_references_are_accepted(image):
    assert TaskSpec(image=image).image == image


@pytest.mark.parametrize("image", ["", "UPPER/case", "has space", "x" * 256, "a:b:c", "-leading"])
def test_bad_image_references_are_rejected(image):
    assert errors_of(image=image)[0]["loc"] == ("image",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ephemeral_storage_gib", 19),
        ("ephemeral_storage_gib", 201),
        ("timeout_seconds", 0),
        ("timeout_seconds", 1_209_601),
        ("name", "n" * 129),
        ("architecture", "MIPS"),
        ("capacity", "RESERVED"),
        ("tags", {f"k{i}": "v" for i in range(21)}),
        ("command", "echo hi"),
    ],
)
def test_out_of_range_fields_are_rejected_by_name(field, value):
    assert errors_of(image="busybox", **{field: value})[0]["loc"][0] == field


def test_environment_names_must_be_shell_identifiers():
    errors = errors_of(image="busybox", environment={"GOOD_1": "x", "1BAD": "y"})
    assert errors[0]["loc"][0] == "environment" and "1BAD" in errors[0]["loc"]


def test_unknown_fields_are_rejected():
    assert errors_of(image="busybox", gpu=1)[0]["loc"] == ("gpu",)


def test_overrides_limit_is_checked_at_submission():
    [error] = errors_of(image="busybox", environment={"BIG": "x" * 8200})
    assert error["type"] == "overrides_too_large"
    assert error["ctx"]["limit"] == 8192


@given(st.integers(min_value=0, max_value=9000))
def test_overrides_limit_boundary_is_exact(length):
    overhead = len(json.dumps(run_task_overrides(TaskSpec(image="b", environment={"V": ""})), separators=(",", ":")))
    fields = {"image": "b", "environment": {"V": "v" * length}}
    if overhead + length <= 8192:
        assert TaskSpec(**fields)
    else:
        assert errors_of(**fields)[0]["type"] == "overrides_too_large"


def test_overrides_carry_command_environment_cpu_memory_and_storage():
    spec = TaskSpec(
        image="b",
        command=["sh", "-c", "echo hi"],
        environment={"A": "1"},
        cpu=512,
        memory=2048,
        ephemeral_storage_gib=50,
    )
    overrides = run_task_overrides(spec)
    assert overrides["Cpu"] == "512" and overrides["Memory"] == "2048"
    assert overrides["EphemeralStorage"] == {"SizeInGiB": 50}
    [container] = overrides["ContainerOverrides"]
    assert container["Command"] == ["sh", "-c", "echo hi"]
    assert container["Environment"] == [{"Name": "A", "Value": "1"}]
    assert "EphemeralStorage" not in run_task_overrides(TaskSpec(image="b"))


ORDER = [TaskStatus.SUBMITTED, TaskStatus.QUEUED, TaskStatus.PROVISIONING, TaskStatus.RUNNING]


@given(st.sampled_from(list(TaskStatus)), st.sampled_from(list(TaskStatus)))
def test_status_only_moves_forward_and_terminal_never_changes(current, new):
    allowed = current.can_become(new)
    if current in TERMINAL_STATUSES:
        assert not allowed
    elif new in TERMINAL_STATUSES:
        assert allowed
    else:
        assert allowed == (ORDER.index(new) > ORDER.index(current))
