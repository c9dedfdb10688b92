"""Quotas and the fair queue on moto: the API and the functions → the domain → DynamoDB's transactions, and the
run-task state machine's real definition on moto's interpreter, whose queued executions wait in WaitForSlot until
a dispatch completes their task token (SendTaskSuccess).

In the executions, RunTask is mocked (moto's Fargate RunTask needs the local stack's agent); WaitForSlot, the
Finalize states and MarkProvisioning are the real calls: the queue and finalize functions run in this process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from taskrunner.adapters import DynamoTaskStore
from taskrunner.models import Task, TaskStatus

from tests.integration.conftest import invoke, metering_items
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.stack import REGION, Stack, render_state_machine
from tests.support.state_machine import Interpreter, Run, local_stack_patches
from tests.support.task_tokens import deliver_task_tokens, functions_in_process

api, finalize, queue, reconcile = (load_function(n) for n in ("api", "finalize", "queue", "reconcile"))

TENANT = "acme"
CALLER = {"tenant": TENANT, "admin": False, "key_id": "abcdefghijkl"}
#: bounds how long a test can hang on an execution nobody resumes
QUEUE_TIMEOUT = 60


def known_image(stack: Stack, ddb: Any) -> None:
    """busybox has run before: its task definition is recorded, and executions go straight to MarkProvisioning."""
    from taskrunner.models import TaskSpec
    from taskrunner.task_definitions import task_definition_family, task_definition_key

    family = task_definition_family(stack.settings(), TaskSpec(image="busybox"))
    arn = f"arn:aws:ecs:{REGION}:123456789012:task-definition/{family}:1"
    ddb.put_item(TableName=stack.tasks_table, Item={**task_definition_key(family), "task_definition_arn": {"S": arn}})


def put_tenant(ddb: Any, table: str, quotas: dict[str, Any], name: str = TENANT) -> None:
    """The tenant's item as the tenant administration writes it (UpdateItem SET, next to the queue's counters)."""
    now = datetime.now(UTC).isoformat()
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": f"TENANT#{name}"}, "sk": {"S": "TENANT"}},
        UpdateExpression="SET #n = :n, enabled = :e, quotas = :q, created_at = :t, updated_at = :t, "
        "gsi1pk = :p, gsi1sk = :n",
        ExpressionAttributeNames={"#n": "name"},
        ExpressionAttributeValues={
            ":n": {"S": name},
            ":e": {"BOOL": True},
            ":q": {"M": {k: {"N": str(v)} for k, v in quotas.items()}},
            ":t": {"S": now},
            ":p": {"S": "TENANTS"},
        },
    )


def counters(ddb: Any, table: str, name: str = TENANT) -> dict[str, int]:
    item = ddb.get_item(TableName=table, Key={"pk": {"S": f"TENANT#{name}"}, "sk": {"S": "TENANT"}})["Item"]
    return {
        k: int(item.get(k, {"N": "0"})["N"]) for k in ("running_tasks", "running_cpu", "running_memory", "queued_tasks")
    }


def submit(**spec: Any) -> dict[str, Any]:
    body = {"image": "busybox", "command": ["true"], "queue_timeout_seconds": QUEUE_TIMEOUT, **spec}
    response = invoke(api, http_event("POST", "/tasks", body=body, principal=CALLER))
    assert response["statusCode"] == 202, response
    return json.loads(response["body"])  # type: ignore[no-any-return]


def get_task(task_id: str) -> dict[str, Any]:
    return json.loads(invoke(api, http_event("GET", f"/tasks/{task_id}", principal=CALLER))["body"])  # type: ignore[no-any-return]


def stored(task_id: str) -> Task:
    from taskrunner.wiring import task_service

    task = task_service().store.get(task_id)
    assert task is not None
    return task


def execution_input(task_id: str) -> dict[str, Any]:
    """The input of the execution the submission started (moto's default backend keeps it without running it)."""
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = Stack().state_machine_arn.replace(":stateMachine:", ":execution:") + f":{task_id}"
    return json.loads(sfn.describe_execution(executionArn=arn)["input"])  # type: ignore[no-any-return]


def stopped_ecs_task(task_id: str) -> dict[str, Any]:
    """What runTask.sync returns for the task once its container exited 0 (an ECS task of its own)."""
    return {
        "TaskArn": f"arn:aws:ecs:{REGION}:123456789012:task/taskrunner/{task_id.lower()}",
        "LastStatus": "STOPPED",
        "StopCode": "EssentialContainerExited",
        "Containers": [{"Name": "main", "ExitCode": 0}],
        "CapacityProviderName": "FARGATE",
        "PullStartedAt": 1767225601000,
        "StoppedAt": 1767225671000,
    }


class Executions:
    """The tasks' executions on moto's interpreter, each in a thread of its own (a queued one waits for its token)."""

    def __init__(self, stack: Stack, interpreter: Interpreter) -> None:
        self.document = json.loads(render_state_machine(stack.substitutions()))
        self.interpreter = interpreter
        self.pool = ThreadPoolExecutor(8)
        self.runs: dict[str, Future[Run]] = {}

    def start(self, task_id: str) -> None:
        responses = {"RunTask": stopped_ecs_task(task_id)}
        self.runs[task_id] = self.pool.submit(self.interpreter.run, self.document, execution_input(task_id), responses)

    def result(self, task_id: str, timeout: float = 30) -> Run:
        return self.runs[task_id].result(timeout=timeout)


@pytest.fixture
def executions(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Executions]:
    with (
        local_stack_patches("sfn-normalise-parameters", "sfn-client-reuse", "dynamodb-concurrency"),
        functions_in_process(monkeypatch, {"queue": queue, "finalize": finalize}),
    ):
        running = Executions(stack, Interpreter(monkeypatch, aws=True))
        yield running
        running.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return deliver_task_tokens(monkeypatch)


def spy_on_grants(monkeypatch: pytest.MonkeyPatch, ddb: Any, table: str) -> tuple[list[str], list[int]]:
    """The ids of the tasks granted a slot, in order, and the tenant's running_tasks right after each grant."""
    granted: list[str] = []
    running: list[int] = []
    lock = threading.Lock()
    grant = DynamoTaskStore.grant

    def spied(self: DynamoTaskStore, task: Task, *args: Any) -> bool:
        done = grant(self, task, *args)
        if done:
            with lock:
                granted.append(task.task_id)
                running.append(counters(ddb, table)["running_tasks"])
        return done

    monkeypatch.setattr(DynamoTaskStore, "grant", spied)
    return granted, running


# ----------------------------------------------------------------------------- admission, the queue and dispatch


def test_a_quota_of_two_runs_six_tasks_two_at_a_time_in_submission_order(
    stack: Stack, ddb: Any, executions: Executions, tokens: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a tenant that may run 2 tasks at once, and 6 tasks of an image that ran before submitted
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 2})
    known_image(stack, ddb)
    granted, running = spy_on_grants(monkeypatch, ddb, stack.tasks_table)
    tasks = [submit() for _ in range(6)]
    ids = [task["task_id"] for task in tasks]
    # Then 2 are admitted and 4 wait, in order, and the counters say so
    assert [task["status"] for task in tasks] == ["SUBMITTED"] * 2 + ["QUEUED"] * 4
    assert counters(ddb, stack.tasks_table) == {
        "running_tasks": 2, "running_cpu": 512, "running_memory": 1024, "queued_tasks": 4,
    }  # fmt: skip
    assert [execution_input(i)["queued"] for i in ids] == [False] * 2 + [True] * 4
    assert execution_input(ids[2])["queue_timeout_seconds"] == QUEUE_TIMEOUT

    # When their executions run (each finished task gives its slot back, and the dispatch resumes the oldest waiting)
    for task_id in ids:
        executions.start(task_id)
    runs = {task_id: executions.result(task_id) for task_id in ids}

    # Then all 6 succeed, the waiting ones granted their slots oldest first, never more than 2 holding slots
    assert all(run.ended for run in runs.values()), {i: r.entered for i, r in runs.items()}
    assert [get_task(i)["status"] for i in ids] == ["SUCCEEDED"] * 6
    assert granted == ids[2:]
    assert max(running) <= 2
    # each waiting execution was resumed through SendTaskSuccess, and cost six transitions, the fast path four
    assert len(tokens) == 4
    assert runs[ids[5]].entered == [
        "HasTaskDefinition", "WaitForSlot", "HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize",
    ]  # fmt: skip
    assert runs[ids[0]].entered == ["HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
    # and every slot is back, each task metered once
    assert counters(ddb, stack.tasks_table) == dict.fromkeys(
        ("running_tasks", "running_cpu", "running_memory", "queued_tasks"), 0
    )
    records = metering_items(ddb, stack.tasks_table)
    assert sorted(r["task_id"]["S"] for r in records) == sorted(ids)


def test_a_newcomer_that_would_fit_waits_behind_the_oldest(stack: Stack, ddb: Any) -> None:
    # Given a tenant with 1.25 vCPU: a 1 vCPU task runs, another waits (it does not fit beside it)
    put_tenant(ddb, stack.tasks_table, {"max_vcpu": 1.25})
    first = submit(cpu=1024, memory=2048)
    second = submit(cpu=1024, memory=2048)
    # When a 0.25 vCPU task comes, which would fit in what is left
    small = submit(cpu=256, memory=512)
    # Then it waits behind the one that came before it
    assert [first["status"], second["status"], small["status"]] == ["SUBMITTED", "QUEUED", "QUEUED"]
    # When the first one ends (its workflow finalizes it)
    invoke(
        finalize, {"task_id": first["task_id"], "outcome": "COMPLETED", "ecs_task": stopped_ecs_task(first["task_id"])}
    )
    # Then the dispatch grants the oldest, then the small one, which now both fit (first in, first out)
    assert stored(second["task_id"]).slot_held is not None and stored(small["task_id"]).slot_held is not None
    assert [get_task(t["task_id"])["status"] for t in (second, small)] == [
        "QUEUED",
        "QUEUED",
    ]  # until their workflows run
    assert counters(ddb, stack.tasks_table) == {
        "running_tasks": 2, "running_cpu": 1280, "running_memory": 2560, "queued_tasks": 0,
    }  # fmt: skip


def test_a_task_larger_than_the_whole_quota_is_refused_naming_the_quota(stack: Stack, ddb: Any) -> None:
    put_tenant(ddb, stack.tasks_table, {"max_vcpu": 2, "max_memory_gib": 4})

    too_many_cpus = invoke(
        api, http_event("POST", "/tasks", body={"image": "busybox", "cpu": 4096, "memory": 8192}, principal=CALLER)
    )
    too_much_memory = invoke(
        api, http_event("POST", "/tasks", body={"image": "busybox", "cpu": 1024, "memory": 8192}, principal=CALLER)
    )

    assert too_many_cpus["statusCode"] == 422
    [detail] = json.loads(too_many_cpus["body"])["error"]["details"]
    assert detail == {
        "field": "cpu",
        "rule": "4096 CPU units (4 vCPU) is more than tenant acme's whole quota max_vcpu=2",
    }
    assert too_much_memory["statusCode"] == 422
    [detail] = json.loads(too_much_memory["body"])["error"]["details"]
    assert detail["field"] == "memory" and "whole quota max_memory_gib=4" in detail["rule"]
    assert counters(ddb, stack.tasks_table)["running_tasks"] == 0


def test_a_quota_changed_between_the_read_and_the_admission_sends_the_admission_back(stack: Stack, ddb: Any) -> None:
    # Given a tenant's load read with room for a task
    from taskrunner.models import Slot, TaskSpec
    from taskrunner.wiring import task_service

    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 5})
    store = task_service().store
    load = store.tenant_load(TENANT)
    # When an admin lowers the quota before the admission is written
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    now = datetime.now(UTC)
    spec = TaskSpec(image="busybox")
    task = Task(
        task_id="01M8FHYKXWMKH5HMFTBDEJCY65", tenant=TENANT, status=TaskStatus.SUBMITTED, spec=spec,
        created_at=now, updated_at=now, slot_held=Slot.of(spec),
    )  # fmt: skip
    # Then the admission is refused, and nothing is written
    assert store.admit(task, load) is False
    assert store.get(task.task_id) is None and counters(ddb, stack.tasks_table)["running_tasks"] == 0
    # and with the load read again it goes through
    assert store.admit(task, store.tenant_load(TENANT)) is True
    assert counters(ddb, stack.tasks_table)["running_tasks"] == 1


# ----------------------------------------------------------------------------- end paths: timeout, cancel


def test_a_task_that_waits_past_its_queue_timeout_ends_timed_out_billed_zero(
    stack: Stack, ddb: Any, executions: Executions, tokens: list[str]
) -> None:
    # Given a tenant whose one slot is taken, and a task that may wait one second for it
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    submit()
    waiting = submit(queue_timeout_seconds=1)
    # When its execution waits in the queue
    executions.start(waiting["task_id"])
    run = executions.result(waiting["task_id"])
    # Then WaitForSlot times out and the task ends TIMED_OUT, saying it timed out in the queue, billed 0
    assert run.entered == ["HasTaskDefinition", "WaitForSlot", "FinalizeQueueTimedOut"]
    task = get_task(waiting["task_id"])
    assert task["status"] == "TIMED_OUT"
    assert task["status_reason"] == (
        "Timed out after 1 s in the queue, waiting for tenant acme's quota "
        "(1 of max_running_tasks=1 tasks; 0 other task(s) waiting)"
    )
    assert task["metering"]["billed_seconds"] == 0 and task["metering"]["cost_usd"] == 0
    # and its place in the queue is given back; the running task keeps its slot
    assert counters(ddb, stack.tasks_table) == {
        "running_tasks": 1, "running_cpu": 256, "running_memory": 512, "queued_tasks": 0,
    }  # fmt: skip
    assert tokens == []


def test_cancelling_a_queued_task_ends_it_at_once_and_a_granted_one_gives_its_slot_to_the_next(
    stack: Stack, ddb: Any
) -> None:
    # Given a tenant with one slot: one task runs, three wait
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    running, first, second, third = (submit() for _ in range(4))
    # When a waiting task is cancelled
    response = invoke(api, http_event("POST", f"/tasks/{second['task_id']}/cancel", principal=CALLER))
    # Then it is CANCELLED at once, billed 0, and leaves the queue
    assert response["statusCode"] == 202
    cancelled = get_task(second["task_id"])
    assert cancelled["status"] == "CANCELLED" and cancelled["metering"]["billed_seconds"] == 0
    assert counters(ddb, stack.tasks_table)["queued_tasks"] == 2
    # When the running task ends, the oldest waiting one is granted its slot
    invoke(
        finalize,
        {"task_id": running["task_id"], "outcome": "COMPLETED", "ecs_task": stopped_ecs_task(running["task_id"])},
    )
    assert stored(first["task_id"]).slot_held is not None
    # and when that one is cancelled before its workflow moved on, its slot goes to the next
    invoke(api, http_event("POST", f"/tasks/{first['task_id']}/cancel", principal=CALLER))
    assert get_task(first["task_id"])["status"] == "CANCELLED"
    assert stored(third["task_id"]).slot_held is not None
    assert counters(ddb, stack.tasks_table) == {
        "running_tasks": 1, "running_cpu": 256, "running_memory": 512, "queued_tasks": 0,
    }  # fmt: skip
    assert len(metering_items(ddb, stack.tasks_table)) == 3


# ----------------------------------------------------------------------------- the reconciler


def run_reconciler(monkeypatch: pytest.MonkeyPatch, **grace: int) -> dict[str, Any]:
    from taskrunner.wiring import reconciler

    monkeypatch.setattr(reconciler(**grace), "sleep", lambda seconds: None)
    return reconciler(**grace).run().as_dict()


def test_the_reconciler_repairs_a_leaked_slot_and_dispatches_the_queue_it_blocked(
    stack: Stack, ddb: Any, executions: Executions, tokens: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a tenant with one slot, taken by a task, and a second task whose execution waits for it
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    known_image(stack, ddb)
    holder, waiting = submit(), submit()
    executions.start(waiting["task_id"])
    # and the slot leaks: the holder ends without giving it back (written around the store, as a bug would)
    from taskrunner.wiring import task_service

    metering = task_service().meter(stored(holder["task_id"]), None).model_dump(mode="json")
    ddb.update_item(
        TableName=stack.tasks_table,
        Key={"pk": {"S": f"TASK#{holder['task_id']}"}, "sk": {"S": "TASK"}},
        UpdateExpression="SET #s = :done, metering = :m",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={
            ":done": {"S": "SUCCEEDED"},
            ":m": TypeSerializer().serialize(json.loads(json.dumps(metering), parse_float=Decimal)),
        },
    )
    assert counters(ddb, stack.tasks_table)["running_tasks"] == 1
    # When the reconciler runs
    report = run_reconciler(monkeypatch)
    # Then it corrects the counters from the tasks that hold slots, and dispatches the queue: the waiting task's
    # execution is resumed through SendTaskSuccess and runs to the end
    assert report["repaired"] == {
        TENANT: {"running_tasks": [1, 0], "running_cpu": [256, 0], "running_memory": [512, 0]}
    }
    assert report["granted"] == 1
    run = executions.result(waiting["task_id"])
    assert run.ended and run.entered[-3:] == ["MarkProvisioning", "RunTask", "Finalize"]
    assert len(tokens) == 1 and get_task(waiting["task_id"])["status"] == "SUCCEEDED"
    assert counters(ddb, stack.tasks_table) == dict.fromkeys(
        ("running_tasks", "running_cpu", "running_memory", "queued_tasks"), 0
    )


def test_the_reconciler_leaves_counters_that_match_their_tasks_alone(stack: Stack, ddb: Any, monkeypatch) -> None:
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    submit(), submit()

    report = run_reconciler(monkeypatch)

    assert report["repaired"] == {} and report["granted"] == 0
    assert counters(ddb, stack.tasks_table)["queued_tasks"] == 1


def test_the_reconciler_starts_the_workflow_of_a_queued_task_whose_execution_ended_again(
    stack: Stack, ddb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queued task whose execution ended (the local stack stopped while it waited, say)
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    submit()
    waiting = submit()
    sfn = boto3.client("stepfunctions", region_name=REGION)
    sfn.stop_execution(executionArn=waiting["execution_arn"])
    # When the reconciler runs right after the restart (the local stack runs it without grace periods)
    report = run_reconciler(monkeypatch, grace_seconds=0, launch_grace_seconds=0)
    # Then the task gets a new execution, `<task_id>-2`, which waits for its slot again
    assert {"task_id": waiting["task_id"], "action": "restarted", "status": "QUEUED"} in report["tasks"]
    task = get_task(waiting["task_id"])
    assert task["status"] == "QUEUED" and task["execution_arn"].endswith(f":{waiting['task_id']}-2")
    restarted = json.loads(sfn.describe_execution(executionArn=task["execution_arn"])["input"])
    assert restarted["queued"] is True and 0 < restarted["queue_timeout_seconds"] <= QUEUE_TIMEOUT


def test_the_reconciler_reconciles_every_tenant_that_has_an_item(stack: Stack, ddb: Any, monkeypatch) -> None:
    # Given a second tenant, created after the reconciler's configuration was written
    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1}, name="globex")
    from taskrunner.wiring import task_service

    assert "globex" in task_service().store.tenants()
    # When a leak happens there (its counters say one task runs, none does)
    ddb.update_item(
        TableName=stack.tasks_table,
        Key={"pk": {"S": "TENANT#globex"}, "sk": {"S": "TENANT"}},
        UpdateExpression="ADD running_tasks :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    # Then the reconciler repairs it
    assert run_reconciler(monkeypatch)["repaired"] == {"globex": {"running_tasks": [1, 0]}}


def test_the_queue_function_on_its_sample_event_records_the_token_of_a_waiting_task(stack: Stack, ddb: Any) -> None:
    # Given a task that waits for the tenant's one slot
    from tests.integration.conftest import load_event
    from tests.support.sample_events import SAMPLE_TASK_TOKEN, TASK_ID

    put_tenant(ddb, stack.tasks_table, {"max_running_tasks": 1})
    submit()
    waiting = submit()
    # When its workflow's WaitForSlot invokes the queue function
    result = invoke(queue, load_event("queue/wait.json", **{TASK_ID: waiting["task_id"]}))
    # Then the task keeps waiting, with the token its grant will complete
    assert result == {"task_id": waiting["task_id"], "status": "QUEUED"}
    assert stored(waiting["task_id"]).queue_token == SAMPLE_TASK_TOKEN
