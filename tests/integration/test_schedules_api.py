"""The schedules API and the scheduled-submission function: handler → domain → DynamoDB / EventBridge Scheduler."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import boto3
import pytest

from tests.integration.conftest import invoke, load_event
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.sample_events import NIGHTLY
from tests.support.stack import REGION

api = load_function("api")
scheduled_submit = load_function("scheduled_submit")
BERLIN = ZoneInfo("Europe/Berlin")


def call(event):
    response = invoke(api, event)
    body = response["body"]
    return response["statusCode"], (json.loads(body) if body else None), response.get("headers") or {}


def scheduler_schedule(stack, name="nightly"):
    return boto3.client("scheduler", region_name=REGION).get_schedule(
        GroupName=stack.schedule_group, Name=f"default.{name}"
    )


def test_nightly_in_berlin_is_201_with_next_runs_at_three_berlin_time_on_both_sides_of_the_dst_change(stack):
    status, schedule, headers = call(load_event("api/post_schedule.json"))
    assert status == 201, schedule
    assert headers["Location"] == "/schedules/nightly"
    runs = [datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone(BERLIN) for t in schedule["next_run_times"]]
    assert len(runs) == 5 and {(r.hour, r.minute) for r in runs} == {(3, 0)}
    assert runs[0].date().isoformat() == "2027-03-25" and runs[-1].date().isoformat() == "2027-03-29"
    assert {r.utcoffset().total_seconds() for r in runs} == {3600, 7200}  # 2027-03-28 is in between


def test_each_schedule_is_an_eventbridge_scheduler_schedule_targeting_scheduled_submission(stack):
    call(load_event("api/post_schedule.json"))
    remote = scheduler_schedule(stack)
    assert remote["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert remote["ScheduleExpressionTimezone"] == "Europe/Berlin"
    assert remote["FlexibleTimeWindow"] == {"Mode": "OFF"} and remote["State"] == "ENABLED"
    target = remote["Target"]
    assert target["Arn"].endswith(":function:scheduled-submit") and target["RoleArn"].endswith(":role/scheduler")
    assert target["DeadLetterConfig"]["Arn"] == stack.schedules_dlq_arn
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 3
    assert json.loads(target["Input"]) == {
        "tenant": "default",
        "schedule_name": "nightly",
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }


def test_a_unix_cron_is_422_explaining_the_aws_format(stack):
    status, body, _ = call(load_event("api/post_schedule_unix_cron.json"))
    assert status == 422
    [detail] = body["error"]["details"]
    assert detail["field"] == "schedule_expression" and "six fields" in detail["rule"]
    assert "?" in detail["rule"]


def test_an_invalid_task_in_a_schedule_is_422_naming_the_task_field(stack):
    status, body, _ = call(http_event("POST", "/schedules", body={**NIGHTLY, "task": {"image": "x", "memory": 4096}}))
    assert status == 422 and body["error"]["details"][0]["field"] == "task.memory"


@pytest.mark.parametrize("name", [".", ".."])
def test_a_name_a_url_path_cannot_carry_is_422(stack, name):
    """Clients resolve `.` and `..` away as dot segments: such a schedule could be created, never read."""
    status, body, _ = call(http_event("POST", "/schedules", body={**NIGHTLY, "name": name}))
    assert status == 422
    [detail] = body["error"]["details"]
    assert detail["field"] == "name" and "dot segment" in detail["rule"]


def test_a_duplicate_name_is_409(stack):
    call(load_event("api/post_schedule.json"))
    status, body, _ = call(load_event("api/post_schedule.json"))
    assert status == 409 and body["error"]["code"] == "SCHEDULE_ALREADY_EXISTS"


def test_get_list_pause_resume_and_delete(stack):
    for name in ("a-first", "b-second", "nightly"):
        call(http_event("POST", "/schedules", body={**NIGHTLY, "name": name}))
    status, page, _ = call(http_event("GET", "/schedules", query={"limit": "2"}))
    assert status == 200 and [s["name"] for s in page["items"]] == ["a-first", "b-second"] and page["next_token"]
    _, rest, _ = call(http_event("GET", "/schedules", query={"limit": "2", "next_token": page["next_token"]}))
    assert [s["name"] for s in rest["items"]] == ["nightly"]
    status, paused, _ = call(load_event("api/put_schedule.json"))
    assert status == 200 and paused["enabled"] is False and paused["next_run_times"] == []
    assert scheduler_schedule(stack)["State"] == "DISABLED"
    status, resumed, _ = call(http_event("PUT", "/schedules/nightly", body={**NIGHTLY, "enabled": True}))
    assert status == 200 and len(resumed["next_run_times"]) == 5 and scheduler_schedule(stack)["State"] == "ENABLED"
    status, body, _ = call(http_event("PUT", "/schedules/nightly", body={**NIGHTLY, "name": "renamed"}))
    assert status == 422 and body["error"]["details"][0]["field"] == "name"
    status, _, _ = call(load_event("api/delete_schedule.json"))
    assert status == 204
    assert call(load_event("api/get_schedule.json"))[0] == 404
    assert call(load_event("api/delete_schedule.json"))[0] == 404
    remaining = boto3.client("scheduler", region_name=REGION).list_schedules(GroupName=stack.schedule_group)
    assert sorted(s["Name"] for s in remaining["Schedules"]) == ["default.a-first", "default.b-second"]


def test_run_now_returns_the_task_and_the_schedule_lists_its_runs(stack):
    call(load_event("api/post_schedule.json"))
    status, task, headers = call(load_event("api/run_schedule.json"))
    assert status == 202 and task["schedule"] == "nightly" and headers["Location"] == f"/tasks/{task['task_id']}"
    status, page, _ = call(load_event("api/list_tasks_of_schedule.json"))
    assert [t["task_id"] for t in page["items"]] == [task["task_id"]]
    _, schedule, _ = call(load_event("api/get_schedule.json"))
    assert schedule["last_run"]["task_id"] == task["task_id"] and schedule["last_run"]["outcome"] == "STARTED"
    assert call(http_event("POST", "/schedules/nope/run"))[0] == 404


def test_scheduled_submission_fires_once_per_scheduled_time_and_forbid_skips_while_running(stack):
    call(load_event("api/post_schedule.json"))  # FORBID
    first = invoke(scheduled_submit, load_event("scheduled_submit/scheduled_run.json"))
    again = invoke(scheduled_submit, load_event("scheduled_submit/scheduled_run.json"))
    assert first["outcome"] == "STARTED" and again["task_id"] == first["task_id"]
    later = load_event("scheduled_submit/scheduled_run.json", **{"2027-03-26T02:00:00Z": "2027-03-27T02:00:00Z"})
    assert invoke(scheduled_submit, later)["outcome"] == "SKIPPED"
    _, page, _ = call(load_event("api/list_tasks_of_schedule.json"))
    assert len(page["items"]) == 1 and page["items"][0]["scheduled_time"].startswith("2027-03-26T02:00:00")


def test_a_template_schedule_runs_from_its_input(stack):
    result = invoke(scheduled_submit, load_event("scheduled_submit/template_schedule_run.json"))
    assert result["outcome"] == "STARTED"
    _, task, _ = call(http_event("GET", f"/tasks/{result['task_id']}"))
    assert task["schedule"] == "example-nightly" and task["spec"]["command"] == ["sh", "-c", "echo nightly report"]


def test_openapi_documents_the_schedules(stack):
    _, doc, _ = call(load_event("api/get_openapi.json"))
    assert {"/schedules", "/schedules/{name}", "/schedules/{name}/run"} <= set(doc["paths"])
    assert "ScheduleSpec" in doc["components"]["schemas"]
