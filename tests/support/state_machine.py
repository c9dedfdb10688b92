"""Executions of the run-task state machine on moto's Step Functions interpreter, in the calling thread.

Chosen Task states answer with mocked responses (moto's mock-config feature); the others either fail the test
(`Interpreter(..., aws=False)`: no AWS endpoint at all) or call the services of moto's in-process backends
(`aws=True`, inside `mock_aws`). Retries do not wait: their would-be delays are recorded instead.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from moto.stepfunctions.parser.api import HistoryEventType, StateMachineType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
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
from moto.stepfunctions.parser.asl.eval.program_state import ProgramEnded, ProgramError
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
from moto.stepfunctions.parser.mocking.mock_config import (
    MockedResponse,
    MockedResponseReturn,
    MockedResponseThrow,
    MockTestCase,
    StateMockedResponses,
)

from taskrunner_local.moto_patches import patch_named

ACCOUNT = "123456789012"
REGION = "us-east-1"
STATE_MACHINE_NAME = "taskrunner-run-task"


class Raise:
    """A mocked Task response that fails the state with `error`."""

    def __init__(self, error: str, cause: str = "") -> None:
        self.error, self.cause = error, cause


class InTurn:
    """Mocked responses to a state's first attempt and then to each of its retries, in turn; the last one answers
    every later retry. (moto looks a mocked response up by the state and its retry number: a state entered again
    starts from the first one.)"""

    def __init__(self, *responses: Any) -> None:
        self.responses = responses


#: retries a mocked response answers at most (more than any Retry of the definition allows)
_MAX_RETRIES = 99


def _mocked(response: Any) -> list[MockedResponse]:
    responses = response.responses if isinstance(response, InTurn) else (response,)
    last = len(responses) - 1
    return [
        _mocked_one(r, attempt, _MAX_RETRIES if attempt == last else attempt) for attempt, r in enumerate(responses)
    ]


def _mocked_one(response: Any, first: int, last: int) -> MockedResponse:
    if isinstance(response, Raise):
        return MockedResponseThrow(first, last, error=response.error, cause=response.cause)
    return MockedResponseReturn(first, last, payload=response)


def without_waits(document: dict[str, Any]) -> dict[str, Any]:
    """The definition with every Wait state's Seconds set to 0 (poll without waiting)."""
    document = copy.deepcopy(document)
    for state in document["States"].values():
        if state["Type"] == "Wait" and "Seconds" in state:
            state["Seconds"] = 0
    return document


class _Done:
    def terminated(self) -> None:  # the worker reports here when the program ends
        pass


class Run:
    """One execution, in this thread, with the Task states named in `responses` mocked."""

    def __init__(self, document: dict[str, Any], execution_input: dict[str, Any], responses: dict[str, Any]) -> None:
        test_case = MockTestCase(
            state_machine_name=STATE_MACHINE_NAME,
            test_case_name="unit",
            state_mocked_responses_list=[
                StateMockedResponses(
                    state_name=name, mocked_response_name=f"{name}Response", mocked_responses=_mocked(r)
                )
                for name, r in responses.items()
            ],
        )
        state_machine_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{STATE_MACHINE_NAME}"
        role = f"arn:aws:iam::{ACCOUNT}:role/taskrunner-state-machine"
        worker = ExecutionWorker(
            evaluation_details=EvaluationDetails(
                aws_execution_details=AWSExecutionDetails(account=ACCOUNT, region=REGION, role_arn=role),
                execution_details=ExecutionDetails(
                    arn=state_machine_arn.replace(":stateMachine:", ":execution:") + f":{execution_input['task_id']}",
                    name=execution_input["task_id"],
                    role_arn=role,
                    inpt=copy.deepcopy(execution_input),
                    start_time=datetime.now(UTC).isoformat(),
                ),
                state_machine_details=StateMachineDetails(
                    arn=state_machine_arn,
                    name=STATE_MACHINE_NAME,
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
        """The execution succeeded."""
        return isinstance(self.env.program_state(), ProgramEnded)

    @property
    def error(self) -> str | None:
        """The error the execution failed with (None unless it failed)."""
        state = self.env.program_state()
        if not isinstance(state, ProgramError):
            return None
        return str(state.error["error"]) if state.error else "unknown"

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


class Interpreter:
    """moto's interpreter, prepared for tests (patches undone by `monkeypatch` at the end of the test).

    - `aws=False`: a Task state without a mocked response fails the test instead of calling AWS.
    - moto's DynamoDB integration renames every error that is not a botocore ClientError, a mocked one included,
      to DynamoDB.AmazonDynamoDBException; the mocked error keeps its own name, as AWS would name it.
    - moto refuses mocked errors named States.* (custom error names must not use the prefix), but States.Timeout
      and States.TaskFailed are exactly what runTask.sync raises.
    - Retries do not sleep: `retry_delays` records how long each would have waited.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, aws: bool) -> None:
        self.unmocked_calls: list[str] = []
        self.retry_delays: list[float] = []
        if not aws:
            for name, module in list(sys.modules.items()):
                if name.startswith("moto.stepfunctions.parser") and hasattr(module, "boto_client_for"):
                    monkeypatch.setattr(module, "boto_client_for", self._no_aws)
        dynamodb_from_error = StateTaskServiceDynamoDB._from_error

        def keep_mocked_error(service: StateTaskServiceDynamoDB, env: Any, ex: Exception) -> Any:
            if isinstance(ex, FailureEventException):
                return ex.failure_event
            return dynamodb_from_error(service, env, ex)

        monkeypatch.setattr(StateTaskServiceDynamoDB, "_from_error", keep_mocked_error)
        monkeypatch.setattr(mock_eval_utils, "_eval_mocked_response_throw", self._throw)
        monkeypatch.setattr(retrier_decl, "time", SimpleNamespace(sleep=self.retry_delays.append))

    def _no_aws(self, region: str, service: str, state_credentials: Any = None) -> Any:
        self.unmocked_calls.append(service)
        raise RuntimeError(f"a Task state without a mocked response called {service}")

    @staticmethod
    def _throw(env: Any, mocked_response: MockedResponseThrow) -> None:
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

    def run(self, document: dict[str, Any], execution_input: dict[str, Any], responses: dict[str, Any]) -> Run:
        result = Run(document, execution_input, responses)
        assert not self.unmocked_calls, f"unmocked AWS calls: {self.unmocked_calls}; entered {result.entered}"
        return result


@contextmanager
def local_stack_patches(*names: str) -> Iterator[None]:
    """The named patches of the local stack (taskrunner_local/moto_patches.py) applied, as the local stack applies
    them, for the duration; those that were not applied before are reverted afterwards."""
    patches = [patch_named(name) for name in names]
    applied_here = [patch for patch in patches if not patch.applied]
    for patch in applied_here:
        patch.apply()
    try:
        yield
    finally:
        for patch in reversed(applied_here):
            patch.revert()
