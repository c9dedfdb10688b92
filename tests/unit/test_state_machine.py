"""The run-task state machine (statemachines/run_task.asl.json).

Three kinds of checks, none of which touches the network:
- the definition, with its ``${...}`` substitutions resolved, parses with moto's ASL parser;
- its structure keeps the contract of DESIGN §6 and §8 (what is retried, what is caught where, how many
  transitions and Lambda invocations a successful task costs), computed by walking the graph;
- every path runs on moto's Step Functions interpreter with each Task state's response mocked, so the
  JSONPath, intrinsic functions and Choice rules are evaluated for real.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from moto.stepfunctions.parser.api import HistoryEventType, StateMachineType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.state.exec.state_task import mock_eval_utils
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_dynamodb import (
    StateTaskServiceDynamoDB,
)
from moto.stepfunctions.parser.asl.eval.evaluation_details import (
    AWSExecutionDetails,
    EvaluationDetails,
    ExecutionDetails,
    StateMachineDetails,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.program_state import ProgramEnded
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
from moto.stepfunctions.parser.mocking.mock_config import (
    MockedResponse,
    MockedResponseReturn,
    MockedResponseThrow,
    MockTestCase,
    StateMockedResponses,
)
from taskrunner.models import Architecture, Capacity, TaskSpec
from taskrunner.service import Outcome, TaskService

from taskrunner_local.deploy import render_definition
from tests.support.fakes import FakeCompute, FakeLogs, InMemoryTaskStore, RecordingOrchestrator
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
DEFINITION_PATH = ROOT / "statemachines" / "run_task.asl.json"
SAMPLE_INPUTS = ROOT / "events" / "statemachine"

ACCOUNT = "123456789012"
REGION = "us-east-1"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:taskrunner-run-task"
TASK_ID = "01M8FHYKXWMKH5HMFTBDEJCY65"  # the task in events/statemachine/execution_input.json
ECS_TASK_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/taskrunner/0f6c3a1d2b4e4f5a8c9d0e1f2a3b4c5d"
TASK_DEFINITION_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/taskrunner-x86_64-20g-1d0447543fac833cc86eed3e:3"

SUBSTITUTIONS: dict[str, str] = {
    "ClusterArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/taskrunner",
    "SubnetIds": "subnet-0a1b2c3d4e5f60718,subnet-0f1e2d3c4b5a69788",
    "SecurityGroupIds": "sg-0123456789abcdef0",
    "AssignPublicIp": "ENABLED",
    "TasksTableName": "taskrunner-tasks",
    "FinalizeFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:taskrunner-finalize",
    "StopTaskFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:taskrunner-stop-task",
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
MACHINE_WRITTEN_KEYS = {"prepared", "ecs_task", "error", "stopped", "stop_error", "described", "stop_polls"}


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


def follow_next(states: dict[str, dict[str, Any]], start: str) -> list[str]:
    """The states entered from `start` when every Task succeeds, following Next until End."""
    path = [start]
    while "Next" in states[path[-1]]:
        assert states[path[-1]]["Type"] != "Choice"
        path.append(states[path[-1]]["Next"])
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
    for retrier in states["RunTask"]["Retry"]:
        assert retrier["MaxAttempts"] <= 3
        assert retrier.get("JitterStrategy") == "FULL"


def test_no_state_retries_task_failures_or_everything(states: dict[str, dict[str, Any]]) -> None:
    for name, state in states.items():
        retried = error_names(state.get("Retry", []))
        assert "States.TaskFailed" not in retried, name
        assert "States.ALL" not in retried, name


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
    # State payloads are capped at 256 KiB (DESIGN §6).
    expected = {
        "TaskArn", "LastStatus", "StopCode", "StoppedReason", "Containers", "CapacityProviderName", "CreatedAt",
        "PullStartedAt", "PullStoppedAt", "StartedAt", "StoppingAt", "ExecutionStoppedAt", "StoppedAt",
    }  # fmt: skip
    assert {key.removesuffix(".$") for key in states["RunTask"]["ResultSelector"]} == expected
    for name, state in states.items():
        if state["Type"] == "Task" and state["Resource"].startswith("arn:aws:states:::aws-sdk:"):
            assert "ResultSelector" in state, name


# ----------------------------------------------------------------------------- the rest


def test_a_missing_task_definition_is_registered(states: dict[str, dict[str, Any]]) -> None:
    describe = states["DescribeTaskDefinition"]
    assert describe["Resource"] == "arn:aws:states:::aws-sdk:ecs:describeTaskDefinition"
    not_found = describe["Catch"][0]
    assert {"Ecs.ClientException", "ecs.ClientException"} <= set(not_found["ErrorEquals"])  # AWS and moto
    assert not_found["Next"] == "ChooseRegistration"
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
        assert states[name]["Next"] == "MarkProvisioning"


def test_a_cancelled_task_is_not_started(states: dict[str, dict[str, Any]]) -> None:
    mark = states["MarkProvisioning"]
    assert mark["Resource"] == "arn:aws:states:::dynamodb:updateItem"
    assert mark["ResultPath"] is None
    assert mark["Parameters"]["ConditionExpression"] == "#s = :submitted"
    assert mark["Catch"][0] == {
        "ErrorEquals": ["DynamoDB.ConditionalCheckFailedException"],
        "ResultPath": "$.error",
        "Next": "FinalizeNotStarted",
    }


def test_every_lambda_invocation_retries_lambda_service_errors(states: dict[str, dict[str, Any]]) -> None:
    for name, state in states.items():
        if state.get("Resource") == LAMBDA_INVOKE:
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


def test_a_successful_task_costs_four_transitions_and_one_lambda_invocation(
    definition: dict[str, Any], states: dict[str, dict[str, Any]]
) -> None:
    path = follow_next(states, definition["StartAt"])
    assert path == ["DescribeTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    assert len(path) <= 6
    assert sum(states[name].get("Resource") == LAMBDA_INVOKE for name in path) <= 2


@pytest.mark.parametrize("register", ["RegisterTaskDefinition", "RegisterTaskDefinitionWithStorage"])
def test_the_first_task_of_an_image_stays_within_budget(states: dict[str, dict[str, Any]], register: str) -> None:
    path = ["DescribeTaskDefinition", "ChooseRegistration", *follow_next(states, register)]
    assert path[-3:] == ["MarkProvisioning", "RunTask", "Finalize"]
    assert len(path) <= 6
    assert sum(states[name].get("Resource") == LAMBDA_INVOKE for name in path) <= 2


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


@pytest.mark.parametrize("sample", sorted(SAMPLE_SPECS))
def test_sample_inputs_are_what_the_service_starts_executions_with(sample: str) -> None:
    task_id, tenant, spec = SAMPLE_SPECS[sample]
    orchestrator = RecordingOrchestrator()
    service = TaskService(
        store=InMemoryTaskStore(),
        orchestrator=orchestrator,
        compute=FakeCompute(),
        logs=FakeLogs(),
        settings=Stack().settings(),
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


class Raise:
    """A mocked Task response that fails the state with `error`."""

    def __init__(self, error: str, cause: str = "") -> None:
        self.error, self.cause = error, cause


def _mocked(response: Any) -> MockedResponse:
    if isinstance(response, Raise):
        return MockedResponseThrow(0, 0, error=response.error, cause=response.cause)
    return MockedResponseReturn(0, 0, payload=response)


class _Done:
    def terminated(self) -> None:  # the worker reports here when the program ends
        pass


class Run:
    """One execution on moto's interpreter, in this thread, with every Task state's response mocked.

    A mocked response is looked up by (state, retry number), so a state entered again in a loop gets
    the same response every time."""

    def __init__(self, execution_input: dict[str, Any], responses: dict[str, Any]) -> None:
        document = json.loads(render(SUBSTITUTIONS))
        document["States"]["WaitForStop"]["Seconds"] = 0  # poll without waiting
        test_case = MockTestCase(
            state_machine_name="taskrunner-run-task",
            test_case_name="unit",
            state_mocked_responses_list=[
                StateMockedResponses(
                    state_name=name, mocked_response_name=f"{name}Response", mocked_responses=[_mocked(r)]
                )
                for name, r in responses.items()
            ],
        )
        role = f"arn:aws:iam::{ACCOUNT}:role/taskrunner-state-machine"
        worker = ExecutionWorker(
            evaluation_details=EvaluationDetails(
                aws_execution_details=AWSExecutionDetails(account=ACCOUNT, region=REGION, role_arn=role),
                execution_details=ExecutionDetails(
                    arn=STATE_MACHINE_ARN.replace(":stateMachine:", ":execution:") + f":{execution_input['task_id']}",
                    name=execution_input["task_id"],
                    role_arn=role,
                    inpt=copy.deepcopy(execution_input),
                    start_time=datetime.now(UTC).isoformat(),
                ),
                state_machine_details=StateMachineDetails(
                    arn=STATE_MACHINE_ARN,
                    name="taskrunner-run-task",
                    typ=StateMachineType.STANDARD,
                    definition=json.dumps(document),
                ),
            ),
            exec_comm=_Done(),  # type: ignore[arg-type]
            cloud_watch_logging_session=None,
            activity_store={},
            mock_test_case=test_case,
        )
        worker._execution_logic()
        assert worker.env is not None
        self.env = worker.env
        self.events = list(worker.env.event_manager.get_event_history())

    @property
    def ended(self) -> bool:
        return isinstance(self.env.program_state(), ProgramEnded)

    @property
    def output(self) -> Any:
        return self.env.states.get_input()

    @property
    def entered(self) -> list[str]:
        return [e["stateEnteredEventDetails"]["name"] for e in self.events if "stateEnteredEventDetails" in e]

    def parameters(self, state: str) -> dict[str, Any]:
        """The parameters the named Task state sent, the last time it ran."""
        current, found = None, None
        for event in self.events:
            if "stateEnteredEventDetails" in event:
                current = event["stateEnteredEventDetails"]["name"]
            elif event["type"] == HistoryEventType.TaskScheduled and current == state:
                found = json.loads(event["taskScheduledEventDetails"]["parameters"])
        assert found is not None, f"{state} never ran"
        return found


@pytest.fixture
def execute(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any], dict[str, Any]], Run]:
    """Runs executions with no AWS endpoint at all: a Task state without a mocked response fails the test."""
    unmocked_calls: list[str] = []

    def no_aws(region: str, service: str, state_credentials: Any = None) -> Any:
        unmocked_calls.append(service)
        raise RuntimeError(f"a Task state without a mocked response called {service}")

    for name, module in list(sys.modules.items()):
        if name.startswith("moto.stepfunctions.parser") and hasattr(module, "boto_client_for"):
            monkeypatch.setattr(module, "boto_client_for", no_aws)

    # moto's DynamoDB integration renames every error that is not a botocore ClientError, a mocked one
    # included, to DynamoDB.AmazonDynamoDBException; keep the mocked error's own name as AWS would.
    dynamodb_from_error = StateTaskServiceDynamoDB._from_error

    def keep_mocked_error(self: StateTaskServiceDynamoDB, env: Any, ex: Exception) -> Any:
        if isinstance(ex, FailureEventException):
            return ex.failure_event
        return dynamodb_from_error(self, env, ex)

    monkeypatch.setattr(StateTaskServiceDynamoDB, "_from_error", keep_mocked_error)

    # moto refuses mocked errors named States.* (custom error names must not use the prefix), but
    # States.Timeout and States.TaskFailed are exactly what runTask.sync raises.
    def throw(env: Any, mocked_response: MockedResponseThrow) -> None:
        name = mocked_response.error
        error_name = StatesErrorName.from_name(name) if name.startswith("States.") else CustomErrorName(name)
        raise FailureEventException(
            failure_event=FailureEvent(
                env=env,
                error_name=error_name,
                event_type=HistoryEventType.TaskFailed,
                event_details=EventDetails(
                    taskFailedEventDetails=TaskFailedEventDetails(error=name, cause=mocked_response.cause)
                ),
            )
        )

    monkeypatch.setattr(mock_eval_utils, "_eval_mocked_response_throw", throw)

    def run(execution_input: dict[str, Any], responses: dict[str, Any]) -> Run:
        result = Run(execution_input, responses)
        assert not unmocked_calls, f"unmocked AWS calls: {unmocked_calls}; entered {result.entered}"
        return result

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


Execute = Callable[[dict[str, Any], dict[str, Any]], Run]

FOUND = {"TaskDefinition": {"TaskDefinitionArn": TASK_DEFINITION_ARN, "Family": "taskrunner-x86_64-20g-1d04"}}
NOT_FOUND = Raise("ecs.ClientException", "Unable to describe task definition. (Service: ecs, Status Code: 400)")


def test_a_task_that_succeeds_runs_four_states_and_reports_the_trimmed_task(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "DescribeTaskDefinition": FOUND,
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )

    assert run.ended
    assert run.entered == ["DescribeTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    assert run.output == finalized("SUCCEEDED")["Payload"]
    payload = run.parameters("Finalize")["Payload"]
    assert payload["outcome"] == "COMPLETED"
    assert payload["task_id"] == TASK_ID
    assert "Attachments" not in payload["ecs_task"] and payload["ecs_task"]["StoppedAt"] == 1767225621000
    network = run.parameters("RunTask")["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network == {
        "Subnets": ["subnet-0a1b2c3d4e5f60718", "subnet-0f1e2d3c4b5a69788"],
        "SecurityGroups": ["sg-0123456789abcdef0"],
        "AssignPublicIp": "ENABLED",
    }
    assert run.parameters("RunTask")["TaskDefinition"] == TASK_DEFINITION_ARN
    update = run.parameters("MarkProvisioning")
    assert update["Key"] == {"pk": {"S": f"TASK#{TASK_ID}"}, "sk": {"S": "TASK"}}
    assert update["ExpressionAttributeValues"][":gsi2pk"] == {"S": "TENANT#default#STATUS#PROVISIONING"}
    assert update["ExpressionAttributeValues"][":now"]["S"].startswith(str(datetime.now(UTC).year))


def test_a_new_image_with_more_storage_registers_a_task_definition_with_storage(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input_spot_storage.json"),
        {
            "DescribeTaskDefinition": NOT_FOUND,
            "RegisterTaskDefinitionWithStorage": FOUND,
            "MarkProvisioning": {},
            "RunTask": ecs_task(),
            "Finalize": finalized("SUCCEEDED"),
        },
    )

    assert run.ended
    assert run.entered == [
        "DescribeTaskDefinition", "ChooseRegistration", "RegisterTaskDefinitionWithStorage",
        "MarkProvisioning", "RunTask", "Finalize",
    ]  # fmt: skip
    registered = run.parameters("RegisterTaskDefinitionWithStorage")
    assert registered["Family"] == "taskrunner-arm64-50g-231608e8333035bcb4683094"
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
        load_sample("execution_input.json"),
        {
            "DescribeTaskDefinition": Raise("Ecs.ClientException", "Unable to describe task definition."),
            "RegisterTaskDefinition": FOUND,
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
            "DescribeTaskDefinition": FOUND,
            "MarkProvisioning": Raise("DynamoDB.ConditionalCheckFailedException", "The conditional request failed"),
            "FinalizeNotStarted": finalized("CANCELLED"),
        },
    )

    assert run.ended
    assert run.entered == ["DescribeTaskDefinition", "MarkProvisioning", "FinalizeNotStarted"]
    assert run.parameters("FinalizeNotStarted")["Payload"] == {
        "task_id": TASK_ID,
        "outcome": "NOT_STARTED",
    }


def test_a_failed_task_is_finalized_with_the_task_in_the_cause(execute: Execute) -> None:
    failed = ecs_task() | {"Containers": [{"Name": "main", "ExitCode": 3, "LastStatus": "STOPPED"}]}
    run = execute(
        load_sample("execution_input.json"),
        {
            "DescribeTaskDefinition": FOUND,
            "MarkProvisioning": {},
            "RunTask": Raise("States.TaskFailed", json.dumps(failed)),
            "FinalizeTaskFailed": finalized("FAILED"),
        },
    )

    assert run.ended
    assert run.entered == ["DescribeTaskDefinition", "MarkProvisioning", "RunTask", "FinalizeTaskFailed"]
    payload = run.parameters("FinalizeTaskFailed")["Payload"]
    assert payload["outcome"] == "TASK_FAILED"
    assert payload["error"]["Error"] == "States.TaskFailed"
    assert json.loads(payload["error"]["Cause"])["Containers"][0]["ExitCode"] == 3


def test_an_ecs_api_error_is_finalized_as_an_error_not_a_task_failure(execute: Execute) -> None:
    run = execute(
        load_sample("execution_input.json"),
        {
            "DescribeTaskDefinition": FOUND,
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
            "DescribeTaskDefinition": FOUND,
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": stop_result(ECS_TASK_ARN),
            "DescribeStoppingTask": {"Tasks": [ecs_task() | {"StopCode": "UserInitiated"}], "Failures": []},
            "FinalizeTimedOut": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered == [
        "DescribeTaskDefinition", "MarkProvisioning", "RunTask", "StopOnTimeout", "HasEcsTask", "InitStopPolls",
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
            "DescribeTaskDefinition": FOUND,
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
            "DescribeTaskDefinition": FOUND,
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
            "DescribeTaskDefinition": FOUND,
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
            "DescribeTaskDefinition": FOUND,
            "MarkProvisioning": {},
            "RunTask": Raise("States.Timeout"),
            "StopOnTimeout": Raise("TaskNotFound", "no such task"),
            "FinalizeTimedOutWithoutTask": finalized("TIMED_OUT"),
        },
    )

    assert run.ended
    assert run.entered[-2:] == ["StopOnTimeout", "FinalizeTimedOutWithoutTask"]
