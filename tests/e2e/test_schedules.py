"""Schedules on the local stack: the ticker fires EventBridge Scheduler schedules at wall-clock time."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.images import BUSYBOX_IMAGE
from taskrunner_local.stack import LocalStack


def schedule(name: str, expression: str, command: str, **fields: object) -> dict[str, object]:
    return {
        "name": name,
        "schedule_expression": expression,
        "task": {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", command]},
        **fields,
    }


def create(api: TaskRunnerClient, body: dict[str, object]) -> dict:
    response = api.http.post(f"{api.base_url}/schedules", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def runs(api: TaskRunnerClient, name: str) -> list[dict]:
    return api.http.get(f"{api.base_url}/tasks", params={"schedule": name}, timeout=30).json()["items"]


def test_a_rate_schedule_produces_a_succeeded_task_within_75_seconds(stack: LocalStack, api: TaskRunnerClient) -> None:
    name = f"every-minute-{uuid.uuid4().hex[:6]}"
    created = create(api, schedule(name, "rate(1 minute)", "echo scheduled"))
    first = datetime.fromisoformat(created["next_run_times"][0].replace("Z", "+00:00"))
    assert first - datetime.now(UTC) <= timedelta(seconds=61)
    deadline = time.monotonic() + 75
    found: list[dict] = []
    while time.monotonic() < deadline and not found:
        found = [t for t in runs(api, name) if t["status"] == "SUCCEEDED" and t["metering"]]
        time.sleep(1)
    assert found, f"no SUCCEEDED run of {name} within 75 s: {runs(api, name)}"
    assert api.logs(found[0]["task_id"]) == ["scheduled"]
    assert found[0]["scheduled_time"] is not None


def test_run_now_produces_a_task_at_once(stack: LocalStack, api: TaskRunnerClient) -> None:
    name = f"manual-{uuid.uuid4().hex[:6]}"
    create(api, schedule(name, "cron(0 3 * * ? *)", "echo now", timezone="Europe/Berlin"))
    response = api.http.post(f"{api.base_url}/schedules/{name}/run", timeout=30)
    assert response.status_code == 202
    task = api.wait(response.json()["task_id"])
    assert task["status"] == "SUCCEEDED" and task["schedule"] == name
    assert api.http.get(f"{api.base_url}/schedules/{name}", timeout=30).json()["last_run"]["task_id"] == task["task_id"]


def test_forbid_skips_while_a_run_is_still_going(stack: LocalStack, api: TaskRunnerClient) -> None:
    name = f"forbid-{uuid.uuid4().hex[:6]}"
    create(api, schedule(name, "cron(0 3 * * ? *)", "sleep 300", overlap_policy="FORBID"))
    running = api.http.post(f"{api.base_url}/schedules/{name}/run", timeout=30).json()
    api.wait(running["task_id"], {"RUNNING"})
    # the schedule fires (through its EventBridge Scheduler target) while the first run is still going
    assert stack.runtime is not None
    fired = stack.runtime.invoke(
        "ScheduledSubmitFunction",
        {"tenant": "default", "schedule_name": name, "scheduled_time": datetime.now(UTC).isoformat()},
    )
    assert fired.error is None and fired.result["outcome"] == "SKIPPED"
    detail = api.http.get(f"{api.base_url}/schedules/{name}", timeout=30).json()
    assert detail["last_run"]["outcome"] == "SKIPPED"
    assert [t["task_id"] for t in runs(api, name)] == [running["task_id"]]
    api.cancel(running["task_id"])


def test_a_deleted_schedule_fires_no_more(stack: LocalStack, api: TaskRunnerClient) -> None:
    assert stack.ticker is not None
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    create(api, schedule(name, "rate(1 minute)", "true"))
    now = datetime.now(UTC)
    window = (now, now + timedelta(minutes=3))
    assert any(s.name == f"default.{name}" for s, _ in stack.ticker.due(*window))
    assert api.http.delete(f"{api.base_url}/schedules/{name}", timeout=30).status_code == 204
    assert not any(s.name == f"default.{name}" for s, _ in stack.ticker.due(*window))


def test_the_template_example_schedule_is_deployed_disabled(stack: LocalStack) -> None:
    scheduler = stack.client("scheduler")
    group = stack.deployment.outputs["ScheduleGroupName"]
    schedules = scheduler.list_schedules(GroupName=group)["Schedules"]
    [example] = [s for s in schedules if not s["Name"].startswith("default.")]
    assert example["State"] == "DISABLED"
    detail = scheduler.get_schedule(GroupName=group, Name=example["Name"])
    assert (
        detail["ScheduleExpression"] == "cron(0 3 * * ? *)" and detail["ScheduleExpressionTimezone"] == "Europe/Berlin"
    )
    assert detail["Target"]["Arn"].endswith(stack.deployment.function_names["ScheduledSubmitFunction"])
