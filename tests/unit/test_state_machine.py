"""The run-task state machine (statemachines/run_task.asl.json).

Three kinds of checks, none of which touches the network:
- the definition, with its ``${...}`` substitutions resolved, parses with moto's ASL parser;
- its structure keeps the contract of DESIGN §6 and §8 (what is retried, what is caught where, how many
  transitions and Lambda invocations a successful task costs), computed by walking the graph;
- every path runs on moto's Step Functions interpreter with each Task state's response mocked, so the
  JSONPath, intrinsic functions and Choice rules are evaluated for real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from taskrunner.adapters import SLOT_ATTRIBUTE
from taskrunner.models import Architecture, Capacity, TaskSpec
from taskrunner.service import Outcome, TaskService
from taskrunner.task_definitions import (
    TASK_DEFINITION_KEY_PREFIX,
    TASK_DEFINITION_SORT_KEY,
    task_definition_family,
)

from taskrunner_local.deploy import render_definition
from tests.support.fakes import (
    FakeCompute,
    FakeLogs,
    InMemoryTaskDefinitionCache,
    InMemoryTaskStore,
    RecordingOrchestrator,
)
from tests.support.stack import Stack
from tests.support.state_machine import Interpreter, InTurn, Raise, Run, without_waits

ROOT = Path(__file__).resolve().parents[2]
DEFINITION_PATH = ROOT / "statemachines" / "run_task.asl.json"
SAMPLE_INPUTS = ROOT / "events" / "statemachine"

ACCOUNT = "123456789012"
REGION = "us-east-1"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:taskrunner-run-task"
TASK_ID = "01M8FHYKXWMKH5HMFTBDEJCY65"  # the task in events/statemachine/execution_input.json
ECS_TASK_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/taskrunner/0f6c3a1d2b4e4f5a8c9d0e1f2a3b4c5d"
TASK_DEFINITION_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/taskrunner-x86_64-20g-b594ae6a7c39e3ce0830b016:3"

SUBSTITUTIONS: dict[str, str] = {
    "ClusterArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/taskrunner",
    "SubnetIds": "subnet-0a1b2c3d4e5f60718,subnet-0f1e2d3c4b5a69788",
    "SecurityGroupIds": "sg-0123456789abcdef0",
    "AssignPublicIp": "ENABLED",
    "TasksTableName": "taskrunner-tasks",
    "FinalizeFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:taskrunner-finalize",
    "StopTaskFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:taskrunner-stop-task",
    "QueueFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:taskrunner-queue",
    "SlotAttribute": SLOT_ATTRIBUTE,
    "TaskExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/taskrunner-task-execution",
    "TaskRoleArn": f"arn:aws:iam::{ACCOUNT}:role/taskrunner-task",
    "TaskLogGroup": "/taskrunner/tasks",
    "LogStreamPrefix": "task",
    "Region": REGION,
}

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
# Keys of the execution state that the state machine itself writes; everything else it reads must come
# from the execution input.
MACHINE_WRITTEN_KEYS = {
    "prepared", "claim", "registration", "ecs_task", "error", "stopped", "stop_error", "described", "stop_polls",
    "finalize_error", "record_error",
}  # fmt: skip
#: the finalize function's states: it is idempotent, so they may retry whatever it fails with
FINALIZE_STATES = {
    "Finalize", "FinalizeTaskFailed", "FinalizeError", "FinalizeNotStarted", "FinalizeTimedOut",
    "FinalizeTimedOutWithoutTask", "FinalizeQueueTimedOut",
}  # fmt: skip


def render(substitutions: dict[str, str]) -> str:
    """The definition as CloudFormation's DefinitionSubstitutions would deliver it."""
    return render_definition(DEFINITION_PATH.read_text(), substitutions)


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    return json.loads(render(SUBSTITUTIONS))


@pytest.fixture(scope="module")
def states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return definition["States"]


def load_sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLE_INPUTS / name).read_text())


def next_targets(state: dict[str, Any]) -> list[str]:
    targets = [state["Next"]] if "Next" in state else []
    targets += [choice["Next"] for choice in state.get("Choices", [])]
    targets += [state["Default"]] if "Default" in state else []
    targets += [catcher["Next"] for catcher in state.get("Catch", [])]
    return targets


def follow_next(states: dict[str, dict[str, Any]], start: str, choices: dict[str, str] | None = None) -> list[str]:
    """The states entered from `start` when every Task succeeds, following Next until End; a Choice state goes
    where `choices` says (which must be one of its targets)."""
    choices = choices or {}
    path = [start]
    while True:
        state = states[path[-1]]
        if state["Type"] == "Choice":
            assert path[-1] in choices, f"the path reaches the Choice {path[-1]}: say where it goes"
            assert choices[path[-1]] in next_targets(state), (path[-1], choices[path[-1]])
            path.append(choices[path[-1]])
        elif "Next" in state:
            path.append(state["Next"])
        else:
            break
        assert len(path) <= len(states), f"the success path loops: {path}"
    assert states[path[-1]].get("End") is True, f"{path[-1]} neither has Next nor ends the execution"
    return path


def error_names(rules: list[dict[str, Any]]) -> list[str]:
    return [name for rule in rules for name in rule["ErrorEquals"]]


def input_paths(node: Any) -> set[str]:
    """First path segments of every `$.x` reference to a state's input (ResultSelectors read the result)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ResultSelector":
                continue
            if isinstance(value, str) and (key.endswith(".$") or key in {"Variable", "TimeoutSecondsPath"}):
                found.update(re.findall(r"(?<![$\w])\$\.(\w+)", value))
            else:
                found |= input_paths(value)
    elif isinstance(node, list):
        for item in node:
            found |= input_paths(item)
    return found


# ----------------------------------------------------------------------------- definition


def test_the_definition_uses_exactly_the_known_substitutions() -> None:
    assert set(PLACEHOLDER.findall(DEFINITION_PATH.read_text())) == set(SUBSTITUTIONS)


def test_the_rendered_definition_parses_with_motos_asl_parser() -> None:
    program, _ = AmazonStateLanguageParser.parse(render(SUBSTITUTIONS))
    assert program is not None


def test_the_definition_has_a_comment_and_no_execution_timeout(definition: dict[str, Any]) -> None:
    # Tasks may run for 14 days: the runTask state carries each task's own timeout instead.
    assert definition["Comment"]
    assert "TimeoutSeconds" not in definition
    assert "TimeoutSecondsPath" not in definition


def test_every_transition_target_exists(definition: dict[str, Any], states: dict[str, dict[str, Any]]) -> None:
    assert definition["StartAt"] in states
    for name, state in states.items():
        for target in next_targets(state):
            assert target in states, f"{name} points at a missing state {target}"


def test_every_state_is_reachable(definition: dict[str, Any], states: dict[str, dict[str, Any]]) -> None:
    seen, todo = set(), [definition["StartAt"]]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += next_targets(states[name])
    assert seen == set(states)


def test_the_state_machine_reads_only_fields_of_the_execution_input(definition: dict[str, Any]) -> None:
    read = input_paths(definition["States"]) - MACHINE_WRITTEN_KEYS
    for sample in ("execution_input.json", "execution_input_spot_storage.json"):
        assert read <= load_sample(sample).keys(), sample


# ----------------------------------------------------------------------------- RunTask


def test_run_task_waits_for_the_task_under_the_tasks_own_timeout(states: dict[str, dict[str, Any]]) -> None:
    run_task = states["RunTask"]
    assert run_task["Resource"] == "arn:aws:states:::ecs:runTask.sync"
    assert run_task["TimeoutSecondsPath"] == "$.timeout_seconds"
    assert "TimeoutSeconds" not in run_task
    parameters = run_task["Parameters"]
    assert parameters["StartedBy.$"] == "$.task_id"
    assert parameters["TaskDefinition.$"] == "$.prepared.task_definition_arn"
    assert parameters["Overrides.$"] == "$.overrides"
    assert parameters["Tags.$"] == "$.tags"
    assert parameters["CapacityProviderStrategy"] == [{"CapacityProvider.$": "$.capacity_provider", "Weight": 1}]
    assert "LaunchType" not in parameters  # exclusive with a capacity provider strategy


def test_run_task_retries_only_infrastructure_errors(states: dict[str, dict[str, Any]]) -> None:
    retried = error_names(states["RunTask"]["Retry"])
    assert set(retried) == {
        "ECS.AmazonECSException",
        "AmazonECS.Unknown",
        "ECS.ThrottlingException",
        "ECS.ServerException",
    }
    throttling, *others = states["RunTask"]["Retry"]
    # Throttling (ECS.AmazonECSException on AWS, cause "Rate exceeded") waits out Fargate's launch quota: a long,
    # capped budget, sized by tests/unit/test_launch_budget.py; other infrastructure errors get a short one.
    assert throttling["ErrorEquals"] == ["ECS.AmazonECSException", "ECS.ThrottlingException"]
    assert throttling["MaxDelaySeconds"] <= 60 and throttling["MaxAttempts"] <= 50
    for retrier in others:
        assert retrier["MaxAttempts"] <= 3
    for retrier in states["RunTask"]["Retry"]:
        assert retrier.get("JitterStrategy") == "FULL"


def test_no_state_retries_task_failures_and_only_finalize_retries_everything(
    states: dict[str, dict[str, Any]],
) -> None:
    for name, state in states.items():
        retriers = state.get("Retry", [])
        retried = error_names(retriers)
        if name in FINALIZE_STATES:
            # The finalize function is idempotent (conditional writes; the first complete call wins): whatever it
            # failed with (a lost race, DynamoDB or ECS throttling, a timeout) is retried, capped and jittered,
            # after Lambda's own errors and before the failure is recorded.
            assert retriers[-1]["ErrorEquals"] == ["States.ALL"], name
            assert retriers[-1]["MaxDelaySeconds"] <= 60 and retriers[-1]["JitterStrategy"] == "FULL", name
            assert state["Catch"] == [
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.finalize_error", "Next": "RecordFinalizeFailure"}
            ], name
            continue
        assert "States.TaskFailed" not in retried, name  # how a user's failure arrives from RunTask
        assert "States.ALL" not in retried, name


def test_a_finalize_that_keeps_failing_is_recorded_and_fails_the_execution(states: dict[str, dict[str, Any]]) -> None:
    record = states["RecordFinalizeFailure"]
    assert record["Resource"] == "arn:aws:states:::dynamodb:updateItem"
    assert record["Parameters"]["ConditionExpression"] == "attribute_exists(pk)"  # never creates a task item
    assert "status" not in record["Parameters"]["UpdateExpression"]
    assert "metering" not in record["Parameters"]["UpdateExpression"]
    assert record["Next"] == "FinalizeFailed" and record["Catch"][0]["Next"] == "FinalizeFailed"
    assert states["FinalizeFailed"]["Type"] == "Fail"


def test_run_task_catches_timeout_then_task_failure_then_everything(states: dict[str, dict[str, Any]]) -> None:
    catchers = states["RunTask"]["Catch"]
    position = {name: i for i, catcher in enumerate(catchers) for name in catcher["ErrorEquals"]}
    assert position["States.Timeout"] < position["States.TaskFailed"] < position["States.ALL"]
    assert catchers[-1]["ErrorEquals"] == ["States.ALL"]
    target = {name: catcher["Next"] for catcher in catchers for name in catcher["ErrorEquals"]}
    assert target["States.Timeout"] == "StopOnTimeout"
    assert target["States.TaskFailed"] == "FinalizeTaskFailed"
    assert target["States.ALL"] == "FinalizeError"
    # States.TaskFailed matches every error name but States.Timeout: ECS API errors must be caught first.
    for infrastructure_error in error_names(states["RunTask"]["Retry"]):
        assert position[infrastructure_error] < position["States.TaskFailed"]
        assert target[infrastructure_error] == "FinalizeError"
    for catcher in catchers:
        assert catcher["ResultPath"] == "$.error"


def test_task_results_are_trimmed_with_result_selectors(states: dict[str, dict[str, Any]]) -> None:
    # State payloads are capped at 256 KiB (DESIGN §6). RunTask's is a task description of a few KB, kept whole:
    # selecting its keys fails the state when one is missing, and ECS's Task shape makes most of them optional.
    assert "ResultSelector" not in states["RunTask"]
    assert states["RunTask"]["ResultPath"] == "$.ecs_task"
    for name, state in states.items():
        if state["Type"] == "Task" and state["Resource"].startswith("arn:aws:states:::aws-sdk:"):
            assert "ResultSelector" in state, name


# ----------------------------------------------------------------------------- the rest


def test_a_task_definition_not_handed_over_is_claimed_and_registered_once(states: dict[str, dict[str, Any]]) -> None:
    assert states["HasTaskDefinition"]["Choices"][1:] == [
        {"Variable": "$.prepared.task_definition_arn", "IsPresent": True, "Next": "MarkProvisioning"}
    ]
    assert states["HasTaskDefinition"]["Default"] == "ClaimRegistration"
    claim = states["ClaimRegistration"]
    assert claim["Resource"] == "arn:aws:states:::dynamodb:putItem"
    assert claim["Parameters"]["ConditionExpression"] == "attribute_not_exists(pk)"
    assert claim["Parameters"]["Item"]["pk"] == {
        "S.$": f"States.Format('{TASK_DEFINITION_KEY_PREFIX}{{}}', $.task_definition.family)"
    }
    assert claim["Parameters"]["Item"]["sk"] == {"S": TASK_DEFINITION_SORT_KEY}
    assert claim["Catch"][0]["ErrorEquals"] == ["DynamoDB.ConditionalCheckFailedException"]
    assert claim["Next"] == "ChooseRegistration"
    assert states["ReadTaskDefinition"]["Parameters"]["ConsistentRead"] is True
    assert states["ChooseRegistration"]["Choices"][0]["Next"] == "RegisterTaskDefinitionWithStorage"
    assert states["ChooseRegistration"]["Default"] == "RegisterTaskDefinition"
    for name in ("RegisterTaskDefinition", "RegisterTaskDefinitionWithStorage"):
        parameters = states[name]["Parameters"]
        assert parameters["NetworkMode"] == "awsvpc"
        assert parameters["RequiresCompatibilities"] == ["FARGATE"]
        (container,) = parameters["ContainerDefinitions"]
        assert container["Name"] == "main"
        assert container["Memory.$"] == "States.StringToJson($.task_definition.memory)"  # moto needs a number
        assert container["LogConfiguration"]["LogDriver"] == "awslogs"
        assert ("EphemeralStorage" in parameters) is name.endswith("WithStorage")
        assert states[name]["Next"] == "RememberTaskDefinition"
        assert states[name]["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "ReleaseRegistration"}
        ]
    assert states["RememberTaskDefinition"]["Next"] == "MarkProvisioning"
    assert states["ReleaseRegistration"]["Next"] == "FinalizeError"


def test_waiting_for_another_runs_registration_is_bounded(states: dict[str, dict[str, Any]]) -> None:
    guard = [rule for rule in states["IsRegistered"]["Choices"] if rule.get("Variable") == "$.registration.polls"]
    assert guard and guard[0]["NumericGreaterThanEquals"] <= 60 and guard[0]["Next"] == "ChooseRegistration"
    assert states["IsRegistered"]["Default"] == "CountRegistrationPoll"
    assert states["CountRegistrationPoll"]["Parameters"] == {"polls.$": "States.MathAdd($.registration.polls, 1)"}
    assert states["WaitForRegistration"]["Seconds"] <= 5


def test_a_cancelled_task_is_not_started(states: dict[str, dict[str, Any]]) -> None:
    mark = states["MarkProvisioning"]
    assert mark["Resource"] == "arn:aws:states:::dynamodb:updateItem"
    assert mark["ResultPath"] is None
    # a SUBMITTED task holds the slot it was admitted with; a QUEUED one moves on once a dispatch granted it one
    assert mark["Parameters"]["ConditionExpression"] == "#s = :submitted OR (#s = :queued AND attribute_exists(#slot))"
    assert mark["Parameters"]["ExpressionAttributeNames"] == {"#s": "status", "#slot": SLOT_ATTRIBUTE}
    assert mark["Catch"][0] == {
        "ErrorEquals": ["DynamoDB.ConditionalCheckFailedException"],
        "ResultPath": "$.error",
        "Next": "FinalizeNotStarted",
    }


def test_every_lambda_invocation_retries_lambda_service_errors(states: dict[str, dict[str, Any]]) -> None:
    for name, state in states.items():
        if state.get("Resource", "").startswith(LAMBDA_INVOKE):
            assert set(error_names(state["Retry"])) >= LAMBDA_SERVICE_ERRORS, name
            assert all(retrier.get("BackoffRate", 1) > 1 for retrier in state["Retry"]), name


def test_finalize_states_send_the_known_outcomes(states: dict[str, dict[str, Any]]) -> None:
    outcomes = {
        name: state["Parameters"]["Payload"]["outcome"]
        for name, state in states.items()
        if state.get("Resource") == LAMBDA_INVOKE
        and state["Parameters"]["FunctionName"] == SUBSTITUTIONS["FinalizeFunctionArn"]
    }
    assert outcomes == {
        "Finalize": "COMPLETED",
        "FinalizeTaskFailed": "TASK_FAILED",
        "FinalizeError": "ERROR",
        "FinalizeNotStarted": "NOT_STARTED",
        "FinalizeTimedOut": "TIMED_OUT",
        "FinalizeTimedOutWithoutTask": "TIMED_OUT",
        "FinalizeQueueTimedOut": "QUEUE_TIMED_OUT",
    }
    for name in outcomes:
        assert states[name].get("End") is True, name


def test_the_stop_polling_loop_is_bounded(states: dict[str, dict[str, Any]]) -> None:
    guard = [rule for rule in states["IsStopped"]["Choices"] if rule.get("Variable") == "$.stop_polls.count"]
    assert states["IsStopped"]["Default"] == "CountStopPoll"
    assert guard and guard[0]["NumericGreaterThanEquals"] <= 120
    assert states["CountStopPoll"]["Parameters"] == {"count.$": "States.MathAdd($.stop_polls.count, 1)"}
    assert states["CountStopPoll"]["Next"] == "WaitForStop"


# ----------------------------------------------------------------------------- cost (DESIGN §8)


def lambda_invocations(states: dict[str, dict[str, Any]], path: list[str]) -> int:
    return sum(states[name].get("Resource", "").startswith(LAMBDA_INVOKE) for name in path)  # .waitForTaskToken too


def test_a_successful_task_costs_four_transitions_and_one_lambda_invocation(
    definition: dict[str, Any], states: dict[str, dict[str, Any]]
) -> None:
    # Every task of an image that has run before: its task definition comes with the execution input.
    path = follow_next(states, definition["StartAt"], {"HasTaskDefinition": "MarkProvisioning"})
    assert path == ["HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    assert len(path) <= 6
    assert lambda_invocations(states, path) <= 2


def queued_path(states: dict[str, dict[str, Any]], after_the_wait: dict[str, str]) -> list[str]:
    """The states a queued task enters when every Task succeeds: it waits for its slot, then goes on as any task."""
    assert states["WaitForSlot"]["Next"] == "HasTaskDefinition"
    return ["HasTaskDefinition", "WaitForSlot", *follow_next(states, "HasTaskDefinition", after_the_wait)]


def test_a_queued_task_costs_two_transitions_and_one_invocation_more(states: dict[str, dict[str, Any]]) -> None:
    # Given a task its tenant's quota had no room for, of an image that has run before
    path = queued_path(states, {"HasTaskDefinition": "MarkProvisioning"})
    # Then waiting for its slot costs WaitForSlot and a second HasTaskDefinition, and the queue function's invocation:
    # still within DESIGN §8's six transitions and two invocations (the wait itself costs nothing, however long)
    assert path == ["HasTaskDefinition", "WaitForSlot", "HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    assert len(path) <= 6
    assert lambda_invocations(states, path) == 2
    # and a task that was admitted at once still costs four transitions and one invocation
    fast = follow_next(states, "HasTaskDefinition", {"HasTaskDefinition": "MarkProvisioning"})
    assert len(fast) == 4 and lambda_invocations(states, fast) == 1


def test_a_queued_task_waits_for_a_token_under_its_queue_timeout(states: dict[str, dict[str, Any]]) -> None:
    [queued, *_] = states["HasTaskDefinition"]["Choices"]
    assert queued == {
        "And": [
            {"Variable": "$.queued", "IsPresent": True},
            {"Variable": "$.queued", "BooleanEquals": True},
        ],
        "Next": "WaitForSlot",
    }
    wait = states["WaitForSlot"]
    assert wait["Resource"] == "arn:aws:states:::lambda:invoke.waitForTaskToken"
    assert wait["Parameters"] == {
        "FunctionName": SUBSTITUTIONS["QueueFunctionArn"],
        "Payload": {"action": "wait", "task_id.$": "$.task_id", "token.$": "$$.Task.Token"},
    }
    assert wait["TimeoutSecondsPath"] == "$.queue_timeout_seconds" and "TimeoutSeconds" not in wait
    assert wait["ResultPath"] == "$.queued"  # the dispatch sends false: the Choice then lets the task on
    assert set(error_names(wait["Retry"])) == LAMBDA_SERVICE_ERRORS  # a retry would wait with a new token
    assert [(c["ErrorEquals"], c["Next"]) for c in wait["Catch"]] == [
        (["States.Timeout"], "FinalizeQueueTimedOut"),
        (["States.ALL"], "FinalizeError"),
    ]
    assert states["FinalizeQueueTimedOut"]["Parameters"]["Payload"]["outcome"] == Outcome.QUEUE_TIMED_OUT.value


@pytest.mark.parametrize("register", ["RegisterTaskDefinition", "RegisterTaskDefinitionWithStorage"])
def test_the_first_task_of_an_image_costs_eight_transitions_once_per_family(
    definition: dict[str, Any], states: dict[str, dict[str, Any]], register: str
) -> None:
    # Once per family (image, architecture, storage, roles): claim, register, record. Above DESIGN §8's six for
    # that one task; every later task of the family costs four.
    path = follow_next(
        states, definition["StartAt"], {"HasTaskDefinition": "ClaimRegistration", "ChooseRegistration": register}
    )
    assert path == [
        "HasTaskDefinition", "ClaimRegistration", "ChooseRegistration", register, "RememberTaskDefinition",
        "MarkProvisioning", "RunTask", "Finalize",
    ]  # fmt: skip
    assert lambda_invocations(states, path) == 1


def test_a_run_that_waits_for_another_runs_registration_costs_ten_transitions_and_four_a_poll(
    definition: dict[str, Any], states: dict[str, dict[str, Any]]
) -> None:
    # Only runs started while their family's first run registers it (a burst of a new image): the claim fails.
    [lost] = [
        c["Next"]
        for c in states["ClaimRegistration"]["Catch"]
        if "DynamoDB.ConditionalCheckFailedException" in c["ErrorEquals"]
    ]
    waiting = follow_next(
        states,
        lost,
        {"IsWaitingForRegistration": "InitRegistrationPolls", "IsRegistered": "UseRegisteredTaskDefinition"},
    )
    path = [definition["StartAt"], "ClaimRegistration", *waiting]
    assert path[-3:] == ["MarkProvisioning", "RunTask", "Finalize"]
    assert len(path) == 10 and lambda_invocations(states, path) == 1
    poll = ["CountRegistrationPoll", "WaitForRegistration", "ReadTaskDefinition", "IsRegistered"]
    assert follow_next(states, poll[0], {"IsRegistered": "UseRegisteredTaskDefinition"})[:4] == poll


# ----------------------------------------------------------------------------- sample inputs


SAMPLE_SPECS = {
    "execution_input.json": (
        TASK_ID,
        "default",
        TaskSpec(
            image="python:3.12-slim",
            command=["sh", "-c", "echo hello from taskrunner"],
            environment={"GREETING": "hi"},
            name="hello",
        ),
    ),
    "execution_input_spot_storage.json": (
        "01M8FJ3Q9T6ZV2C8K4N7PBXR1D",
        "acme",
        TaskSpec(
            image="public.ecr.aws/docker/library/python:3.12-slim",
            command=["python", "-c", "print(sum(range(10**7)))"],
            environment={"BATCH": "nightly", "LOG_LEVEL": "INFO"},
            cpu=1024,
            memory=4096,
            architecture=Architecture.ARM64,
            capacity=Capacity.SPOT,
            ephemeral_storage_gib=50,
            timeout_seconds=7200,
            name="nightly-batch",
            tags={"team": "data"},
        ),
    ),
}


#: the samples whose image has run before: the service hands the workflow its recorded task definition
CACHED_SAMPLES = {"execution_input.json"}


@pytest.mark.parametrize("sample", sorted(SAMPLE_SPECS))
def test_sample_inputs_are_what_the_service_starts_executions_with(sample: str) -> None:
    task_id, tenant, spec = SAMPLE_SPECS[sample]
    orchestrator = RecordingOrchestrator()
    settings = Stack().settings()
    cached = {task_definition_family(settings, spec): TASK_DEFINITION_ARN} if sample in CACHED_SAMPLES else {}
    service = TaskService(
        store=InMemoryTaskStore(),
        orchestrator=orchestrator,
        compute=FakeCompute(),
        logs=FakeLogs(),
        settings=settings,
        task_definitions=InMemoryTaskDefinitionCache(cached),
        new_id=lambda: task_id,
    )

    service.submit(tenant, spec)

    assert orchestrator.started[task_id] == load_sample(sample)


def test_the_finalize_states_send_only_outcomes_the_service_knows(states: dict[str, dict[str, Any]]) -> None:
    sent = {
        state["Parameters"]["Payload"]["outcome"]
        for state in states.values()
        if state.get("Resource") == LAMBDA_INVOKE and "outcome" in state["Parameters"]["Payload"]
    }
    assert sent <= {outcome.value for outcome in Outcome}


# ----------------------------------------------------------------------------- executions on moto


Execute = Callable[[dict[str, Any], dict[str, Any]], Run]


@pytest.fixture
def interpreter(monkeypatch: pytest.MonkeyPatch) -> Interpreter:
    """moto's interpreter with no AWS endpoint at all: a Task state without a mocked response fails the test."""
    return Interpreter(monkeypatch, aws=False)


@pytest.fixture
def execute(interpreter: Interpreter) -> Execute:
    """Runs the definition (Wait states not waiting) with every Task state's response mocked."""
    document = without_waits(json.loads(render(SUBSTITUTIONS)))

    def run(execution_input: dict[str, Any], responses: dict[str, Any]) -> Run:
        return interpreter.run(document, execution_input, responses)

    return run


def ecs_task(last_status: str = "STOPPED") -> dict[str, Any]:
    """An ECS task description in the PascalCase runTask.sync and the aws-sdk integration return."""
    return {
        "TaskArn": ECS_TASK_ARN,
        "ClusterArn": SUBSTITUTIONS["ClusterArn"],
        "TaskDefinitionArn": TASK_DEFINITION_ARN,
        "LastStatus": last_status,
        "DesiredStatus": "STOPPED",
        "StopCode": "EssentialContainerExited",
        "StoppedReason": "Essential container in task exited",
        "Containers": [{"Name": "main", "ExitCode": 0, "LastStatus": last_status}],
        "CapacityProviderName": "FARGATE",
        "LaunchType": "FARGATE",
        "Cpu": "256",
        "Memory": "512",
        "Attachments": [{"Type": "ElasticNetworkInterface", "Details": [{"Name": "subnetId", "Value": "subnet-0a1b"}]}],
        "CreatedAt": 1767225600000,
        "PullStartedAt": 1767225601000,
        "PullStoppedAt": 1767225605000,
        "StartedAt": 1767225606000,
        "StoppingAt": 1767225610000,
        "ExecutionStoppedAt": 1767225610500,
        "StoppedAt": 1767225621000,
    }


def finalized(status: str) -> dict[str, Any]:
    """What lambda:invoke returns for the finalize function."""
    return {"StatusCode": 200, "Payload": {"task_id": TASK_ID, "status": status, "metered": True}}


def stop_result(ecs_task_arn: str | None) -> dict[str, Any]:
    """What lambda:invoke returns for the stop-task function."""
    return {"StatusCode": 200, "Payload": {"task_id": TASK_ID, "ecs_task_arn": ecs_task_arn}}


FOUND = {"TaskDefinition": {"TaskDefinitionArn": TASK_DEFINITION_ARN, "Family": "taskrunner-x86_64-20g-1d04"}}


def test_a_task_that_succeeds_runs_four_states_and_reports_the_task(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )

    assert run.ended
    assert run.entered == ["HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    assert run.output == finalized("SUCCEEDED")["Payload"]
    payload = run.parameters("Finalize")["Payload"]
    assert payload["outcome"] == "COMPLETED"
    assert payload["task_id"] == TASK_ID
    assert payload["ecs_task"] == ecs_task()  # the whole description: a few KB
    network = run.parameters("RunTask")["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network == {
        "Subnets": ["subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788"],
        "SecurityGroups": ["sg-0123456789abcdef0"],
        "AssignPublicIp": "ENABLED",
    }
    assert run.parameters("RunTask")["TaskDefinition"] == TASK_DEFINITION_ARN
    update = run.parameters("MarkProvisioning")
    assert update["Key"] == {"pk": {"S": f"TASK#{TASK_ID}"}, "sk": {"S": "TASK"}}
    assert update["ExpressionAttributeValues"][":gsi2pk"] == {
        "S": load_sample("execution_input.json")["status_keys"]["PROVISIONING"]
    }
    assert update["ExpressionAttributeValues"][":now"]["S"].startswith(str(datetime.now(UTC).year))


def test_a_new_image_with_more_storage_registers_a_task_definition_with_storage(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input_spot_storage.json"),
        {
            "ClaimRegistration": {},
            "RegisterTaskDefinitionWithStorage": FOUND,
            "RememberTaskDefinition": {},
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )

    assert run.ended
    assert "RegisterTaskDefinitionWithStorage" in run.entered
    registered = run.parameters("RegisterTaskDefinitionWithStorage")
    assert registered["Family"] == load_sample("execution_input_spot_storage.json")["task_definition"]["family"]
    assert registered["EphemeralStorage"] == {"SizeInGiB": 50}
    assert registered["RuntimePlatform"] == {"CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"}
    assert (registered["Cpu"], registered["Memory"]) == ("1024", "4096")
    (container,) = registered["ContainerDefinitions"]
    assert container["Memory"] == 4096
    assert container["Image"] == "public.ecr.aws/docker/library/python:3.12-slim"
    assert container["LogConfiguration"]["Options"] == {
        "awslogs-group": "/taskrunner/tasks",
        "awslogs-region": REGION,
        "awslogs-stream-prefix": "task",
    }
    assert run.parameters("RunTask")["TaskDefinition"] == TASK_DEFINITION_ARN


def test_a_new_image_with_default_storage_registers_a_plain_task_definition(execute: Execute) -> None:
    run = execute(
        first_run("execution_input.json"),
        {
            "ClaimRegistration": {},
            "RegisterTaskDefinition": FOUND,
            "RememberTaskDefinition": {},
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )

    assert run.ended
    assert "RegisterTaskDefinition" in run.entered
    registered = run.parameters("RegisterTaskDefinition")
    assert "EphemeralStorage" not in registered
    assert registered["ContainerDefinitions"][0]["Memory"] == 512


def test_a_task_cancelled_before_it_ran_is_finalized_as_not_started(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": Raise("DynamoDB.ConditionalCheckFailedException", "The conditional request failed"),
            "FinalizeNotStarted": finalized("CANCELLED"),
        },
    )

    assert run.ended
    assert run.entered == ["HasTaskDefinition", "MarkProvisioning", "FinalizeNotStarted"]
    assert run.parameters("FinalizeNotStarted")["Payload"] == {
        "task_id": TASK_ID,
        "outcome": "NOT_STARTED",
    }


def test_a_failed_task_is_finalized_with_the_task_in_the_cause(execute: Execute) -> None:
    failed = ecs_task() | {"Containers": [{"Name": "main", "ExitCode": 3, "LastStatus": "STOPPED"}]}
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("States.TaskFailed", json.dumps(failed)),
            "FinalizeTaskFailed": finalized("FAILED"),
        },
    )

    assert run.ended
    assert run.entered == ["HasTaskDefinition", "MarkProvisioning", "RunTask", "FinalizeTaskFailed"]
    payload = run.parameters("FinalizeTaskFailed")["Payload"]
    assert payload["outcome"] == "TASK_FAILED"
    assert payload["error"]["Error"] == "States.TaskFailed"
    assert json.loads(payload["error"]["Cause"])["Containers"][0]["ExitCode"] == 3


def test_an_ecs_api_error_is_finalized_as_an_error_not_a_task_failure(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("ECS.InvalidParameterException", "Task definition does not support launch_type FARGATE."),
            "FinalizeError": finalized("FAILED"),
        },
    )

    assert run.ended
    assert run.entered[-1] == "FinalizeError"
    assert run.parameters("FinalizeError")["Payload"]["error"]["Error"] == "ECS.InvalidParameterException"


def test_a_timed_out_task_is_stopped_and_finalized_once_ecs_reports_it_stopped(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": stop_result(ECS_TASK_ARN),
            "DescribeStoppingTask": {"Tasks": [ecs_task() | {"StopCode": "UserInitiated"}], "Failures": []},
            "FinalizeTimedOut": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered == [
        "HasTaskDefinition", "MarkProvisioning", "RunTask", "StopOnTimeout", "HasEcsTask", "InitStopPolls",
        "WaitForStop", "DescribeStoppingTask", "IsTaskKnown", "PickStoppingTask", "IsStopped", "FinalizeTimedOut",
    ]  # fmt: skip
    assert run.parameters("DescribeStoppingTask") == {"Cluster": SUBSTITUTIONS["ClusterArn"], "Tasks": [ECS_TASK_ARN]}
    payload = run.parameters("FinalizeTimedOut")["Payload"]
    assert payload["outcome"] == "TIMED_OUT"
    assert payload["ecs_task"]["StopCode"] == "UserInitiated"
    assert payload["error"]["Error"] == "States.Timeout"


def test_a_timed_out_task_without_an_ecs_task_is_finalized_at_once(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": stop_result(None),
            "FinalizeTimedOutWithoutTask": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered[-3:] == ["StopOnTimeout", "HasEcsTask", "FinalizeTimedOutWithoutTask"]
    assert "ecs_task" not in run.parameters("FinalizeTimedOutWithoutTask")["Payload"]


def test_a_timed_out_task_that_ecs_no_longer_knows_is_finalized_without_it(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": stop_result(ECS_TASK_ARN),
            "DescribeStoppingTask": {"Tasks": [], "Failures": [{"Arn": ECS_TASK_ARN, "Reason": "MISSING"}]},
            "FinalizeTimedOutWithoutTask": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered[-3:] == ["DescribeStoppingTask", "IsTaskKnown", "FinalizeTimedOutWithoutTask"]


def test_waiting_for_a_task_that_never_stops_gives_up_after_sixty_polls(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": stop_result(ECS_TASK_ARN),
            "DescribeStoppingTask": {"Tasks": [ecs_task("DEACTIVATING")], "Failures": []},
            "FinalizeTimedOut": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered.count("DescribeStoppingTask") == 61
    assert run.entered.count("CountStopPoll") == 60
    assert run.entered[-1] == "FinalizeTimedOut"
    assert run.parameters("FinalizeTimedOut")["Payload"]["ecs_task"]["LastStatus"] == "DEACTIVATING"


def test_a_failing_stop_still_finalizes_the_task_as_timed_out(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": Raise("TaskNotFound", "no such task"),
            "FinalizeTimedOutWithoutTask": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered[-2:] == ["StopOnTimeout", "FinalizeTimedOutWithoutTask"]


def queued(execution_input: dict[str, Any]) -> dict[str, Any]:
    """A sample input as the service sends it for a task that waits for its tenant's quota."""
    return execution_input | {"queued": True, "queue_timeout_seconds": 600}


def test_a_queued_task_waits_for_its_slot_then_runs_as_any_other(execute: Execute) -> None:
    # Given a queued task (the dispatch that grants its slot completes its token with false)
    run = execute(
        queued(load_sample("execution_input.json")),
        {
            "WaitForSlot": False,
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )
    # Then it gives the queue function its token, and once resumed runs in the usual four states
    assert run.ended
    assert run.entered == [
        "HasTaskDefinition", "WaitForSlot", "HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize",
    ]  # fmt: skip
    payload = run.parameters("WaitForSlot")["Payload"]
    assert payload["action"] == "wait" and payload["task_id"] == TASK_ID and payload["token"]
    assert run.parameters("MarkProvisioning")["ExpressionAttributeValues"][":queued"] == {"S": "QUEUED"}


def test_a_task_that_waits_past_its_queue_timeout_is_finalized_as_timed_out_in_the_queue(execute: Execute) -> None:
    run = execute(
        queued(load_sample("execution_input.json")),
        {"WaitForSlot": Raise("States.Timeout"), "FinalizeQueueTimedOut": finalized("TIMED_OUT")},
    )

    assert run.ended
    assert run.entered == ["HasTaskDefinition", "WaitForSlot", "FinalizeQueueTimedOut"]
    payload = run.parameters("FinalizeQueueTimedOut")["Payload"]
    assert payload["outcome"] == "QUEUE_TIMED_OUT" and payload["error"]["Error"] == "States.Timeout"


def test_a_queue_function_that_fails_finalizes_the_task_as_an_error(execute: Execute) -> None:
    run = execute(
        queued(load_sample("execution_input.json")),
        {"WaitForSlot": Raise("TaskNotFound", "no such task"), "FinalizeError": finalized("FAILED")},
    )

    assert run.ended
    assert run.entered == ["HasTaskDefinition", "WaitForSlot", "FinalizeError"]


def test_a_queued_task_cancelled_while_it_waited_is_not_started(execute: Execute) -> None:
    # Given a queued task cancelled meanwhile: its wait ends (the queue function resumes it), MarkProvisioning refuses
    run = execute(
        queued(load_sample("execution_input.json")),
        {
            "WaitForSlot": False,
            "MarkProvisioning": Raise("DynamoDB.ConditionalCheckFailedException", "The conditional request failed"),
            "FinalizeNotStarted": finalized("CANCELLED"),
        },
    )

    assert run.ended
    assert run.entered[-2:] == ["MarkProvisioning", "FinalizeNotStarted"]


# ----------------------------------------------------------------------------- at scale: task definitions


def with_cached_task_definition(sample: str = "execution_input.json") -> dict[str, Any]:
    """A sample input as the service sends it once the image's task definition is in the cache."""
    return load_sample(sample) | {"prepared": {"task_definition_arn": TASK_DEFINITION_ARN}}


def first_run(sample: str = "execution_input.json") -> dict[str, Any]:
    """A sample input as the service sends it for an image whose task definition nobody has recorded yet."""
    return {key: value for key, value in load_sample(sample).items() if key != "prepared"}


def cache_item(family: str, **attributes: str) -> dict[str, Any]:
    """The task definition's cache item as dynamodb:getItem returns it."""
    item = {"pk": {"S": f"{TASK_DEFINITION_KEY_PREFIX}{family}"}, "sk": {"S": TASK_DEFINITION_SORT_KEY}}
    return {"Item": item | {name: {"S": value} for name, value in attributes.items()}}


CLAIMED = Raise("DynamoDB.ConditionalCheckFailedException", "The conditional request failed")


def test_a_cached_task_definition_goes_straight_to_provisioning(execute: Execute) -> None:
    # Given an execution input that carries the cached task definition (no ECS call is mocked: none may happen)
    execution_input = with_cached_task_definition()
    # When it runs
    run = execute(execution_input, {"MarkProvisioning": {}, "RunTask": ecs_task(), "Finalize": finalized("SUCCEEDED")})
    # Then it runs the task with that task definition, in four states
    assert run.ended
    assert run.entered == ["HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    assert run.parameters("RunTask")["TaskDefinition"] == TASK_DEFINITION_ARN


def test_the_first_run_of_an_image_claims_the_registration_registers_and_remembers_it(execute: Execute) -> None:
    # Given the first run of a new image (with more storage)
    execution_input = first_run("execution_input_spot_storage.json")
    family = execution_input["task_definition"]["family"]
    # When it runs and wins the claim
    run = execute(
        execution_input,
        {
            "ClaimRegistration": {},
            "RegisterTaskDefinitionWithStorage": FOUND,
            "RememberTaskDefinition": {},
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )
    # Then it claims the family's cache item, registers the task definition and records its ARN there
    assert run.ended
    assert run.entered == [
        "HasTaskDefinition", "ClaimRegistration", "ChooseRegistration", "RegisterTaskDefinitionWithStorage",
        "RememberTaskDefinition", "MarkProvisioning", "RunTask", "Finalize",
    ]  # fmt: skip
    key = {"pk": {"S": f"{TASK_DEFINITION_KEY_PREFIX}{family}"}, "sk": {"S": TASK_DEFINITION_SORT_KEY}}
    claim = run.parameters("ClaimRegistration")
    assert claim["TableName"] == SUBSTITUTIONS["TasksTableName"]
    assert {k: claim["Item"][k] for k in key} == key
    assert claim["Item"]["claimed_by"] == {"S": execution_input["task_id"]}
    assert claim["ConditionExpression"] == "attribute_not_exists(pk)"
    remember = run.parameters("RememberTaskDefinition")
    assert remember["Key"] == key
    assert {"S": TASK_DEFINITION_ARN} in remember["ExpressionAttributeValues"].values()
    assert run.parameters("RunTask")["TaskDefinition"] == TASK_DEFINITION_ARN


def test_a_run_that_loses_the_claim_uses_the_winners_task_definition(execute: Execute) -> None:
    # Given the first run of a new image, while another run of it holds the claim and has registered
    execution_input = first_run()
    family = execution_input["task_definition"]["family"]
    registered = cache_item(family, claimed_by="01M8FHYKXWMKH5HMFTBDEJCY99", task_definition_arn=TASK_DEFINITION_ARN)
    # When it runs
    run = execute(
        execution_input,
        {
            "ClaimRegistration": CLAIMED,
            "ReadTaskDefinition": registered,
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )
    # Then it registers nothing and runs the task with the winner's task definition
    assert run.ended
    assert not {"RegisterTaskDefinition", "RegisterTaskDefinitionWithStorage"} & set(run.entered)
    assert run.parameters("ReadTaskDefinition")["ConsistentRead"] is True
    assert run.parameters("RunTask")["TaskDefinition"] == TASK_DEFINITION_ARN


def test_a_run_that_waits_in_vain_registers_after_thirty_polls(execute: Execute) -> None:
    # Given a claim whose holder never records a task definition (its execution was stopped, say)
    execution_input = first_run()
    pending = cache_item(execution_input["task_definition"]["family"], claimed_by="01M8FHYKXWMKH5HMFTBDEJCY99")
    # When the run waits for it
    run = execute(
        execution_input,
        {
            "ClaimRegistration": CLAIMED,
            "ReadTaskDefinition": pending,
            "RegisterTaskDefinition": FOUND,
            "RememberTaskDefinition": {},
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )
    # Then it polls thirty times, then registers the task definition itself and records it for the next runs
    assert run.ended
    assert run.entered.count("ReadTaskDefinition") == 31
    assert run.entered.count("WaitForRegistration") == 30
    assert run.entered[-5:] == [
        "RegisterTaskDefinition",
        "RememberTaskDefinition",
        "MarkProvisioning",
        "RunTask",
        "Finalize",
    ]


def test_a_claim_that_keeps_coming_and_going_is_polled_a_bounded_number_of_times(execute: Execute) -> None:
    # Given a claim that is gone whenever the run looks (its holders fail and release it) and back when it claims
    execution_input = first_run()
    # When the run waits for a task definition
    run = execute(
        execution_input,
        {
            "ClaimRegistration": CLAIMED,
            "ReadTaskDefinition": {},
            "RegisterTaskDefinition": FOUND,
            "RememberTaskDefinition": {},
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )
    # Then it tries to claim the released registration again, but gives up waiting after thirty polls
    assert run.ended
    assert run.entered.count("ClaimRegistration") == 31
    assert run.entered.count("ReadTaskDefinition") == 31
    assert "RegisterTaskDefinition" in run.entered


def test_a_failed_registration_releases_the_claim_and_finalizes_the_error(execute: Execute) -> None:
    # Given the first run of a new image whose registration fails
    execution_input = first_run()
    family = execution_input["task_definition"]["family"]
    # When it runs
    run = execute(
        execution_input,
        {
            "ClaimRegistration": {},
            "RegisterTaskDefinition": Raise("Ecs.AccessDeniedException", "not authorized to perform iam:PassRole"),
            "ReleaseRegistration": {},
            "FinalizeError": finalized("FAILED"),
        },
    )
    # Then it releases its own claim (so that a waiting run may claim it) and finalizes the task as an error
    assert run.ended
    assert run.entered[-3:] == ["RegisterTaskDefinition", "ReleaseRegistration", "FinalizeError"]
    release = run.parameters("ReleaseRegistration")
    assert release["Key"] == {
        "pk": {"S": f"{TASK_DEFINITION_KEY_PREFIX}{family}"},
        "sk": {"S": TASK_DEFINITION_SORT_KEY},
    }
    assert "claimed_by = :me" in release["ConditionExpression"]
    assert release["ExpressionAttributeValues"][":me"] == {"S": execution_input["task_id"]}
    assert run.parameters("FinalizeError")["Payload"]["error"]["Error"] == "Ecs.AccessDeniedException"


def test_mark_provisioning_writes_the_status_key_it_is_given_and_when_it_ran(execute: Execute) -> None:
    # Given an input whose status index key for PROVISIONING is sharded (the service decides the key)
    sharded = "TENANT#default#STATUS#PROVISIONING#7"
    execution_input = with_cached_task_definition() | {"status_keys": {"PROVISIONING": sharded}}
    # When it runs
    run = execute(
        execution_input,
        {"MarkProvisioning": {}, "RunTask": ecs_task(), "Finalize": finalized("SUCCEEDED")},
    )
    # Then MarkProvisioning writes that key, and records when the task may have been given to ECS
    update = run.parameters("MarkProvisioning")
    assert update["ExpressionAttributeValues"][":gsi2pk"] == {"S": sharded}
    assert "provisioning_at = :now" in update["UpdateExpression"]
    assert update["ExpressionAttributeValues"][":now"]["S"].startswith(str(datetime.now(UTC).year))


# ----------------------------------------------------------------------------- at scale: launching


THROTTLING_CAUSE = (
    "Rate exceeded. (Service: AmazonECS; Status Code: 400; Error Code: ThrottlingException; "
    "Request ID: 5b0d3c61-1f0e-4c55-9a1b-0a8f7e6d5c4b; Proxy: null)"
)


@pytest.mark.parametrize("error", ["ECS.AmazonECSException", "ECS.ThrottlingException"])
def test_a_run_task_throttled_beyond_the_old_budget_is_retried_until_it_runs(
    execute: Execute, interpreter: Interpreter, states: dict[str, dict[str, Any]], error: str
) -> None:
    # Given RunTask throttled six times in a row (twice the three retries it used to get), then admitted
    throttled = [Raise(error, THROTTLING_CAUSE)] * 6
    # When the task runs
    run = execute(
        with_cached_task_definition(),
        {
            "MarkProvisioning": {},
            "RunTask": InTurn(*throttled, ecs_task()),
            "Finalize": finalized("SUCCEEDED"),
            "FinalizeError": finalized("FAILED"),
        },
    )
    # Then it is finalized as completed, not as an error, after capped, fully jittered waits
    assert run.entered[-2:] == ["RunTask", "Finalize"]
    assert run.parameters("Finalize")["Payload"]["outcome"] == "COMPLETED"
    assert len(interpreter.retry_delays) == 6
    [throttling] = [r for r in states["RunTask"]["Retry"] if error in r["ErrorEquals"]]
    assert max(interpreter.retry_delays) <= throttling["MaxDelaySeconds"]


def test_a_stopped_task_without_its_optional_fields_is_finalized(execute: Execute) -> None:
    # Given a stopped task whose description lacks what ECS's Task shape leaves optional (a task that failed
    # before it pulled, say: no pull, start or stop codes and times)
    optional = {
        "StopCode", "StoppedReason", "CapacityProviderName", "PullStartedAt", "PullStoppedAt", "StartedAt",
        "StoppingAt", "ExecutionStoppedAt", "StoppedAt",
    }  # fmt: skip
    bare = {key: value for key, value in ecs_task().items() if key not in optional}
    # When runTask.sync returns it
    run = execute(
        with_cached_task_definition(),
        {
            "MarkProvisioning": {},
            "RunTask": bare,
            "Finalize": finalized("SUCCEEDED"),
            "FinalizeError": finalized("FAILED"),
        },
    )
    # Then the task is finalized with what the description has
    assert run.ended
    assert run.entered[-2:] == ["RunTask", "Finalize"]
    payload = run.parameters("Finalize")["Payload"]
    assert payload["outcome"] == "COMPLETED"
    assert payload["ecs_task"]["TaskArn"] == ECS_TASK_ARN and not optional & payload["ecs_task"].keys()


# ----------------------------------------------------------------------------- at scale: finalizing


STALE = Raise("StaleStatus", '{"errorMessage": "task kept changing while being finalized", "errorType": "StaleStatus"}')


def test_a_finalize_that_fails_once_is_retried_and_the_execution_succeeds(execute: Execute) -> None:
    # Given a finalize function that loses a race once (StaleStatus), then succeeds
    run = execute(
        with_cached_task_definition(),
        {
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": InTurn(STALE, finalized("SUCCEEDED")),
        },
    )
    # Then the execution succeeds with the finalized task
    assert run.ended
    assert run.output == finalized("SUCCEEDED")["Payload"]


@pytest.mark.parametrize(
    ("finalize_state", "responses"),
    [
        ("Finalize", {"RunTask": ecs_task()}),
        ("FinalizeTaskFailed", {"RunTask": Raise("States.TaskFailed", json.dumps(ecs_task()))}),
        ("FinalizeError", {"RunTask": Raise("ECS.InvalidParameterException", "No subnets")}),
    ],
)
def test_a_finalize_that_keeps_failing_is_recorded_on_the_task_and_fails_the_execution(
    execute: Execute, finalize_state: str, responses: dict[str, Any]
) -> None:
    # Given a finalize function that fails every time
    run = execute(
        with_cached_task_definition(),
        {
            "MarkProvisioning": {},
            **responses,
            finalize_state: STALE,
            "RecordFinalizeFailure": {},
        },
    )
    # Then the failure is recorded on the task (no final status, no metering) and the execution fails
    assert run.entered[-3:] == [finalize_state, "RecordFinalizeFailure", "FinalizeFailed"]
    assert run.error is not None and not run.ended
    record = run.parameters("RecordFinalizeFailure")
    assert record["Key"] == {"pk": {"S": f"TASK#{TASK_ID}"}, "sk": {"S": "TASK"}}
    assert record["UpdateExpression"].startswith("SET finalize_error = :error")
    recorded = json.loads(record["ExpressionAttributeValues"][":error"]["S"])
    assert recorded["Error"] == "StaleStatus" and "kept changing" in recorded["Cause"]
