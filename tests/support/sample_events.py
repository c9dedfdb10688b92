"""Writes the sample events in events/ (run: python -m tests.support.sample_events).

The API events follow API Gateway's HTTP API payload format 2.0; the ECS events follow what EventBridge
delivers for "ECS Task State Change"; the function inputs follow what the state machine passes."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from tests.support.apigw import ADMIN_PRINCIPAL, authorizer_event, http_event
from tests.support.stack import ROOT

TASK_ID = "01JDQ5ZC8W0000000000000000"
ECS_TASK_ID = "3b0fd8f3c1a04a4c9b6ad9c1f4b7e2d1"
ECS_TASK_ARN = f"arn:aws:ecs:us-east-1:123456789012:task/taskrunner/{ECS_TASK_ID}"
CLUSTER_ARN = "arn:aws:ecs:us-east-1:123456789012:cluster/taskrunner"
TASK_DEFINITION_ARN = (
    "arn:aws:ecs:us-east-1:123456789012:task-definition/taskrunner-x86_64-20g-4c9a1e0b7f3d2a6e58c1b0d9:1"
)


NIGHTLY = {
    "name": "nightly",
    "schedule_expression": "cron(0 3 * * ? *)",
    "timezone": "Europe/Berlin",
    "overlap_policy": "FORBID",
    "description": "The nightly report",
    "start_date": "2027-03-25T00:00:00Z",
    "task": {"image": "python:3.12-slim", "command": ["sh", "-c", "echo nightly report"], "cpu": 256, "memory": 512},
}


#: the caller of the sample events: the authorizer's context for an admin key (`sam local invoke` and the function
#: get the request as API Gateway hands it on, authorized)
SAMPLE_ADMIN = {**ADMIN_PRINCIPAL, "key_id": "sample"}
#: a tenant's own key, which may not administer tenants
SAMPLE_TENANT_CALLER = {"tenant": "acme", "admin": False, "key_id": "sample"}
ACME = {"name": "acme", "quotas": {"max_running_tasks": 2, "max_vcpu": 2, "max_memory_gib": 4}}
UNKNOWN_KEY_ID = "abcdefghijkl"
#: a task token as Step Functions hands one to a `.waitForTaskToken` state (opaque, up to 2,048 characters)
SAMPLE_TASK_TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAeMtAZhkRf6fIOPSw3ex2lQIqwOEMmrE9jx6cXG5ZDptsaN3sample"


def api_events() -> dict[str, dict]:
    hello = {"image": "python:3.12-slim", "command": ["sh", "-c", "echo hi"], "cpu": 256, "memory": 512}
    event = partial(http_event, principal=SAMPLE_ADMIN)
    public = partial(http_event, principal=None)  # routes without an authorizer: no authorizer context
    return {
        "post_task.json": event("POST", "/tasks", body=hello),
        "post_task_unauthenticated.json": http_event("POST", "/tasks", body=hello, principal=None),
        "post_task_idempotent.json": event(
            "POST", "/tasks", body=hello, headers={"Idempotency-Key": "nightly-report-2026-11-27"}
        ),
        "post_task_invalid_memory.json": event("POST", "/tasks", body={"image": "x", "cpu": 256, "memory": 4096}),
        "post_task_malformed_json.json": event("POST", "/tasks", body='{"image": "x",'),
        "get_task.json": event("GET", f"/tasks/{TASK_ID}"),
        "list_tasks.json": event("GET", "/tasks", query={"status": "RUNNING", "limit": "10"}),
        "cancel_task.json": event("POST", f"/tasks/{TASK_ID}/cancel"),
        "get_task_logs.json": event("GET", f"/tasks/{TASK_ID}/logs", query={"limit": "50"}),
        "get_usage.json": event("GET", "/usage", query={"from": "2026-11-01", "to": "2026-11-30"}),
        "get_openapi.json": public("GET", "/openapi.json"),
        "get_docs.json": public("GET", "/docs"),
        "post_schedule.json": event("POST", "/schedules", body=NIGHTLY),
        "post_schedule_unix_cron.json": event(
            "POST", "/schedules", body={**NIGHTLY, "schedule_expression": "*/5 * * * *"}
        ),
        "list_schedules.json": event("GET", "/schedules", query={"limit": "20"}),
        "get_schedule.json": event("GET", "/schedules/nightly"),
        "put_schedule.json": event("PUT", "/schedules/nightly", body={**NIGHTLY, "enabled": False}),
        "delete_schedule.json": event("DELETE", "/schedules/nightly"),
        "run_schedule.json": event("POST", "/schedules/nightly/run"),
        "list_tasks_of_schedule.json": event("GET", "/tasks", query={"schedule": "nightly"}),
        "post_tenant.json": event("POST", "/tenants", body=ACME),
        "post_tenant_not_admin.json": http_event("POST", "/tenants", body=ACME, principal=SAMPLE_TENANT_CALLER),
        "list_tenants.json": event("GET", "/tenants", query={"limit": "20"}),
        "get_tenant.json": event("GET", "/tenants/acme"),
        "put_tenant.json": event("PUT", "/tenants/acme", body={"quotas": {**ACME["quotas"], "max_running_tasks": 4}}),
        "rotate_tenant_key.json": event("POST", "/tenants/acme/keys", body={"grace_seconds": 3600}),
        "revoke_tenant_key.json": event("DELETE", f"/tenants/acme/keys/{UNKNOWN_KEY_ID}"),
        "get_usage_of_tenant.json": event("GET", "/usage", query={"tenant": "acme"}),
        "disable_tenant.json": event("DELETE", "/tenants/acme"),
    }


def ecs_description(last_status: str, *, exit_code: int | None, stop_code: str | None) -> dict:
    detail = {
        "attachments": [],
        "attributes": [{"name": "ecs.cpu-architecture", "value": "x86_64"}],
        "availabilityZone": "us-east-1a",
        "capacityProviderName": "FARGATE",
        "clusterArn": CLUSTER_ARN,
        "connectivity": "CONNECTED",
        "connectivityAt": "2026-11-27T22:23:21.582Z",
        "containers": [
            {
                "containerArn": f"arn:aws:ecs:us-east-1:123456789012:container/taskrunner/{ECS_TASK_ID}/5f2b",
                "lastStatus": last_status,
                "name": "main",
                "image": "python:3.12-slim",
                "taskArn": ECS_TASK_ARN,
                "cpu": "256",
                "memory": "512",
            }
        ],
        "cpu": "256",
        "createdAt": "2026-11-27T22:23:21.420Z",
        "desiredStatus": last_status if last_status != "STOPPED" else "STOPPED",
        "enableExecuteCommand": False,
        "ephemeralStorage": {"sizeInGiB": 20},
        "group": f"taskrunner:{TASK_ID}",
        "launchType": "FARGATE",
        "lastStatus": last_status,
        "memory": "512",
        "overrides": {"containerOverrides": [{"name": "main", "command": ["sh", "-c", "echo hi"]}]},
        "platformVersion": "1.4.0",
        "pullStartedAt": "2026-11-27T22:23:30.105Z",
        "pullStoppedAt": "2026-11-27T22:23:36.871Z",
        "startedAt": "2026-11-27T22:23:37.912Z",
        "startedBy": TASK_ID,
        "taskArn": ECS_TASK_ARN,
        "taskDefinitionArn": TASK_DEFINITION_ARN,
        "updatedAt": "2026-11-27T22:23:37.912Z",
        "version": 3,
    }
    if last_status == "STOPPED":
        detail["containers"][0]["exitCode"] = exit_code
        detail.update(
            stopCode=stop_code,
            stoppedReason="Essential container in task exited",
            stoppingAt="2026-11-27T22:23:38.512Z",
            executionStoppedAt="2026-11-27T22:23:38.400Z",
            stoppedAt="2026-11-27T22:23:48.905Z",
            updatedAt="2026-11-27T22:23:48.905Z",
            version=6,
        )
    return detail


def ecs_event(detail: dict) -> dict:
    return {
        "version": "0",
        "id": "9bcdac79-b31f-4d3d-9410-fbd727c29fab",
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": "123456789012",
        "time": detail["updatedAt"][:19] + "Z",
        "region": "us-east-1",
        "resources": [ECS_TASK_ARN],
        "detail": detail,
    }


def pascal(value):
    if isinstance(value, dict):
        return {k[:1].upper() + k[1:]: pascal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pascal(v) for v in value]
    return value


def function_events() -> dict[str, dict]:
    stopped_ok = ecs_description("STOPPED", exit_code=0, stop_code="EssentialContainerExited")
    stopped_failed = ecs_description("STOPPED", exit_code=2, stop_code="EssentialContainerExited")
    return {
        "ecs/task_state_change_running.json": ecs_event(ecs_description("RUNNING", exit_code=None, stop_code=None)),
        "ecs/task_state_change_stopped.json": ecs_event(stopped_ok),
        "finalize/completed.json": {"task_id": TASK_ID, "outcome": "COMPLETED", "ecs_task": pascal(stopped_ok)},
        "finalize/task_failed.json": {
            "task_id": TASK_ID,
            "outcome": "TASK_FAILED",
            "error": {"Error": "States.TaskFailed", "Cause": json.dumps(pascal(stopped_failed))},
        },
        "finalize/error.json": {
            "task_id": TASK_ID,
            "outcome": "ERROR",
            "error": {"Error": "AmazonECS.Unknown", "Cause": "RunTask returned failures: RESOURCE:ENI"},
        },
        "finalize/not_started.json": {"task_id": TASK_ID, "outcome": "NOT_STARTED"},
        "stop_task/timeout.json": {"task_id": TASK_ID},
        # the state machine's WaitForSlot: a queued task's workflow gives its task token ($$.Task.Token)
        "queue/wait.json": {"action": "wait", "task_id": TASK_ID, "token": SAMPLE_TASK_TOKEN},
        # EventBridge Scheduler runs the reconciler every five minutes with this Input (template.yaml)
        "reconcile/scheduled.json": {"scheduled_time": "2026-11-27T22:30:00Z"},
        # EventBridge Scheduler substitutes <aws.scheduler.scheduled-time> in the target's Input
        "scheduled_submit/scheduled_run.json": {
            "tenant": "default",
            "schedule_name": "nightly",
            "scheduled_time": "2027-03-26T02:00:00Z",
        },
        # API Gateway asks the authorizer about each request's Authorization header: a key of the right form that
        # no tenant has (it always authorizes; its context says who the caller is, here no one), and Basic auth
        "authorizer/unknown_key.json": authorizer_event(
            "GET", "/tasks", authorization=f"Bearer trk_{UNKNOWN_KEY_ID}_{'A' * 43}"
        ),
        "authorizer/basic_scheme.json": authorizer_event("GET", "/tasks", authorization="Basic dXNlcjpwYXNzd29yZA=="),
        "scheduled_submit/template_schedule_run.json": {
            "tenant": "default",
            "schedule_name": "example-nightly",
            "scheduled_time": "2027-03-26T02:00:00Z",
            "overlap_policy": "FORBID",
            "task": {"image": "python:3.12-slim", "command": ["sh", "-c", "echo nightly report"]},
        },
    }


def write_all(root: Path = ROOT / "events") -> None:
    files = {f"api/{name}": event for name, event in api_events().items()} | function_events()
    for relative, event in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(event, indent=2) + "\n")


if __name__ == "__main__":
    write_all()
