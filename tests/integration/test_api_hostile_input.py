"""What a hostile or careless client sends the API function: every answer is a 4xx in the one error shape.

Bodies that are not UTF-8 or not JSON, media types the API does not speak, JSON built to break parsers, forged
pagination and log tokens, ids of every shape, and specs that could never run. None may reach a 500.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.integration.conftest import invoke
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.task_logs import print_lines

api = load_function("api")


def call(event):
    response = invoke(api, event)
    return response["statusCode"], json.loads(response["body"]) if response["body"] else None


def post_raw(path, raw: bytes, content_type: str | None = "application/json"):
    event = http_event("POST", path, body="{}")
    event["body"] = base64.b64encode(raw).decode()
    event["isBase64Encoded"] = True
    if content_type is None:
        event["headers"].pop("content-type")
    else:
        event["headers"]["content-type"] = content_type
    return call(event)


def assert_error(status, body, expected_status, code):
    assert status == expected_status, body
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]


# ---------------------------------------------------------------------------------------------- bodies


def test_a_body_that_is_not_utf8_is_400(stack):
    # Given a JSON-looking body with bytes that are not UTF-8
    # When it is posted
    status, body = post_raw("/tasks", b'{"image": "busy\xff\xfebox"}')
    # Then the API says so, naming the offset
    assert_error(status, body, 400, "MALFORMED_BODY")
    assert "UTF-8" in body["error"]["message"]


@pytest.mark.parametrize(
    "content_type", ["application/xml", "application/octet-stream", "multipart/form-data; boundary", "image/png"]
)
def test_a_media_type_the_api_does_not_speak_is_415(stack, content_type):
    status, body = post_raw("/tasks", b'{"image": "busybox"}', content_type)
    assert_error(status, body, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "text/plain;charset=UTF-8", "application/x+json"],
)
def test_json_under_the_labels_clients_really_use_is_read(stack, content_type):
    status, body = post_raw("/tasks", b'{"image": "busybox"}', content_type)
    assert status == 202, body


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"image": "busybox", "tags": ' + b"[" * 1000 + b"]" * 1000 + b"}", "deeper"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "deeper"),
        (b'{"image": "busybox", "cpu": ' + b"9" * 5000 + b"}", "number is too long"),
        (b'{"image": "busybox", "cpu": NaN}', "NaN"),
        (b'{"image": "busybox"', "not valid JSON"),
    ],
)
def test_json_built_to_break_parsers_is_400(stack, raw, reason):
    status, body = post_raw("/tasks", raw)
    assert_error(status, body, 400, "MALFORMED_JSON")
    assert reason in body["error"]["message"]


def test_json_nested_within_the_limit_is_judged_by_the_rules(stack):
    status, body = post_raw("/tasks", b'{"image": "busybox", "tags": ' + b"[" * 30 + b"]" * 30 + b"}")
    assert_error(status, body, 422, "VALIDATION_ERROR")


def test_schedules_bodies_are_checked_the_same_way(stack):
    status, body = post_raw("/schedules", b"\xff", "application/json")
    assert_error(status, body, 400, "MALFORMED_BODY")
    event = http_event("PUT", "/schedules/nightly", body="{}", headers={"content-type": "application/xml"})
    assert_error(*call(event), 415, "UNSUPPORTED_MEDIA_TYPE")


# ---------------------------------------------------------------------------------------------- specs that cannot run


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"command": ["echo", "a\u0000b"]}, "command.1"),
        ({"command": ["echo\u001b[31m"]}, "command.0"),
        ({"environment": {"A": "x\u0000"}}, "environment.A"),
        ({"name": "nightly\u0000"}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"tags": {"team": "a\u0007"}}, "tags.team"),
        ({"tags": {"te\u0000am": "a"}}, "tags.te\u0000am"),
        ({"command": []}, "command"),
        ({"command": [""]}, "command"),
        ({"command": ["  "]}, "command"),
        ({"tags": {"aws:cost": "x"}}, "tags.aws:cost"),
        ({"tags": {"AWS:cost": "x"}}, "tags.AWS:cost"),
        ({"tags": {"taskrunner:task-id": "x"}}, "tags.taskrunner:task-id"),
    ],
)
def test_a_spec_that_could_never_run_is_422_naming_the_field(stack, spec, field):
    status, body = call(http_event("POST", "/tasks", body={"image": "busybox", **spec}))
    assert_error(status, body, 422, "VALIDATION_ERROR")
    assert [d["field"] for d in body["error"]["details"]] == [field]


def test_scripts_keep_their_tabs_and_newlines(stack):
    script = "set -e\n\techo one\r\necho two"
    status, task = call(http_event("POST", "/tasks", body={"image": "busybox", "command": ["sh", "-c", script, ""]}))
    assert status == 202 and task["spec"]["command"] == ["sh", "-c", script, ""]


# ---------------------------------------------------------------------------------------------- ids and tokens


@pytest.mark.parametrize("task_id", ["does-not-exist-123", "x", "a" * 300, "01JDQ5ZC8W000000000000000I", "..", "ü"])
@pytest.mark.parametrize("suffix", ["", "/logs", "/cancel"])
def test_any_path_segment_that_names_no_task_is_404(stack, task_id, suffix):
    method = "POST" if suffix == "/cancel" else "GET"
    status, body = call(http_event(method, f"/tasks/{task_id}{suffix}"))
    assert_error(status, body, 404, "TASK_NOT_FOUND")


def _token(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


FORGED_TOKENS = [
    "eyJnc2kxcGsiOiAieCJ9",  # {"gsi1pk": "x"}
    _token([1, 2]),
    _token("text"),
    _token({"gsi1pk": {"S": "TENANT#default#TASKS"}}),  # the partition, without the rest of the key
    _token({"pk": {"S": "x"}, "sk": {"S": "x"}, "gsi1pk": {"S": "TENANT#other#TASKS"}, "gsi1sk": {"S": "x"}}),
    _token({"pk": {"N": "1"}, "sk": {"S": "x"}, "gsi1pk": {"S": "TENANT#default#TASKS"}, "gsi1sk": {"S": "x"}}),
    _token({"pk": {"S": "x" * 3000}, "sk": {"S": "x"}, "gsi1pk": {"S": "TENANT#default#TASKS"}, "gsi1sk": {"S": "x"}}),
    _token({"pk": {"S": "x"}, "sk": {"S": "x"}, "gsi1pk": {"S": "TENANT#default#TASKS"}, "gsi1sk": {"S": ""}}),
    "!!!!",
    "e30",  # {}
]


@pytest.mark.parametrize("token", FORGED_TOKENS)
@pytest.mark.parametrize("path", ["/tasks", "/schedules"])
def test_a_forged_next_token_is_422(stack, path, token):
    status, body = call(http_event("GET", path, query={"next_token": token}))
    assert_error(status, body, 422, "VALIDATION_ERROR")
    assert body["error"]["details"][0]["field"] == "next_token"


def _task_with_logs(stack, lines: int) -> dict:
    status, task = call(http_event("POST", "/tasks", body={"image": "busybox"}))
    assert status == 202
    print_lines(stack, task["task_id"], lines)
    return task


@pytest.mark.parametrize("token", ["f/-100", "b/0", "b/99999999", "x", "f/" + "9" * 57, "f/" + "1" * 55 + "a"])
def test_a_forged_log_token_is_422(stack, token):
    task = _task_with_logs(stack, 3)
    status, body = call(http_event("GET", f"/tasks/{task['task_id']}/logs", query={"next_token": token}))
    assert_error(status, body, 422, "VALIDATION_ERROR")


def test_log_tokens_the_api_issued_still_page(stack):
    task = _task_with_logs(stack, 3)
    _, first = call(http_event("GET", f"/tasks/{task['task_id']}/logs", query={"limit": "2"}))
    status, second = call(
        http_event("GET", f"/tasks/{task['task_id']}/logs", query={"limit": "2", "next_token": first["next_token"]})
    )
    assert status == 200 and [e["message"] for e in second["events"]] == ["line 2"]


# ---------------------------------------------------------------------------------------------- the document


def test_the_openapi_document_declares_errors_in_the_one_shape(stack):
    status, document = call(http_event("GET", "/openapi.json"))
    assert status == 200
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ErrorResponse" in schemas
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"422", "500"} <= set(responses), (method, path)
            for status_code, response in responses.items():
                if int(status_code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status_code)
    cancel = document["paths"]["/tasks/{task_id}/cancel"]["post"]["responses"]
    assert {"202", "404", "409"} <= set(cancel)
    assert "content" not in document["paths"]["/schedules/{name}"]["delete"]["responses"]["204"]
    assert {"400", "409", "413", "415", "503"} <= set(document["paths"]["/tasks"]["post"]["responses"])
