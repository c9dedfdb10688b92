"""Settings fail loudly: no resource has a default, and a function that lacks a variable it needs fails its cold
start with an error naming the variable."""

from __future__ import annotations

import itertools

import pytest
from taskrunner.settings import RESOURCE_VARIABLES, MissingSettings, Settings
from taskrunner.wiring import SUBMISSION, TASKS

from tests.support.functions import cold_start, function_environment

_names = itertools.count()


def test_nothing_names_a_resource_by_default() -> None:
    settings = Settings.from_environment({"AWS_REGION": "eu-west-1"})
    assert settings.resources == {}
    for read in ("tasks_table", "idempotency_table", "state_machine_arn", "cluster", "task_log_group"):
        with pytest.raises(MissingSettings):
            getattr(settings, read)


def test_reading_a_resource_that_is_not_set_names_its_variable() -> None:
    settings = Settings.from_environment({"AWS_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_NAME": "finalize-fn"})
    with pytest.raises(MissingSettings, match="STATE_MACHINE_ARN") as raised:
        _ = settings.state_machine_arn
    assert raised.value.variables == ("STATE_MACHINE_ARN",)
    assert "finalize-fn" in str(raised.value)


def test_require_names_every_missing_variable_at_once() -> None:
    env = {"AWS_REGION": "eu-west-1", "TASKS_TABLE_NAME": "tasks", "ECS_CLUSTER": ""}  # empty is missing
    with pytest.raises(MissingSettings) as raised:
        Settings.from_environment(env).require([*TASKS, *SUBMISSION])
    missing = ("ECS_CLUSTER", "TASK_FAMILY_PREFIX", "TASK_ROLE_ARN", "TASK_EXECUTION_ROLE_ARN", "TASK_LOG_GROUP")
    assert raised.value.variables == (*missing, "STATE_MACHINE_ARN")
    assert ", ".join([*missing, "STATE_MACHINE_ARN"]) in str(raised.value)


def test_require_rejects_names_that_are_not_resource_variables() -> None:
    with pytest.raises(ValueError, match="TASKS_TABLE"):
        Settings.from_environment({"AWS_REGION": "eu-west-1"}).require(["TASKS_TABLE"])


def test_the_region_comes_from_aws_region_or_aws_default_region_and_nowhere_else() -> None:
    assert Settings.from_environment({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}).region == (
        "eu-west-1"
    )
    assert Settings.from_environment({"AWS_DEFAULT_REGION": "us-west-2"}).region == "us-west-2"
    with pytest.raises(MissingSettings, match="AWS_REGION"):
        Settings.from_environment({})


def test_values_that_are_not_resources_keep_their_defaults() -> None:
    settings = Settings.from_environment({"AWS_REGION": "eu-west-1"})
    assert (settings.idempotency_ttl_seconds, settings.task_log_stream_prefix, settings.price_table()) == (
        86_400,
        "task",
        None,
    )
    assert (
        Settings.from_environment({"AWS_REGION": "eu-west-1", "IDEMPOTENCY_TTL_SECONDS": "60"}).idempotency_ttl_seconds
        == 60
    )


@pytest.mark.parametrize(
    ("function", "variable"),
    [
        ("finalize", "TASKS_TABLE_NAME"),
        ("stop_task", "ECS_CLUSTER"),
        ("task_events", "TASK_FAMILY_PREFIX"),
        ("scheduled_submit", "STATE_MACHINE_ARN"),
    ],
)
def test_a_function_without_a_variable_it_needs_fails_its_cold_start_naming_it(function: str, variable: str) -> None:
    env = {k: v for k, v in function_environment().items() if k != variable}
    env["AWS_LAMBDA_FUNCTION_NAME"] = f"taskrunner-{function}"
    with pytest.raises(MissingSettings, match=variable) as raised:
        cold_start(function, env, f"cold_start_{function}_{next(_names)}", clear=True)
    assert raised.value.variables == (variable,)
    assert f"taskrunner-{function}" in str(raised.value)


@pytest.mark.parametrize("function", ["finalize", "stop_task", "task_events", "scheduled_submit"])
def test_a_function_needs_nothing_beyond_what_it_uses(function: str) -> None:
    """Functions that do not start workflows, read logs, take Idempotency-Keys or manage schedules start
    without those variables (the template does not give the state machine's ARN to the functions it calls)."""
    uses = {"scheduled_submit": {*TASKS, *SUBMISSION}}.get(function, set(TASKS))
    env = {k: v for k, v in function_environment().items() if k not in set(RESOURCE_VARIABLES) - uses}
    module = cold_start(function, env, f"cold_start_{function}_{next(_names)}", clear=True)
    assert callable(module.lambda_handler)
