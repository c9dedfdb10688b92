"""Hostile requests to the running local stack, over real HTTP: every answer is a 4xx in the one error shape,
none is a 5xx or a hang, and nothing a client sent leaves a task behind that never ends.

The function-level cases are in tests/integration/test_api_hostile_input.py and the HTTP-level ones (bad
framing, slow clients, 500 connections) in tests/e2e/test_gateway_hostile.py; this suite sends the API's
cases through the whole stack: gateway, Lambda runtime, handler, moto.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests

from taskrunner_local.client import TERMINAL, TaskRunnerClient
from taskrunner_local.images import BUSYBOX_IMAGE
from taskrunner_local.stack import LocalStack

TIMEOUT = 30


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def body_cases() -> list[tuple[str, bytes, str]]:
    return [
        ("not utf-8", b'{"image": "busy\xff\xfebox"}', "application/json"),
        ("xml", b"<task><image>busybox</image></task>", "application/xml"),
        ("octet-stream", b'{"image": "busybox"}', "application/octet-stream"),
        ("malformed multipart", b'{"image": "busybox"}', "multipart/form-data; boundary"),
        ("nested 1,000 deep", b'{"image": "busybox", "tags": ' + b"[" * 1000 + b"]" * 1000 + b"}", "application/json"),
        ("5,000-digit integer", b'{"image": "busybox", "cpu": ' + b"9" * 5000 + b"}", "application/json"),
        ("NaN", b'{"image": "busybox", "cpu": NaN}', "application/json"),
        ("truncated", b'{"image": "busybox"', "application/json"),
        ("NUL in command", json.dumps({"image": "busybox", "command": ["echo", "a\u0000b"]}).encode(), "text/plain"),
        ("NUL in environment", json.dumps({"image": "busybox", "environment": {"A": "\u0000"}}).encode(), ""),
        ("escape in name", json.dumps({"image": "busybox", "name": "\u001b[2J"}).encode(), "application/json"),
        ("control in tag", json.dumps({"image": "busybox", "tags": {"k": "\u0007"}}).encode(), "application/json"),
        ("empty command", b'{"image": "busybox", "command": []}', "application/json"),
        ("blank program", b'{"image": "busybox", "command": [""]}', "application/json"),
        ("aws: tag", b'{"image": "busybox", "tags": {"aws:owner": "x"}}', "application/json"),
        ("taskrunner: tag", b'{"image": "busybox", "tags": {"taskrunner:tenant": "x"}}', "application/json"),
        ("raw NUL byte", b'{"image": "busybox\x00"}', "application/json"),
        ("a JSON string", b'"busybox"', "application/json"),
        ("empty object", b"{}", "application/json"),
    ]


def query_cases() -> list[tuple[str, str, dict[str, str]]]:
    forged = [
        "eyJnc2kxcGsiOiAieCJ9",
        _token([1]),
        _token({"pk": {"S": "x"}, "sk": {"S": "x"}, "gsi1pk": {"S": "TENANT#x#TASKS"}, "gsi1sk": {"S": "x"}}),
        "%%%",
    ]
    cases = [("GET", "/tasks", {"next_token": t}) for t in forged]
    cases += [("GET", "/schedules", {"next_token": t}) for t in forged]
    cases += [
        ("GET", "/tasks", {"limit": "100000"}),
        ("GET", "/tasks", {"status": "DONE\u0000"}),
        ("GET", "/usage", {"from": "2026-13-45"}),
        ("GET", "/usage", {"from": "2026-11-28", "to": "2020-01-01"}),
    ]
    return cases


def assert_error_shape(response: requests.Response, statuses: set[int]) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
    return body


def task_count(http: requests.Session, api_url: str) -> int:
    count, token = 0, None
    while True:
        params = {"limit": "100", **({"next_token": token} if token else {})}
        page = http.get(f"{api_url}/tasks", params=params, timeout=TIMEOUT).json()
        count += len(page["items"])
        token = page["next_token"]
        if not token:
            return count


@pytest.mark.parametrize(("case", "raw", "content_type"), body_cases(), ids=[c[0] for c in body_cases()])
def test_a_hostile_body_is_a_4xx_and_creates_no_task(
    stack: LocalStack, http: requests.Session, case: str, raw: bytes, content_type: str
):
    # Given the tasks that exist
    before = task_count(http, stack.api_url)
    # When a hostile body is posted
    headers = {"content-type": content_type} if content_type else {}
    response = http.post(f"{stack.api_url}/tasks", data=raw, headers=headers, timeout=TIMEOUT)
    # Then it is refused in the one error shape, and no task was made of it
    assert_error_shape(response, {400, 415, 422})
    assert task_count(http, stack.api_url) == before


@pytest.mark.parametrize(("method", "path", "params"), query_cases())
def test_hostile_parameters_are_422(
    stack: LocalStack, http: requests.Session, method: str, path: str, params: dict[str, str]
):
    response = http.request(method, f"{stack.api_url}{path}", params=params, timeout=TIMEOUT)
    assert_error_shape(response, {422})


@pytest.mark.parametrize("task_id", ["does-not-exist-123", "a" * 1000, "%C3%BC", "%00", "01JDQ5ZC8W0000000000000000"])
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/logs"), ("POST", "/cancel")])
def test_any_id_that_names_no_task_is_404(
    stack: LocalStack, http: requests.Session, task_id: str, method: str, suffix: str
):
    response = http.request(method, f"{stack.api_url}/tasks/{task_id}{suffix}", timeout=TIMEOUT)
    body = assert_error_shape(response, {404})
    assert body["error"]["code"] == "TASK_NOT_FOUND"


@pytest.mark.parametrize("token", ["f/-100", "b/0", "b/99999999", "f/" + "9" * 80])
def test_forged_log_tokens_are_422(stack: LocalStack, http: requests.Session, api: TaskRunnerClient, token: str):
    task = api.submit({"image": BUSYBOX_IMAGE, "command": ["sh", "-c", "echo one; echo two"]})
    api.wait(task["task_id"])
    response = http.get(f"{stack.api_url}/tasks/{task['task_id']}/logs", params={"next_token": token}, timeout=TIMEOUT)
    assert_error_shape(response, {422})


@pytest.mark.parametrize("method", ["TRACE", "PATCH", "DELETE", "BREW"])
def test_methods_a_route_does_not_serve_are_405_with_allow(stack: LocalStack, http: requests.Session, method: str):
    response = http.request(method, f"{stack.api_url}/tasks", timeout=TIMEOUT)
    assert_error_shape(response, {405})
    assert response.headers["allow"] == "GET, POST"


def test_a_page_of_logs_stays_small_however_long_the_lines(
    stack: LocalStack, http: requests.Session, api: TaskRunnerClient
):
    # Given a task that printed 3 MB in 200 KB lines
    script = "i=0; while [ $i -lt 15 ]; do head -c 200000 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done"
    task = api.wait(api.submit({"image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]})["task_id"])
    assert task["status"] == "SUCCEEDED"
    # When its logs are read with the largest page size
    sizes, lines, token = [], 0, None
    while True:
        params = {"limit": "10000", **({"next_token": token} if token else {})}
        response = http.get(f"{stack.api_url}/tasks/{task['task_id']}/logs", params=params, timeout=TIMEOUT)
        page = response.json()
        sizes.append(len(response.content))
        lines += len(page["events"])
        token = page["next_token"]
        if not token or not page["events"]:
            break
    # Then every line arrives, in pages of about a megabyte, never one 3 MB response
    assert lines == 15
    assert max(sizes) < 1_200_000 and len(sizes) >= 3


def test_nothing_a_hostile_client_did_left_a_task_unfinished(
    stack: LocalStack, http: requests.Session, api: TaskRunnerClient
):
    # Given every task the suite made so far (the valid ones it submitted to reach the logs)
    deadline = time.monotonic() + 60
    while True:
        page = http.get(f"{stack.api_url}/tasks", params={"limit": "100"}, timeout=TIMEOUT).json()
        unfinished = [t for t in page["items"] if t["status"] not in TERMINAL or not t["metering"]]
        if not unfinished or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Then each is terminal and metered
    assert unfinished == []
