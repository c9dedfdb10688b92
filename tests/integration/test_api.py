"""Every route of the HTTP API: API Gateway event → handler → domain → DynamoDB / Step Functions (moto)."""

from __future__ import annotations

import json

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import invoke, load_event, metering_items
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.stack import REGION
from tests.support.task_logs import print_lines

api = load_function("api")


def call(event):
    response = invoke(api, event)
    body = response["body"]
    return (
        response["statusCode"],
        (json.loads(body) if body and body.lstrip().startswith(("{", "[")) else body),
        response.get("headers") or {},
    )


def submit(body=None, headers=None):
    status, task, response_headers = call(
        http_event("POST", "/tasks", body=body or {"image": "busybox"}, headers=headers)
    )
    assert status == 202, task
    return task, response_headers


def executions(stack):
    sfn = boto3.client("stepfunctions", region_name=REGION)
    return sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]


def test_post_task_stores_it_and_starts_an_execution_named_by_the_task_id(stack, ddb):
    status, task, headers = call(load_event("api/post_task.json"))
    assert status == 202
    assert headers["Location"] == f"/tasks/{task['task_id']}"
    assert task["status"] == "SUBMITTED" and task["tenant"] == "default"
    assert task["spec"]["command"] == ["sh", "-c", "echo hi"] and task["metering"] is None
    assert set(task) >= {
        "task_id",
        "tenant",
        "name",
        "status",
        "spec",
        "created_at",
        "updated_at",
        "started_at",
        "stopped_at",
        "exit_code",
        "stop_code",
        "status_reason",
        "ecs_task_arn",
        "execution_arn",
        "metering",
    }
    [execution] = executions(stack)
    assert execution["name"] == task["task_id"] and execution["executionArn"] == task["execution_arn"]
    sfn = boto3.client("stepfunctions", region_name=REGION)
    execution_input = json.loads(sfn.describe_execution(executionArn=task["execution_arn"])["input"])
    assert execution_input["overrides"]["ContainerOverrides"][0]["Command"] == ["sh", "-c", "echo hi"]
    stored = ddb.get_item(
        TableName=stack.tasks_table, Key={"pk": {"S": f"TASK#{task['task_id']}"}, "sk": {"S": "TASK"}}
    )["Item"]
    assert stored["status"]["S"] == "SUBMITTED"


def test_invalid_memory_is_422_naming_memory_and_listing_the_valid_values(stack):
    status, body, _ = call(load_event("api/post_task_invalid_memory.json"))
    assert status == 422
    assert body["error"]["code"] == "VALIDATION_ERROR"
    [detail] = body["error"]["details"]
    assert detail["field"] == "memory"
    assert detail["valid_values"] == [512, 1024, 2048]
    assert "512, 1024, 2048" in detail["rule"] and "cpu 256" in detail["rule"]
    assert executions(stack) == []


def test_malformed_json_is_400(stack):
    status, body, _ = call(load_event("api/post_task_malformed_json.json"))
    assert status == 400 and body["error"]["code"] == "MALFORMED_JSON"


def test_json_sent_as_a_form_by_curl_is_read_as_json(stack):
    event = http_event(
        "POST",
        "/tasks",
        body='{"image":"python:3.12-slim","command":["sh","-c","echo hi"]}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    status, task, _ = call(event)
    assert status == 202 and task["spec"]["image"] == "python:3.12-slim"


def test_base64_encoded_bodies_are_accepted(stack):
    status, task, _ = call(http_event("POST", "/tasks", body={"image": "busybox"}, base64_body=True))
    assert status == 202 and task["spec"]["image"] == "busybox"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "image"),
        ({"image": "busybox", "cpu": 300}, "cpu"),
        ({"image": "busybox", "environment": {"1X": "y"}}, "environment.1X"),
        ({"image": "busybox", "timeout_seconds": 0}, "timeout_seconds"),
        ({"image": "busybox", "environment": {"BIG": "x" * 9000}}, "environment"),
        ({"image": "busybox", "unknown": 1}, "unknown"),
    ],
)
def test_each_rule_is_a_422_naming_the_field(stack, body, field):
    status, error, _ = call(http_event("POST", "/tasks", body=body))
    assert status == 422, error
    assert field in [d["field"] for d in error["error"]["details"]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.text(max_size=50),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
            max_leaves=10,
        ).map(json.dumps),
        st.fixed_dictionaries(
            {"image": st.text(max_size=30)},
            optional={"cpu": st.integers(), "memory": st.integers(), "command": st.lists(st.text())},
        ).map(json.dumps),
    )
)
def test_no_client_body_gets_a_500(stack, body):
    status, _, _ = call(http_event("POST", "/tasks", body=body))
    assert 200 <= status < 500


def test_get_task_and_unknown_task(stack):
    task, _ = submit()
    status, fetched, _ = call(http_event("GET", f"/tasks/{task['task_id']}"))
    assert status == 200 and fetched == task
    status, body, _ = call(load_event("api/get_task.json"))
    assert status == 404 and body["error"]["code"] == "TASK_NOT_FOUND"


def test_list_is_newest_first_filtered_by_status_and_paged_by_token(stack):
    ids = [submit()[0]["task_id"] for _ in range(5)]
    call(http_event("POST", f"/tasks/{ids[2]}/cancel"))
    status, page, _ = call(http_event("GET", "/tasks", query={"limit": "2"}))
    assert status == 200 and [t["task_id"] for t in page["items"]] == ids[::-1][:2]
    seen = [t["task_id"] for t in page["items"]]
    while page["next_token"]:
        _, page, _ = call(http_event("GET", "/tasks", query={"limit": "2", "next_token": page["next_token"]}))
        seen += [t["task_id"] for t in page["items"]]
    assert seen == ids[::-1]
    _, cancelled, _ = call(http_event("GET", "/tasks", query={"status": "CANCELLED"}))
    assert [t["task_id"] for t in cancelled["items"]] == [ids[2]]
    _, running, _ = call(load_event("api/list_tasks.json"))
    assert running["items"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "DONE"}, "status"),
        ({"next_token": "garbage!"}, "next_token"),
    ],
)
def test_bad_list_parameters_are_422(stack, query, field):
    status, body, _ = call(http_event("GET", "/tasks", query=query))
    assert status == 422 and body["error"]["details"][0]["field"] == field


def test_cancel_stops_the_execution_and_a_second_cancel_is_409(stack, ddb):
    task, _ = submit()
    status, cancelled, _ = call(http_event("POST", f"/tasks/{task['task_id']}/cancel"))
    assert status == 202 and cancelled["status"] == "CANCELLED"
    assert cancelled["metering"]["billed_seconds"] == 0  # it never reached ECS
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "ABORTED"
    status, body, _ = call(http_event("POST", f"/tasks/{task['task_id']}/cancel"))
    assert status == 409 and body["error"]["code"] == "TASK_ALREADY_TERMINAL"
    assert len(metering_items(ddb, stack.tasks_table)) == 1
    status, _, _ = call(load_event("api/cancel_task.json"))
    assert status == 404


def test_logs_are_read_from_the_tasks_awslogs_stream(stack):
    task, _ = submit()
    status, page, _ = call(http_event("GET", f"/tasks/{task['task_id']}/logs"))
    assert status == 200 and page == {"events": [], "next_token": None}
    print_lines(stack, task["task_id"], 5)
    _, first, _ = call(http_event("GET", f"/tasks/{task['task_id']}/logs", query={"limit": "3"}))
    assert [e["message"] for e in first["events"]] == ["line 0", "line 1", "line 2"]
    _, second, _ = call(
        http_event("GET", f"/tasks/{task['task_id']}/logs", query={"limit": "3", "next_token": first["next_token"]})
    )
    assert [e["message"] for e in second["events"]] == ["line 3", "line 4"]


def test_usage_reports_metered_tasks_per_day(stack):
    status, body, _ = call(load_event("api/get_usage.json"))
    assert status == 200 and body["totals"]["tasks"] == 0 and body["from"] == "2026-11-01"
    task, _ = submit()
    finalize = load_function("finalize")
    invoke(finalize, load_event("finalize/completed.json", **{"01JDQ5ZC8W0000000000000000": task["task_id"]}))
    status, body, _ = call(http_event("GET", "/usage", query={"from": "2026-11-27", "to": "2026-11-27"}))
    assert status == 200
    assert body["totals"]["tasks"] == 1 and body["totals"]["billed_seconds"] == 60  # 18.8 s of pull-to-stop
    assert body["days"][0]["date"] == "2026-11-27"
    status, body, _ = call(http_event("GET", "/usage", query={"from": "2026-12-01", "to": "2026-11-01"}))
    assert status == 422 and body["error"]["details"][0]["field"] == "to"
    status, body, _ = call(http_event("GET", "/usage", query={"from": "yesterday"}))
    assert status == 422 and body["error"]["details"][0]["field"] == "from"


def test_same_idempotency_key_and_body_returns_the_same_task_and_a_different_body_is_409(stack):
    first, _ = submit(headers={"Idempotency-Key": "k-1"})
    again, _ = submit(headers={"Idempotency-Key": "k-1"})
    assert again["task_id"] == first["task_id"]
    assert len(executions(stack)) == 1
    status, body, _ = call(http_event("POST", "/tasks", body={"image": "alpine"}, headers={"Idempotency-Key": "k-1"}))
    assert status == 409 and body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    other, _ = submit(headers={"Idempotency-Key": "k-2"})
    assert other["task_id"] != first["task_id"]
    status, sample, _ = call(load_event("api/post_task_idempotent.json"))
    assert status == 202


def test_openapi_document_and_swagger_ui(stack):
    status, doc, headers = call(load_event("api/get_openapi.json"))
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/tasks", "/tasks/{task_id}", "/tasks/{task_id}/cancel", "/tasks/{task_id}/logs", "/usage"} <= set(
        doc["paths"]
    )
    schema = doc["components"]["schemas"]["TaskSpec"]
    assert {"image", "cpu", "memory", "timeout_seconds"} <= set(schema["properties"])
    status, html, headers = call(load_event("api/get_docs.json"))
    assert status == 200 and "swagger" in html.lower()


def test_unknown_route_is_404_in_the_error_shape(stack):
    status, body, _ = call(http_event("GET", "/nope"))
    assert status == 404 and body["error"]["code"] == "ROUTE_NOT_FOUND"
