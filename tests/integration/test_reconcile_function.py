"""The reconciler function on its sample event, against moto: handler → domain → DynamoDB, Step Functions, ECS."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from pydantic import ValidationError

from tests.integration.conftest import invoke, load_event, metering_items
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.stack import REGION, run_ecs_task

api, reconcile = (load_function(n) for n in ("api", "reconcile"))


def submit(**spec: object) -> dict:
    body = {"image": "python:3.12-slim", "command": ["sh", "-c", "sleep 300"], **spec}
    response = invoke(api, http_event("POST", "/tasks", body=body))
    assert response["statusCode"] == 202, response
    return json.loads(response["body"])


def get_task(task_id: str) -> dict:
    return json.loads(invoke(api, http_event("GET", f"/tasks/{task_id}"))["body"])


def run_reconciler() -> dict:
    return invoke(reconcile, load_event("reconcile/scheduled.json"))


@pytest.fixture
def sfn():
    return boto3.client("stepfunctions", region_name=REGION)


@pytest.fixture
def ecs():
    return boto3.client("ecs", region_name=REGION)


def test_a_task_whose_execution_was_stopped_and_whose_ecs_task_stopped_is_settled_once(stack, sfn, ecs, ddb):
    # Given a task whose ECS task ran (found by startedBy) and stopped, and whose execution was stopped
    task = submit()
    ecs_task_arn = run_ecs_task(stack, started_by=task["task_id"])
    ecs.stop_task(cluster=stack.cluster, task=ecs_task_arn, reason="Essential container in task exited")
    sfn.stop_execution(executionArn=task["execution_arn"])
    assert sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "ABORTED"
    # When the reconciler runs, twice
    first = run_reconciler()
    second = run_reconciler()
    # Then the first settles it from what ECS describes, the second finds nothing to do: one metering record
    [described] = ecs.describe_tasks(cluster=stack.cluster, tasks=[ecs_task_arn])["tasks"]
    assert described["containers"][0]["exitCode"] == 0
    assert first["settled"] == 1 and first["examined"] == 1
    assert first["tasks"] == [{"task_id": task["task_id"], "action": "settled", "status": "SUCCEEDED"}]
    assert second["examined"] == 0 and second["settled"] == 0
    settled = get_task(task["task_id"])
    assert settled["status"] == "SUCCEEDED" and settled["exit_code"] == 0 and settled["ecs_task_arn"] == ecs_task_arn
    assert settled["metering"]["billed_seconds"] == 0  # moto's ECS records no pullStartedAt (the e2e test has one)
    [record] = metering_items(ddb, stack.tasks_table)
    assert record["pk"]["S"] == f"METER#{ecs_task_arn}"


def test_a_task_that_never_launched_and_whose_execution_ended_is_failed_with_zero_metering(stack, sfn, ddb):
    # Given a submitted task whose execution was stopped before it started any ECS task
    task = submit()
    sfn.stop_execution(executionArn=task["execution_arn"])
    # When the reconciler runs
    summary = run_reconciler()
    # Then the task is FAILED by the reconciler and metered 0, under the task's own key
    assert summary["settled"] == 1
    settled = get_task(task["task_id"])
    assert settled["status"] == "FAILED"
    assert settled["status_reason"].startswith("Settled by the reconciler: its workflow execution ended ABORTED")
    assert settled["metering"]["billed_seconds"] == 0
    [record] = metering_items(ddb, stack.tasks_table)
    assert record["pk"]["S"] == f"METER#task/{task['task_id']}"


def test_a_task_progressing_normally_is_left_alone(stack, sfn):
    # Given a task whose execution runs, just submitted
    task = submit()
    assert sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "RUNNING"
    # When the reconciler runs
    summary = run_reconciler()
    # Then it looked at the task and left it as it was
    assert summary["examined"] == 1 and summary["untouched"] == 1 and summary["tasks"] == []
    assert get_task(task["task_id"]) == {**task, "updated_at": get_task(task["task_id"])["updated_at"]}
    assert sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "RUNNING"


def test_a_task_past_its_timeout_is_stopped_then_metered_on_the_next_run(stack, sfn, ecs, ddb, monkeypatch):
    # Given no grace period, and a task with a 1 s timeout whose ECS task runs on after its execution stopped
    monkeypatch.setenv("RECONCILE_GRACE_SECONDS", "0")
    from taskrunner import wiring

    wiring.reset()
    task = submit(timeout_seconds=1)
    ecs_task_arn = run_ecs_task(stack, started_by=task["task_id"])
    sfn.stop_execution(executionArn=task["execution_arn"])
    time.sleep(1.1)
    # When the reconciler runs
    first = run_reconciler()
    # Then it stops the ECS task as the timeout path does: TIMED_OUT, StopTask with the timeout's reason
    assert first["stopping"] == 1
    assert get_task(task["task_id"])["status"] == "TIMED_OUT" and get_task(task["task_id"])["metering"] is None
    [described] = ecs.describe_tasks(cluster=stack.cluster, tasks=[ecs_task_arn])["tasks"]
    assert described["lastStatus"] == "STOPPED" and described["stoppedReason"] == "Timed out after 1 s"
    # When it runs again (the STOPPED event never came)
    second = run_reconciler()
    # Then it meters the task, still TIMED_OUT, once
    assert second["settled"] == 1
    done = get_task(task["task_id"])
    assert done["status"] == "TIMED_OUT" and done["status_reason"] == "Timed out after 1 s"
    [record] = metering_items(ddb, stack.tasks_table)
    assert record["pk"]["S"] == f"METER#{ecs_task_arn}"
    assert run_reconciler()["examined"] == 0


def test_the_status_listing_pages_oldest_first_from_a_creation_bound_and_skips_metered_tasks(stack, ddb):
    from taskrunner.adapters import DynamoTaskStore
    from taskrunner.models import TaskStatus

    # Given five submitted tasks, two of them then finalized with metering (FAILED)
    ids = [submit()["task_id"] for _ in range(5)]
    store = DynamoTaskStore(stack.tasks_table, ddb)
    for task_id in ids[:2]:
        invoke(load_function("finalize"), {"task_id": task_id, "outcome": "ERROR", "error": {"Error": "E"}})

    def listing(status, **criteria):
        found, token, pages = [], None, 0
        while True:
            items, token = store.list_in_status("default", status, 2, token, **criteria)
            found += [t.task_id for t in items]
            pages += 1
            if not token:
                return found, pages

    # When the SUBMITTED tasks are listed two at a time, and the FAILED ones from the fourth id on or unmetered
    submitted, pages = listing(TaskStatus.SUBMITTED)
    # Then they come oldest first over several pages; the bound and the metering filter hold
    assert submitted == ids[2:] and pages >= 2
    assert listing(TaskStatus.FAILED)[0] == ids[:2]
    assert listing(TaskStatus.FAILED, created_since=ids[1])[0] == [ids[1]]
    assert listing(TaskStatus.FAILED, unmetered_only=True)[0] == []


def test_an_invocation_may_shorten_the_grace_periods(stack, sfn, ecs):
    # Given a task with a 1 s timeout whose ECS task runs on after its execution stopped (past its timeout, but
    # within the settings' grace period of 300 s)
    task = submit(timeout_seconds=1)
    run_ecs_task(stack, started_by=task["task_id"])
    sfn.stop_execution(executionArn=task["execution_arn"])
    time.sleep(1.1)
    assert run_reconciler()["waiting"] == 1
    # When an invocation shortens the grace period (as the local stack does after a restart)
    with pytest.raises(ValidationError, match="grace_seconds"):
        invoke(reconcile, {"grace_seconds": -1})
    summary = invoke(reconcile, {"grace_seconds": 0, "launch_grace_seconds": 0})
    # Then the task is stopped as the timeout path stops it
    assert summary["stopping"] == 1
    assert get_task(task["task_id"])["status"] == "TIMED_OUT"
