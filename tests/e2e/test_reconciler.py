"""The reconciler on the local stack: a task whose workflow was stopped and whose ECS events were lost is settled."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from taskrunner.fargate import billed_seconds

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT
from taskrunner_local.images import PYTHON_IMAGE
from taskrunner_local.stack import LocalStack
from tests.support.local_tasks import wait_until

SCHEDULED = json.loads((ROOT / "events" / "reconcile" / "scheduled.json").read_text())


def shell(script: str, **spec: object) -> dict[str, object]:
    return {"image": PYTHON_IMAGE, "command": ["sh", "-c", script], **spec}


@contextlib.contextmanager
def ecs_events_lost(stack: LocalStack) -> Iterator[None]:
    """EventBridge delivers no "ECS Task State Change" event to TaskEventsFunction while inside."""
    events = stack.client("events")
    rule = stack.deployment.physical_ids["TaskEventsFunctionTaskStateChange"]
    targets = events.list_targets_by_rule(Rule=rule)["Targets"]
    events.remove_targets(Rule=rule, Ids=[t["Id"] for t in targets])
    try:
        yield
    finally:
        events.put_targets(Rule=rule, Targets=targets)


@contextlib.contextmanager
def reconciler_schedule_paused(stack: LocalStack) -> Iterator[None]:
    """The reconciler's schedule disabled, so that only the test runs the reconciler while inside."""
    scheduler = stack.client("scheduler")
    name = stack.deployment.physical_ids["ReconcilerFunctionEvery5Minutes"]
    schedule = scheduler.get_schedule(Name=name)
    keys = ("Name", "GroupName", "ScheduleExpression", "FlexibleTimeWindow", "Target")
    scheduler.update_schedule(**{k: schedule[k] for k in keys}, State="DISABLED")
    try:
        yield
    finally:
        scheduler.update_schedule(**{k: schedule[k] for k in keys}, State="ENABLED")


@contextlib.contextmanager
def a_lost_running_task(stack: LocalStack, api: TaskRunnerClient, script: str) -> Iterator[dict[str, Any]]:
    """A task that runs (its RUNNING event arrived), then whose workflow execution is stopped and whose ECS events
    are lost (while inside): nothing is left to finalize it."""
    task = api.wait(api.submit(shell(script))["task_id"], {"RUNNING"})
    with ecs_events_lost(stack):
        stack.client("stepfunctions").stop_execution(executionArn=task["execution_arn"], cause="lost on purpose")
        yield task


def ecs_task(stack: LocalStack, arn: str) -> dict[str, Any]:
    [described] = stack.client("ecs").describe_tasks(cluster=stack.deployment.outputs["ClusterName"], tasks=[arn])[
        "tasks"
    ]
    return described  # type: ignore[no-any-return]


def metering_records(stack: LocalStack, task_id: str) -> list[dict[str, Any]]:
    ddb = stack.client("dynamodb")
    table = stack.deployment.outputs["TasksTableName"]
    records = []
    for page in ddb.get_paginator("scan").paginate(TableName=table):  # a census, not a request path
        records += [i for i in page["Items"] if i["pk"]["S"].startswith("METER#") and i["task_id"]["S"] == task_id]
    return records


def test_a_task_whose_workflow_stopped_and_whose_events_were_lost_is_settled_once(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    marker = f"reconcile-{uuid.uuid4().hex}"
    # Given a RUNNING task whose execution is stopped and whose STOPPED event is lost
    with reconciler_schedule_paused(stack), a_lost_running_task(stack, api, f"echo {marker}; sleep 4") as task:
        sfn = stack.client("stepfunctions")
        assert wait_until(
            lambda: sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "ABORTED", 10, interval=0.2
        )
        assert wait_until(lambda: ecs_task(stack, task["ecs_task_arn"])["lastStatus"] == "STOPPED", 30, interval=0.2)
        time.sleep(2)
        assert api.get(task["task_id"])["status"] == "RUNNING"  # nothing settled it: it would stay RUNNING
        # When the reconciler runs (invoked through the local Lambda runtime, as its schedule does)
        invocation = stack.runtime.invoke("ReconcilerFunction", SCHEDULED)
        again = stack.runtime.invoke("ReconcilerFunction", SCHEDULED)
    # Then it settled the task from what ECS says, with exactly one metering record per the Fargate formula
    assert invocation.error is None and again.error is None, (invocation.error, again.error)
    assert {"task_id": task["task_id"], "action": "settled", "status": "SUCCEEDED"} in invocation.result["tasks"]
    assert task["task_id"] not in [t["task_id"] for t in again.result["tasks"]]
    done = api.get(task["task_id"])
    assert done["status"] == "SUCCEEDED" and done["exit_code"] == 0
    described = ecs_task(stack, task["ecs_task_arn"])
    assert done["metering"]["billed_seconds"] == billed_seconds(described["pullStartedAt"], described["stoppedAt"])
    assert done["metering"]["billed_seconds"] == 60
    [record] = metering_records(stack, task["task_id"])
    assert record["pk"]["S"] == f"METER#{task['ecs_task_arn']}"
    assert api.logs(task["task_id"]) == [marker]


def test_the_local_stack_runs_the_reconciler_on_its_own_every_30_seconds(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    # Given the reconciler's 5-minute schedule, which the local stack fires every 30 s
    schedule_arn = stack.deployment.schedule_arns["ReconcilerFunctionEvery5Minutes"]
    assert stack.ticker is not None and stack.ticker.local_periods[schedule_arn] == 30.0
    detail = stack.client("scheduler").get_schedule(
        Name=stack.deployment.physical_ids["ReconcilerFunctionEvery5Minutes"]
    )
    assert detail["ScheduleExpression"] == "rate(5 minutes)" and detail["State"] == "ENABLED"
    assert detail["Target"]["Arn"].endswith(stack.deployment.function_names["ReconcilerFunction"])
    # And a task that never gets its ECS events, whose workflow is stopped while it runs
    with a_lost_running_task(stack, api, "sleep 3") as task:
        # When nobody but the local schedule runs the reconciler
        done = api.wait(task["task_id"], timeout=75, interval=0.5)
    # Then within a period or two the task is settled, metered once
    assert done["status"] == "SUCCEEDED" and done["metering"]["billed_seconds"] == 60
    assert len(metering_records(stack, task["task_id"])) == 1
