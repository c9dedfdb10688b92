"""The functions the state machine and EventBridge invoke, on their sample events, against moto."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.integration.conftest import invoke, load_event, metering_items
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.sample_events import ECS_TASK_ARN, TASK_ID
from tests.support.stack import add_container_instance, run_ecs_task

api, finalize, stop_task, task_events = (load_function(n) for n in ("api", "finalize", "stop_task", "task_events"))


@pytest.fixture
def task_id(stack):
    response = invoke(api, http_event("POST", "/tasks", body={"image": "python:3.12-slim", "cpu": 512, "memory": 1024}))
    assert response["statusCode"] == 202
    return json.loads(response["body"])["task_id"]


def event(relative, task_id):
    return load_event(relative, **{TASK_ID: task_id})


def get_task(task_id):
    response = invoke(api, http_event("GET", f"/tasks/{task_id}"))
    return json.loads(response["body"])


def test_running_event_records_running_and_the_ecs_task(task_id):
    result = invoke(task_events, event("ecs/task_state_change_running.json", task_id))
    assert result == {"handled": True, "task_id": task_id, "status": "RUNNING"}
    task = get_task(task_id)
    assert task["status"] == "RUNNING" and task["ecs_task_arn"] == ECS_TASK_ARN
    assert task["started_at"].startswith("2026-11-27T22:23:37.912")


def test_stopped_event_finalizes_a_task_the_state_machine_did_not(task_id, stack, ddb):
    invoke(task_events, event("ecs/task_state_change_running.json", task_id))
    result = invoke(task_events, event("ecs/task_state_change_stopped.json", task_id))
    assert result["status"] == "SUCCEEDED"
    task = get_task(task_id)
    assert task["exit_code"] == 0 and task["stop_code"] == "EssentialContainerExited"
    assert task["stopped_at"].startswith("2026-11-27T22:23:48.905")
    metering = task["metering"]
    assert metering["billed_seconds"] == 60 and metering["vcpu"] == 0.5 and metering["memory_gib"] == 1.0
    assert metering["window_start"].startswith("2026-11-27T22:23:30.105")
    [record] = metering_items(ddb, stack.tasks_table)
    assert record["pk"]["S"] == f"METER#{ECS_TASK_ARN}"


def test_both_paths_and_repeats_leave_one_metering_record_and_one_final_status(task_id, stack, ddb):
    outcomes = [
        invoke(finalize, event("finalize/completed.json", task_id)),
        invoke(task_events, event("ecs/task_state_change_stopped.json", task_id)),
        invoke(finalize, event("finalize/completed.json", task_id)),
        invoke(task_events, event("ecs/task_state_change_stopped.json", task_id)),
        invoke(finalize, event("finalize/task_failed.json", task_id)),  # a conflicting late report changes nothing
    ]
    assert {o["status"] for o in outcomes} == {"SUCCEEDED"}
    assert len(metering_items(ddb, stack.tasks_table)) == 1
    assert get_task(task_id)["status"] == "SUCCEEDED"


def test_task_failed_cause_gives_failed_with_the_exit_code(task_id):
    result = invoke(finalize, event("finalize/task_failed.json", task_id))
    assert result == {"task_id": task_id, "status": "FAILED", "metered": True}
    task = get_task(task_id)
    assert task["exit_code"] == 2 and task["metering"]["billed_seconds"] == 60


def test_an_orchestration_error_without_ecs_task_fails_the_task_with_its_reason(task_id):
    invoke(finalize, event("finalize/error.json", task_id))
    task = get_task(task_id)
    assert task["status"] == "FAILED" and task["status_reason"].startswith("AmazonECS.Unknown")
    assert task["metering"]["billed_seconds"] == 0


def test_not_started_is_cancelled(task_id):
    assert invoke(finalize, event("finalize/not_started.json", task_id))["status"] == "CANCELLED"


def test_stop_task_marks_timed_out_stops_the_ecs_task_and_the_stopped_event_keeps_it(task_id, stack):
    ecs_task_arn = run_ecs_task(stack, started_by=task_id)
    result = invoke(stop_task, event("stop_task/timeout.json", task_id))
    assert result == {"task_id": task_id, "ecs_task_arn": ecs_task_arn}  # found by startedBy, not yet recorded
    assert get_task(task_id)["status"] == "TIMED_OUT"
    [described] = boto3.client("ecs", region_name="us-east-1").describe_tasks(
        cluster=stack.cluster, tasks=[ecs_task_arn]
    )["tasks"]
    assert described["desiredStatus"] == "STOPPED" and described["stoppedReason"] == "Timed out after 3600 s"
    stopped = event("ecs/task_state_change_stopped.json", task_id)
    stopped["detail"]["taskArn"] = ecs_task_arn
    invoke(task_events, stopped)
    task = get_task(task_id)
    assert task["status"] == "TIMED_OUT" and task["status_reason"] == "Timed out after 3600 s"
    assert task["metering"]["billed_seconds"] == 60 and task["ecs_task_arn"] == ecs_task_arn


def test_stop_task_finds_an_ecs_task_by_its_group_when_step_functions_set_started_by(task_id, stack):
    from taskrunner.models import TaskSpec
    from taskrunner.task_definitions import task_definition_family

    family = task_definition_family(stack.settings(), TaskSpec(image="python:3.12-slim"))
    run_ecs_task(stack, started_by="AWS Step Functions", family="other-family", group="taskrunner:someone-else")
    ecs_task_arn = run_ecs_task(stack, started_by="AWS Step Functions", family=family, group=f"taskrunner:{task_id}")
    assert invoke(stop_task, event("stop_task/timeout.json", task_id))["ecs_task_arn"] == ecs_task_arn


def test_stop_task_without_an_ecs_task_still_times_out(task_id):
    assert invoke(stop_task, event("stop_task/timeout.json", task_id))["ecs_task_arn"] is None
    assert get_task(task_id)["status"] == "TIMED_OUT"


def test_events_for_tasks_of_others_are_ignored(stack):
    assert invoke(task_events, load_event("ecs/task_state_change_stopped.json")) == {"handled": False}


def test_a_malformed_finalize_input_is_rejected_before_any_write(task_id):
    from aws_lambda_powertools.utilities.parser import ValidationError

    with pytest.raises(ValidationError):
        invoke(finalize, {"task_id": task_id, "outcome": "MAYBE"})
    assert get_task(task_id)["status"] == "SUBMITTED"


def _mark_provisioning(task_id):
    """What the state machine's MarkProvisioning does before RunTask: the task may now have an ECS task."""
    from datetime import UTC, datetime

    from taskrunner.models import TaskStatus
    from taskrunner.wiring import task_service

    store = task_service().store
    task = store.get(task_id)
    now = datetime.now(UTC)
    store.transition(task, TaskStatus.PROVISIONING, {"provisioning_at": now, "updated_at": now})


def test_a_workflow_error_after_run_task_leaves_the_metering_to_the_ecs_tasks_stopped_event(task_id, stack, ddb):
    # Given a task whose workflow called RunTask, then failed without the ECS task's description, and whose ECS
    # task the lookup does not find yet (Step Functions sets startedBy itself; the group search sees nothing yet)
    _mark_provisioning(task_id)
    finalized = invoke(finalize, event("finalize/error.json", task_id))
    # Then it gets its final status, but no metering record that would block the real one
    assert finalized == {"task_id": task_id, "status": "FAILED", "metered": False}
    assert metering_items(ddb, stack.tasks_table) == []
    # When its ECS task reports STOPPED, the task is metered from the ECS task's own timestamps
    invoke(task_events, event("ecs/task_state_change_stopped.json", task_id))
    task = get_task(task_id)
    assert task["status"] == "FAILED" and task["ecs_task_arn"] == ECS_TASK_ARN
    assert task["metering"]["billed_seconds"] == 60 and task["metering"]["window_start"] is not None
    [record] = metering_items(ddb, stack.tasks_table)
    assert record["pk"]["S"] == f"METER#{ECS_TASK_ARN}"


def test_a_timeout_without_an_observed_ecs_task_is_metered_by_the_late_stopped_event(task_id, stack):
    _mark_provisioning(task_id)
    assert invoke(stop_task, event("stop_task/timeout.json", task_id))["ecs_task_arn"] is None
    timed_out = invoke(finalize, {"task_id": task_id, "outcome": "TIMED_OUT", "error": {"Error": "States.Timeout"}})
    assert timed_out["status"] == "TIMED_OUT" and timed_out["metered"] is False
    invoke(task_events, event("ecs/task_state_change_stopped.json", task_id))
    task = get_task(task_id)
    assert task["status"] == "TIMED_OUT" and task["metering"]["billed_seconds"] == 60


def test_a_task_that_never_reached_run_task_is_metered_zero_at_once(task_id, stack, ddb):
    invoke(finalize, event("finalize/error.json", task_id))  # e.g. RegisterTaskDefinition failed: still SUBMITTED
    assert get_task(task_id)["metering"]["billed_seconds"] == 0
    assert len(metering_items(ddb, stack.tasks_table)) == 1


def test_looking_up_an_ecs_task_on_the_request_path_makes_a_bounded_number_of_calls(task_id, stack):
    # Given a popular image: 250 ECS tasks of the task's family, none of them the task's own
    from taskrunner.models import TaskSpec
    from taskrunner.task_definitions import task_definition_family
    from taskrunner.wiring import task_service

    family = task_definition_family(stack.settings(), TaskSpec(image="python:3.12-slim"))
    for i in range(250):
        if i % 50 == 0:  # each moto container instance has room for about fifty of these
            add_container_instance(stack)
        run_ecs_task(stack, started_by="AWS Step Functions", family=family, group=f"taskrunner:other-{i}")
    ecs = task_service().compute.ecs
    calls: list[str] = []
    ecs.meta.events.register("before-call.ecs.*", lambda model, **_: calls.append(model.name))
    # When a cancel looks for the task's ECS task
    invoke(api, http_event("POST", f"/tasks/{task_id}/cancel"))
    # Then it asks ECS at most four times (startedBy twice, one page of the family, one DescribeTasks)
    assert len(calls) <= 4, calls
    assert get_task(task_id)["status"] == "CANCELLED"


def test_a_stopped_task_description_without_its_optional_fields_is_finalized(task_id):
    # Given what runTask.sync returns for a task that stopped before it pulled its image: ECS's Task shape leaves
    # stopCode, pullStartedAt, startedAt, stoppedAt, capacityProviderName, ... optional, and they are missing
    bare = {"TaskArn": ECS_TASK_ARN, "LastStatus": "STOPPED", "Containers": [{"Name": "main", "ExitCode": 0}]}
    # When the state machine finalizes it
    result = invoke(finalize, {"task_id": task_id, "outcome": "COMPLETED", "ecs_task": bare})
    # Then the task gets its final status and its metering from what is there (nothing pulled: billed 0)
    assert result == {"task_id": task_id, "status": "SUCCEEDED", "metered": True}
    task = get_task(task_id)
    assert task["ecs_task_arn"] == ECS_TASK_ARN and task["metering"]["billed_seconds"] == 0


def test_a_task_definition_ecs_refuses_to_run_is_forgotten_so_the_next_task_registers_anew(stack, ddb):
    # Given an image whose recorded task definition someone deregistered (ECS then refuses RunTask with it)
    from taskrunner.task_definitions import task_definition_key
    from taskrunner.wiring import task_service

    first = json.loads(invoke(api, http_event("POST", "/tasks", body={"image": "busybox"}))["body"])["task_id"]
    family = task_service().execution_input(task_service().get("default", first))["task_definition"]["family"]
    revision = f"arn:aws:ecs:us-east-1:123456789012:task-definition/{family}:1"
    ddb.put_item(
        TableName=stack.tasks_table,
        Item={**task_definition_key(family), "task_definition_arn": {"S": revision}},
    )
    second = json.loads(invoke(api, http_event("POST", "/tasks", body={"image": "busybox"}))["body"])["task_id"]
    assert task_service().execution_input(task_service().get("default", second))["prepared"] == {
        "task_definition_arn": revision
    }
    # When its workflow fails on that revision
    refused = {
        "Error": "ECS.ClientException",
        "Cause": "TaskDefinition is inactive (Service: AmazonECS; Status Code: 400; Error Code: ClientException)",
    }
    assert invoke(finalize, {"task_id": second, "outcome": "ERROR", "error": refused})["status"] == "FAILED"
    # Then the record is gone, and the next task of the image goes to the workflow to register a new revision
    assert "Item" not in ddb.get_item(TableName=stack.tasks_table, Key=task_definition_key(family))
    third = json.loads(invoke(api, http_event("POST", "/tasks", body={"image": "busybox"}))["body"])["task_id"]
    assert "prepared" not in task_service().execution_input(task_service().get("default", third))


def test_other_workflow_errors_keep_the_recorded_task_definition(stack, ddb):
    from taskrunner.task_definitions import task_definition_key

    task_id = json.loads(invoke(api, http_event("POST", "/tasks", body={"image": "busybox"}))["body"])["task_id"]
    from taskrunner.wiring import task_service

    family = task_service().execution_input(task_service().get("default", task_id))["task_definition"]["family"]
    item = {**task_definition_key(family), "task_definition_arn": {"S": "arn:aws:ecs:...:task-definition/x:1"}}
    ddb.put_item(TableName=stack.tasks_table, Item=item)
    invoke(finalize, event("finalize/error.json", task_id))  # RunTask returned failures: RESOURCE:ENI
    assert "Item" in ddb.get_item(TableName=stack.tasks_table, Key=task_definition_key(family))
