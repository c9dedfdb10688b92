"""Step Functions executions written through to the state store and restored after a restart
(`taskrunner_local/persistence/executions.py`), on moto's own interpreter in-process.

A restart here is what the local stack's start does after a `kill -9`: the Step Functions backend comes back from a
pickled snapshot in which executions are placeholders (the part's `externalized` classes), on a new StateStore over
the same folder, and the part's `restore()` runs before any request."""

from __future__ import annotations

import gc
import json
import logging
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.stepfunctions.parser.models import stepfunctions_parser_backends

from taskrunner_local.persistence import executions
from taskrunner_local.persistence.executions import STOPPED_ERROR, ExecutionsPart
from taskrunner_local.persistence.store import DATABASE, StateStore
from tests.support.moto_in_process import in_process_aws
from tests.support.persistence import LocalPart

ACCOUNT = "123456789012"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/runner"
#: waits as long as its input says, then answers
WAIT_THEN_PASS = {
    "StartAt": "Hold",
    "States": {
        "Hold": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "Done"},
        "Done": {"Type": "Pass", "Result": {"done": True}, "ResultPath": "$.result", "End": True},
    },
}
QUICK = json.dumps({"wait": 0})
A_MINUTE = json.dumps({"wait": 60})


def _backend() -> Any:
    return stepfunctions_parser_backends[ACCOUNT][REGION]


def _answer(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "ResponseMetadata"}


class Stack(LocalPart[ExecutionsPart]):
    """The local stack's Step Functions as one run of it holds them: a store on the state folder, the part
    (installed) and a client. `restart()` kills that run and starts the next one in place."""

    backends = stepfunctions_parser_backends
    region = REGION

    def new_part(self, store: StateStore) -> ExecutionsPart:
        return ExecutionsPart(store)

    def start(self) -> None:
        super().start()
        self.sfn = boto3.client("stepfunctions", region_name=REGION)

    def stop(self) -> None:
        """The process dies: its code stops writing, its worker threads stop with it, its store is left as is."""
        self.patch.revert()
        for state_machine in self.backend.state_machines:
            for execution in state_machine.executions:
                if execution is not None and execution.status == "RUNNING":
                    execution.stop(stop_date=datetime.now(UTC), error=None, cause=None)
                    _until(lambda e=execution: e.status != "RUNNING")
        self.store.close()

    # ------------------------------------------------------------------ Step Functions

    def machine(self, name: str = "runner") -> str:
        return str(
            self.sfn.create_state_machine(name=name, definition=json.dumps(WAIT_THEN_PASS), roleArn=ROLE)[
                "stateMachineArn"
            ]
        )

    def run(self, machine_arn: str, name: str, execution_input: str = QUICK) -> str:
        arn = str(
            self.sfn.start_execution(stateMachineArn=machine_arn, name=name, input=execution_input)["executionArn"]
        )
        if execution_input == QUICK:
            _until(lambda: self.sfn.describe_execution(executionArn=arn)["status"] != "RUNNING")
        return arn

    def answers(self, machine_arn: str, execution_arn: str) -> dict[str, Any]:
        """Everything Step Functions answers about an execution and its state machine's executions."""
        return {
            "describe": _answer(self.sfn.describe_execution(executionArn=execution_arn)),
            "history": _answer(self.sfn.get_execution_history(executionArn=execution_arn)),
            "machine": _answer(self.sfn.describe_state_machine_for_execution(executionArn=execution_arn)),
            "list": _answer(self.sfn.list_executions(stateMachineArn=machine_arn)),
        }


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextmanager
def _failing_commits(store: StateStore) -> Iterator[None]:
    """Every write of `store` fails after its statements ran and before it commits (a full disk, say)."""
    real = store.transaction

    @contextmanager
    def transaction() -> Iterator[sqlite3.Connection]:
        with real() as connection:
            yield connection
            raise sqlite3.OperationalError("database or disk is full")

    store.transaction = transaction  # type: ignore[method-assign]
    try:
        yield
    finally:
        store.transaction = real  # type: ignore[method-assign]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setattr(executions, "SWEEP_EVERY_SECONDS", 0.0)
    sfn_runs_executions = {"stepfunctions": {"execute_state_machine": True}}
    with in_process_aws(monkeypatch, config=sfn_runs_executions), Stack(tmp_path / ".taskrunner") as started:
        yield started


# ---------------------------------------------------------------------------------------------- restart


def test_given_a_finished_execution_when_the_stack_restarts_then_every_answer_about_it_is_the_same(
    stack: Stack,
) -> None:
    # Given an execution that succeeded, answered from moto's memory
    machine = stack.machine()
    execution = stack.run(machine, "task-1")
    before = stack.answers(machine, execution)
    assert before["describe"]["status"] == "SUCCEEDED"
    assert [event["type"] for event in before["history"]["events"]][-1] == "ExecutionSucceeded"

    # When the stack is killed and started again
    stack.restart()

    # Then moto's memory holds no execution, and the store answers exactly as moto did
    assert _backend().describe_state_machine(machine).executions == []
    assert stack.answers(machine, execution) == before
    assert stack.part.interrupted() == []


def test_given_a_running_execution_when_the_stack_restarts_then_it_is_aborted_as_local_stack_stopped(
    stack: Stack,
) -> None:
    # Given an execution in a one-minute Wait, and one that finished
    machine = stack.machine()
    finished = stack.run(machine, "task-1")
    running = stack.run(machine, "task-2", A_MINUTE)
    assert stack.sfn.describe_execution(executionArn=running)["status"] == "RUNNING"

    # When the stack is killed and started again
    restarted_at = datetime.now(UTC)
    stack.restart()

    # Then the running one is settled as ABORTED, because the stack stopped, and named for its task to be settled
    described = stack.sfn.describe_execution(executionArn=running)
    assert described["status"] == "ABORTED"
    assert described["error"] == STOPPED_ERROR
    assert "local stack stopped" in described["cause"]
    assert described["stopDate"] >= restarted_at.replace(microsecond=0)
    events = stack.sfn.get_execution_history(executionArn=running)["events"]
    assert [event["type"] for event in events] == ["ExecutionStarted", "ExecutionAborted"]
    assert events[-1]["executionAbortedEventDetails"]["error"] == STOPPED_ERROR
    assert stack.part.interrupted() == [
        {"arn": running, "name": "task-2", "input": A_MINUTE, "stateMachineArn": machine}
    ]
    aborted = stack.sfn.list_executions(stateMachineArn=machine, statusFilter="ABORTED")["executions"]
    assert [item["executionArn"] for item in aborted] == [running]
    assert stack.sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")["executions"] == []
    assert stack.sfn.describe_execution(executionArn=finished)["status"] == "SUCCEEDED"

    # And the settlement is durable: another restart finds nothing left to settle
    stack.restart()
    assert stack.sfn.describe_execution(executionArn=running)["error"] == STOPPED_ERROR
    assert stack.part.interrupted() == []


def test_given_a_recorded_execution_when_started_again_with_its_name_after_a_restart_then_it_already_exists(
    stack: Stack,
) -> None:
    # Given an execution that finished and one that was running when the stack stopped
    machine = stack.machine()
    stack.run(machine, "task-1")
    stack.run(machine, "task-2", A_MINUTE)
    stack.restart()

    # When each name is started again (the task runner names executions after their tasks)
    for name in ("task-1", "task-2"):
        with pytest.raises(ClientError) as raised:
            stack.sfn.start_execution(stateMachineArn=machine, name=name, input=QUICK)

        # Then Step Functions refuses, as for a name moto still holds in memory
        assert raised.value.response["Error"]["Code"] == "ExecutionAlreadyExists"

    # And a new name starts
    assert stack.sfn.describe_execution(executionArn=stack.run(machine, "task-3"))["status"] == "SUCCEEDED"


# ---------------------------------------------------------------------------------------------- writes


def test_given_a_running_execution_when_stopped_then_its_aborted_record_is_on_disk_before_the_answer(
    stack: Stack,
) -> None:
    # Given an execution inside a one-minute Wait (one stopped before its first state has no ExecutionAborted in moto)
    machine = stack.machine()
    running = stack.run(machine, "task-1", A_MINUTE)
    _until(lambda: len(stack.sfn.get_execution_history(executionArn=running)["events"]) > 1)

    # When it is stopped
    answer = stack.sfn.stop_execution(executionArn=running, cause="cancelled")

    # Then the answer has its stop date and the store, read by another connection, has it ABORTED with its history
    assert answer["stopDate"] is not None
    with closing(sqlite3.connect(stack.folder / DATABASE)) as reader:
        record, history = reader.execute(
            "SELECT record, history FROM sfn_execution WHERE arn = ?", (running,)
        ).fetchone()
    assert json.loads(record)["status"] == "ABORTED"
    assert [event["type"] for event in json.loads(history)][-1] == "ExecutionAborted"


def test_given_a_store_that_fails_at_the_end_of_an_execution_then_the_old_record_stays_and_restart_settles_it(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an execution recorded as RUNNING, in a Wait that it leaves while every commit fails
    machine = stack.machine()
    execution = stack.run(machine, "task-1", json.dumps({"wait": 1}))
    with _failing_commits(stack.store), caplog.at_level(logging.ERROR, logger=executions.__name__):
        # When it ends
        _until(lambda: stack.sfn.describe_execution(executionArn=execution)["status"] == "SUCCEEDED")
        _until(lambda: "could not record the end" in caplog.text)

    # Then the store still holds its whole RUNNING record (the failed write rolled back, nothing torn)
    stored = stack.part.stored(execution)
    assert stored is not None
    assert (stored.status, stored.history) == ("RUNNING", None)

    # And if the stack dies before a retry, the restart settles it as stopped
    stack.restart()
    assert stack.sfn.describe_execution(executionArn=execution)["error"] == STOPPED_ERROR
    assert stack.part.interrupted()[0]["arn"] == execution


def test_given_a_store_that_fails_at_start_then_start_execution_fails_and_leaves_the_name_free(
    stack: Stack,
) -> None:
    # Given a store whose commits fail
    machine = stack.machine()
    with _failing_commits(stack.store), pytest.raises(sqlite3.OperationalError):
        # When an execution is started
        stack.sfn.start_execution(stateMachineArn=machine, name="task-1", input=QUICK)

    # Then nothing was started nor listed, and the name can be used once the store works again
    assert _backend().describe_state_machine(machine).executions == []
    assert stack.sfn.list_executions(stateMachineArn=machine)["executions"] == []
    execution = stack.run(machine, "task-1")
    assert stack.sfn.describe_execution(executionArn=execution)["status"] == "SUCCEEDED"


# ---------------------------------------------------------------------------------------------- memory and lists


def test_given_an_ended_execution_when_evicted_from_memory_then_the_store_answers_the_same(
    stack: Stack,
) -> None:
    # Given an execution that succeeded, answered from moto's memory
    machine = stack.machine()
    execution = stack.run(machine, "task-1")
    before = stack.answers(machine, execution)
    live = weakref.ref(_backend().describe_state_machine(machine).executions[0])
    its_machine_copy = weakref.ref(_backend().describe_state_machine(machine).executions[0].state_machine)

    # When the stack evicts ended executions at once, at the next start
    stack.part.evict_after = 0.0
    stack.run(machine, "task-2", A_MINUTE)

    # Then only the running execution is left in memory, the first one is freed, and it is answered as before
    assert [e.name for e in _backend().describe_state_machine(machine).executions] == ["task-2"]
    _until(lambda: gc.collect() >= 0 and live() is None and its_machine_copy() is None)
    after = stack.answers(machine, execution)
    assert after["describe"] == before["describe"]
    assert after["history"] == before["history"]
    assert after["machine"] == before["machine"]
    with pytest.raises(ClientError) as raised:
        stack.sfn.start_execution(stateMachineArn=machine, name="task-1", input=QUICK)
    assert raised.value.response["Error"]["Code"] == "ExecutionAlreadyExists"
    assert stack.sfn.stop_execution(executionArn=execution)["stopDate"] == before["describe"]["stopDate"]


def test_given_many_executions_when_listed_then_newest_first_a_page_at_a_time_and_by_status(
    stack: Stack,
) -> None:
    # Given five executions of one state machine, the fourth still running, and one of another state machine
    machine = stack.machine()
    names = ["task-1", "task-2", "task-3", "task-4", "task-5"]
    for name in names:
        stack.run(machine, name, A_MINUTE if name == "task-4" else QUICK)
    stack.run(stack.machine("other"), "task-6")

    # When they are listed two at a time
    pages = list(
        stack.sfn.get_paginator("list_executions").paginate(stateMachineArn=machine, PaginationConfig={"PageSize": 2})
    )

    # Then every execution of the state machine is listed once, newest first, as moto lists those in its memory
    stack.patch.revert()
    by_moto = _answer(stack.sfn.list_executions(stateMachineArn=machine))
    stack.patch.apply()
    assert _answer(stack.sfn.list_executions(stateMachineArn=machine)) == by_moto
    assert [len(page["executions"]) for page in pages] == [2, 2, 1]
    assert [item["name"] for page in pages for item in page["executions"]] == names[::-1]
    running = stack.sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING")["executions"]
    assert [item["name"] for item in running] == ["task-4"]
    succeeded = stack.sfn.list_executions(stateMachineArn=machine, statusFilter="SUCCEEDED", maxResults=10)
    assert [item["name"] for item in succeeded["executions"]] == ["task-5", "task-3", "task-2", "task-1"]
    assert "nextToken" not in succeeded
    with pytest.raises(ClientError) as raised:
        stack.sfn.list_executions(stateMachineArn=machine, nextToken="not-a-token")
    assert raised.value.response["Error"]["Code"] == "InvalidToken"
