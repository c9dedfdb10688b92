"""The local HTTP gateway against hostile clients and load.

Most tests run a Gateway wired to a small fake runtime (fast, no stack) and talk to it over raw sockets, each
with a timeout so that a hang fails the test instead of stalling it. The last one bursts submissions at the
real local stack."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from taskrunner_local import gateway as gateway_module
from taskrunner_local.cli import _check_port
from taskrunner_local.client import TERMINAL, TaskRunnerClient
from taskrunner_local.gateway import Gateway
from taskrunner_local.images import PYTHON_IMAGE
from taskrunner_local.runtime import Invocation
from taskrunner_local.sam import HttpRoute
from taskrunner_local.stack import LocalStack

HOST = "127.0.0.1"
READ_TIMEOUT = 3.0  # the gateway's under test; the default is gateway_module.READ_TIMEOUT_SECONDS
MAX_BODY = 1024 * 1024

ROUTES = [
    HttpRoute("POST", "/tasks", "Echo"),
    HttpRoute("GET", "/tasks", "Echo"),
    HttpRoute("GET", "/tasks/{task_id}", "Echo"),
    HttpRoute("GET", "/tasks/new", "Literal"),
    HttpRoute("ANY", "/any", "Echo"),
    HttpRoute("GET", "/crash", "Crash"),
]


class EchoRuntime:
    """Stands in for LambdaRuntime: answers with the event it got, so tests can see what the function saw."""

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, function: str, event: Any) -> Invocation:
        self.calls += 1
        if function == "Crash":
            return Invocation(error={"errorType": "RuntimeError", "errorMessage": "boom"})
        return Invocation(result={"statusCode": 200, "headers": {"x-function": function}, "body": json.dumps(event)})


def start_gateway(port: int = 0) -> Gateway:
    gateway = Gateway(
        ROUTES,
        EchoRuntime(),  # type: ignore[arg-type]
        host=HOST,
        port=port,
        max_request_bytes=MAX_BODY,
        read_timeout=READ_TIMEOUT,
    )
    gateway.start()
    return gateway


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    gateway = start_gateway()
    yield gateway
    gateway.stop()


@dataclass
class Reply:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, data: bytes, *, timeout: float = 10.0, head: bool = False) -> Reply:
    """Send raw bytes, read one response (or the close); fail on a hang by the socket timeout."""
    started = time.monotonic()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_reply(sock, started, head=head)


def read_reply(sock: socket.socket, started: float, *, head: bool = False) -> Reply:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return Reply(None, seconds=time.monotonic() - started)
        buffer += chunk
    head_block, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head_block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Reply(int(status_line.split(" ")[1]), headers, rest[:length], time.monotonic() - started)


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert set(body) == {"error"}


def request(method: str, target: str, *headers: str, body: bytes = b"", close: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------------------------- load


def test_500_clients_connecting_at_once_all_get_an_answer_and_none_is_reset(gw: Gateway) -> None:
    clients = 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * clients:  # both ends live in this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * clients, hard), hard))

    async def burst() -> tuple[list[int | None], list[str], float]:
        go = asyncio.Event()
        connected = 0
        all_connected = asyncio.Event()

        async def one(i: int) -> tuple[int | None, float]:
            nonlocal connected
            reader, writer = await asyncio.open_connection(HOST, gw.port)
            connected += 1
            if connected == clients:
                all_connected.set()
            await go.wait()
            started = time.monotonic()
            writer.write(request("GET", f"/tasks/t{i}"))
            await writer.drain()
            data = await reader.read()  # to the server's close
            writer.close()
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
            return status, time.monotonic() - started

        tasks = [asyncio.create_task(one(i)) for i in range(clients)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_connected.wait(), 30)
        go.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        statuses, failures, slowest = [], [], 0.0
        for outcome in done:
            if isinstance(outcome, BaseException):
                failures.append(repr(outcome))
            else:
                statuses.append(outcome[0])
                slowest = max(slowest, outcome[1])
        return statuses, failures, slowest

    statuses, failures, slowest = asyncio.run(burst())
    print(f"500 clients: {statuses.count(200)} answered 200, failures {failures[:3]}, slowest {slowest:.2f} s")
    assert failures == []  # no ECONNRESET, no refused connection
    assert statuses == [200] * clients
    assert slowest < 30


# ---------------------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("content-length abc", request("POST", "/tasks", "Content-Length: abc", body=b"{}"), 400, "BAD_REQUEST"),
        ("content-length -1", request("POST", "/tasks", "Content-Length: -1", body=b"{}"), 400, "BAD_REQUEST"),
        (
            "two content-lengths",
            request("POST", "/tasks", "Content-Length: 2", "Content-Length: 3"),
            400,
            "BAD_REQUEST",
        ),
        ("header without colon", request("GET", "/tasks", "Broken header"), 400, "BAD_REQUEST"),
        ("lower-case method", request("get", "/tasks"), 400, "BAD_REQUEST"),
        ("HTTP/0.9 line", b"GET /tasks\r\n", 400, "BAD_REQUEST"),
        ("HTTP/2.0 line", b"GET /tasks HTTP/2.0\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
        ("not HTTP at all (TLS)", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "BAD_REQUEST"),
        ("URI too long", request("GET", "/tasks/" + "a" * 20_000), 414, "URI_TOO_LONG"),
        ("URI too long, line unfinished", b"GET /tasks/" + b"a" * 20_000, 414, "URI_TOO_LONG"),
        ("headers too large", request("GET", "/tasks", "X-Big: " + "a" * 20_000), 431, "HEADERS_TOO_LARGE"),
        (
            "many headers",
            request("GET", "/tasks", *[f"X-H{i}: {'v' * 50}" for i in range(400)]),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            "body too large, announced",
            request("POST", "/tasks", f"Content-Length: {MAX_BODY + 1}"),
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        ("unknown path", request("GET", "/nope"), 404, "ROUTE_NOT_FOUND"),
        ("unknown path, HEAD", request("HEAD", "/nope"), 404, "ROUTE_NOT_FOUND"),
    ],
)
def test_a_malformed_request_gets_a_prompt_json_error(
    gw: Gateway, name: str, data: bytes, status: int, code: str
) -> None:
    reply = exchange(gw.port, data, timeout=5, head=data.startswith(b"HEAD"))
    assert reply.seconds < 2, f"{name}: answered after {reply.seconds:.1f} s"
    if data.startswith(b"HEAD"):
        assert reply.status == status and reply.body == b""
        return
    assert_error(reply, status, code)


@pytest.mark.parametrize("method", ["TRACE", "PATCH", "DELETE", "OPTIONS", "HEAD", "BREW"])
def test_a_method_the_path_does_not_serve_is_405_with_allow(gw: Gateway, method: str) -> None:
    reply = exchange(gw.port, request(method, "/tasks"), timeout=5, head=method == "HEAD")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, POST"
    assert reply.headers["content-type"] == "application/json"
    if method != "HEAD":
        assert_error(reply, 405, "METHOD_NOT_ALLOWED")
    else:
        assert reply.body == b"" and int(reply.headers["content-length"]) > 0


def test_an_oversized_body_is_413_even_while_the_client_is_still_sending(gw: Gateway) -> None:
    response = requests.post(f"http://{HOST}:{gw.port}/tasks", data=b"x" * (MAX_BODY + 1), timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert requests.post(f"http://{HOST}:{gw.port}/tasks", data=b"x" * MAX_BODY, timeout=10).status_code == 200


def test_an_oversized_chunked_body_is_413(gw: Gateway) -> None:
    chunk = b"x" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (MAX_BODY // len(chunk) + 1) + b"0\r\n\r\n"
    reply = exchange(gw.port, request("POST", "/tasks", "Transfer-Encoding: chunked", body=body), timeout=5)
    assert_error(reply, 413, "PAYLOAD_TOO_LARGE")


def test_a_transfer_encoding_other_than_chunked_is_400_not_501(gw: Gateway) -> None:
    reply = exchange(gw.port, request("POST", "/tasks", "Transfer-Encoding: gzip", body=b"abc"), timeout=5)
    assert_error(reply, 400, "UNSUPPORTED_TRANSFER_ENCODING")


def test_a_body_shorter_than_its_content_length_is_408_in_bounded_time_and_others_are_served_meanwhile(
    gw: Gateway,
) -> None:
    started = time.monotonic()
    with socket.create_connection((HOST, gw.port), timeout=READ_TIMEOUT + 5) as stalled:
        stalled.sendall(request("POST", "/tasks", "Content-Length: 100", "Content-Type: application/json", body=b"{"))
        # while it waits, other clients are served at once
        for _ in range(5):
            other = exchange(gw.port, request("GET", "/tasks"), timeout=2)
            assert other.status == 200 and other.seconds < 1
        reply = read_reply(stalled, started)
    assert_error(reply, 408, "REQUEST_TIMEOUT")
    assert READ_TIMEOUT <= reply.seconds < READ_TIMEOUT + 3


def test_headers_that_never_finish_are_408_in_bounded_time(gw: Gateway) -> None:
    reply = exchange(gw.port, b"GET /tasks HTTP/1.1\r\nHost: x\r\n", timeout=READ_TIMEOUT + 5)
    assert_error(reply, 408, "REQUEST_TIMEOUT")
    assert reply.seconds < READ_TIMEOUT + 3


def test_headers_trickled_byte_by_byte_do_not_hold_the_connection_past_the_read_timeout(gw: Gateway) -> None:
    started = time.monotonic()
    with socket.create_connection((HOST, gw.port), timeout=READ_TIMEOUT + 5) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close while we trickle
            for byte in b"GET /tasks HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                sock.send(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > READ_TIMEOUT + 2:
                    break
        reply = read_reply(sock, started)
    assert_error(reply, 408, "REQUEST_TIMEOUT")


def test_the_default_read_timeout_answers_a_stalled_client_within_10_to_30_seconds() -> None:
    assert 10 <= gateway_module.READ_TIMEOUT_SECONDS <= 30
    assert gateway_module.REQUEST_DEADLINE_SECONDS <= 120


def test_a_function_crash_is_the_only_500(gw: Gateway) -> None:
    assert_error(exchange(gw.port, request("GET", "/crash")), 500, "INTERNAL_ERROR")


# ---------------------------------------------------------------------------------------------- what works


def test_a_chunked_body_reaches_the_function(gw: Gateway) -> None:
    body = b'7\r\n{"a": 1\r\n4\r\n, "b\r\n5\r\n": 2}\r\n0\r\n\r\n'
    reply = exchange(
        gw.port,
        request("POST", "/tasks", "Transfer-Encoding: chunked", "Content-Type: application/json", body=body),
    )
    assert reply.status == 200
    event = reply.json()
    assert event["body"] == '{"a": 1, "b": 2}' and event["isBase64Encoded"] is False
    assert event["headers"]["content-length"] == "16"


def test_the_event_is_payload_format_2(gw: Gateway) -> None:
    reply = exchange(
        gw.port,
        request(
            "GET",
            "/tasks/a%20b?x=1&x=2&empty=",
            "User-Agent: hostile-test",
            "Cookie: a=1; b=2",
            "X-Forwarded-For: 10.0.0.1",
        ),
    )
    assert reply.status == 200 and reply.headers["x-function"] == "Echo"
    assert reply.headers["apigw-requestid"]
    event = reply.json()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /tasks/{task_id}"
    assert event["rawPath"] == "/tasks/a%20b" and event["rawQueryString"] == "x=1&x=2&empty="
    assert event["pathParameters"] == {"task_id": "a%20b"}
    assert event["queryStringParameters"] == {"x": "1,2", "empty": ""}
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"] == {
        "host": "localhost",
        "user-agent": "hostile-test",
        "x-forwarded-for": "10.0.0.1",
        "connection": "close",
    }
    assert event["body"] is None and event["isBase64Encoded"] is False
    http = event["requestContext"]["http"]
    assert http == {
        "method": "GET",
        "path": "/tasks/a%20b",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "hostile-test",
    }
    context = event["requestContext"]
    assert context["requestId"] == reply.headers["apigw-requestid"]
    assert context["routeKey"] == "GET /tasks/{task_id}" and context["stage"] == "$default"


def test_a_binary_body_is_base64(gw: Gateway) -> None:
    body = bytes(range(256))
    reply = exchange(
        gw.port,
        request("POST", "/tasks", "Content-Type: application/octet-stream", f"Content-Length: {len(body)}", body=body),
    )
    event = reply.json()
    assert event["isBase64Encoded"] is True
    assert event["headers"]["content-type"] == "application/octet-stream"


def test_literal_routes_win_over_templated_ones(gw: Gateway) -> None:
    assert exchange(gw.port, request("GET", "/tasks/new")).headers["x-function"] == "Literal"
    assert exchange(gw.port, request("GET", "/tasks/old")).headers["x-function"] == "Echo"


def test_head_has_no_body(gw: Gateway) -> None:
    with socket.create_connection((HOST, gw.port), timeout=5) as sock:
        sock.sendall(request("HEAD", "/any", close=False))
        reply = read_reply(sock, time.monotonic(), head=True)
        assert reply.status == 200 and int(reply.headers["content-length"]) > 0
        # the connection is still good: the next response starts right after the headers
        sock.sendall(request("GET", "/tasks/after-head"))
        after = read_reply(sock, time.monotonic())
    assert after.status == 200 and after.json()["pathParameters"] == {"task_id": "after-head"}


def test_keep_alive_serves_many_requests_on_one_connection(gw: Gateway) -> None:
    with socket.create_connection((HOST, gw.port), timeout=5) as sock:
        for i in range(20):
            sock.sendall(request("POST", "/tasks", f"Content-Length: {len(str(i))}", body=str(i).encode(), close=False))
            reply = read_reply(sock, time.monotonic())
            assert reply.status == 200 and reply.json()["body"] == str(i)


def test_blank_lines_before_a_request_are_allowed(gw: Gateway) -> None:
    with socket.create_connection((HOST, gw.port), timeout=5) as sock:
        sock.sendall(request("POST", "/tasks", "Content-Length: 2", body=b"{}", close=False) + b"\r\n")
        assert read_reply(sock, time.monotonic()).status == 200
        sock.sendall(b"\r\n" + request("GET", "/tasks/next"))
        assert read_reply(sock, time.monotonic()).status == 200


def test_the_server_answers_with_nodelay_and_a_deep_backlog(gw: Gateway) -> None:
    assert gw.server.adj.backlog >= 1024
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in gw.server.adj.socket_options
    assert gw.server.adj.threads >= 4


# ---------------------------------------------------------------------------------------------- restart


def _in_time_wait(port: int) -> bool:
    """A plain bind (no SO_REUSEADDR) fails while a connection of this port is in TIME_WAIT."""
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def test_a_stopped_gateway_can_start_again_at_once_on_its_port() -> None:
    first = start_gateway()
    port = first.port
    try:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(request("GET", "/tasks"))
            assert read_reply(sock, time.monotonic()).status == 200
            assert sock.recv(1) == b""  # the server closed first: its side of the connection is in TIME_WAIT
    finally:
        first.stop()
    assert _in_time_wait(port), "the test needs a connection in TIME_WAIT"
    _check_port(HOST, port, "TASKRUNNER_API_PORT")  # `taskrunner local up` would not refuse the port
    second = start_gateway(port)
    try:
        assert exchange(port, request("GET", "/tasks")).status == 200
        with pytest.raises(SystemExit):  # while it listens, the port is in use
            _check_port(HOST, port, "TASKRUNNER_API_PORT")
    finally:
        second.stop()


def test_stop_is_prompt_with_clients_connected() -> None:
    gateway = start_gateway()
    idle = socket.create_connection((HOST, gateway.port), timeout=5)
    stalled = socket.create_connection((HOST, gateway.port), timeout=5)
    stalled.sendall(b"POST /tasks HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    time.sleep(0.2)
    started = time.monotonic()
    gateway.stop()
    assert time.monotonic() - started < 3
    for sock in (idle, stalled):
        with contextlib.suppress(OSError):
            assert sock.recv(100) == b""
        sock.close()
    with pytest.raises(OSError):
        socket.create_connection((HOST, gateway.port), timeout=2).close()


# ---------------------------------------------------------------------------------------------- the stack


def test_a_burst_of_200_submissions_from_50_threads_is_all_accepted_run_and_metered(stack: LocalStack) -> None:
    url = f"{stack.api_url}/tasks"
    admin = {"Authorization": f"Bearer {stack.admin_key}"}
    spec = {"image": PYTHON_IMAGE, "command": ["sh", "-c", "true"]}
    started = time.monotonic()

    def submit(i: int) -> tuple[int, str, float]:
        # a fresh connection each time, as 50 independent clients would
        sent = time.monotonic()
        response = requests.post(url, json={**spec, "name": f"burst-{i}"}, headers=admin, timeout=180)
        return response.status_code, response.json().get("task_id", response.text), time.monotonic() - sent

    with ThreadPoolExecutor(50) as pool:
        submitted = list(pool.map(submit, range(200)))
    submit_seconds = time.monotonic() - started
    assert [status for status, _, _ in submitted] == [202] * 200, [s for s in submitted if s[0] != 202][:3]
    ids = [task_id for _, task_id, _ in submitted]
    slowest = max(seconds for _, _, seconds in submitted)
    assert len(set(ids)) == 200

    api = TaskRunnerClient(stack.api_url, timeout=60, api_key=stack.admin_key)
    deadline = time.monotonic() + 420
    tasks = []
    for task_id in ids:  # each wait returns at once for a task that has already finished
        tasks.append(api.wait(task_id, timeout=max(1.0, deadline - time.monotonic()), interval=0.5))
    statuses = {t["status"] for t in tasks}
    assert statuses <= TERMINAL
    ddb = stack.client("dynamodb")
    table = stack.deployment.outputs["TasksTableName"]
    wanted = set(ids)
    records = []
    for page in ddb.get_paginator("scan").paginate(TableName=table):  # a census, not a request path
        records += [i for i in page["Items"] if i["pk"]["S"].startswith("METER#") and i["task_id"]["S"] in wanted]
    assert len(records) == 200
    assert {r["task_id"]["S"] for r in records} == wanted
    print(
        f"burst: 200 accepted in {submit_seconds:.1f} s (slowest submission {slowest:.1f} s), all terminal after {time.monotonic() - started:.1f} s, "
        f"statuses {sorted(statuses)}"
    )


def test_the_stack_gateway_answers_gateway_errors_in_the_error_shape(stack: LocalStack) -> None:
    port = stack.gateway.port
    assert_error(exchange(port, request("TRACE", "/tasks")), 405, "METHOD_NOT_ALLOWED")
    assert_error(exchange(port, request("GET", "/nope")), 404, "ROUTE_NOT_FOUND")
    assert_error(exchange(port, request("POST", "/tasks", "Content-Length: abc")), 400, "BAD_REQUEST")
