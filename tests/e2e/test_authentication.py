"""Authentication over real HTTP: every route but /openapi.json and /docs needs `Authorization: Bearer <api key>`,
and whatever a client sends instead is a 401 in the API's one error shape, never a 500; the admin key a durable
stack makes on its first start lives in its state folder (mode 0600), survives restarts, and is replaced when its
file is deleted or the folder reset.

The tenants' own keys (create, rotate, revoke, disable) are tests/e2e/test_tenants.py's."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from taskrunner_local.cli import free_port
from taskrunner_local.stack import LocalStack
from tests.support.child_process import ChildProcess
from tests.support.local_tasks import UP_BANNER_END, admin_key_in

pytestmark = [pytest.mark.e2e]

TIMEOUT = 30
START_TIMEOUT_SECONDS = 120.0
UNKNOWN_KEY = f"trk_abcdefghijkl_{'A' * 43}"
#: routes of every kind, each needing a key
ROUTES = [
    ("GET", "/tasks"),
    ("POST", "/tasks"),
    ("GET", "/tasks/01JDQ5ZC8W0000000000000000/logs"),
    ("GET", "/usage"),
    ("GET", "/schedules/nightly"),
    ("GET", "/tenants"),
    ("POST", "/tenants/acme/keys"),
]
#: what a client may send instead of a valid key: (case, the Authorization header's raw bytes, or None for none)
NOT_A_KEY: list[tuple[str, bytes | None]] = [
    ("no header", None),
    ("empty", b""),
    ("scheme alone", b"Bearer"),
    ("unknown key", f"Bearer {UNKNOWN_KEY}".encode()),
    ("malformed key", b"Bearer not-a-key"),
    ("Basic scheme", b"Basic dXNlcjpwYXNzd29yZA=="),
    ("not UTF-8", b"Bearer trk_\xff\xfe\xfd_\xc3\x28"),
    ("a 6,000-character key", b"Bearer trk_" + b"a" * 6000),
]


def raw_request(port: int, method: str, path: str, authorization: bytes | None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with the Authorization header exactly as given (bytes no client library would send);
    the status, headers and body of the answer."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", b"Content-Length: 0"]
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def assert_unauthenticated(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 401, (status, body[:500])
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)
    assert set(error) == {"error"} and error["error"]["code"] == "UNAUTHENTICATED", error
    assert error["error"]["message"], error


# ---------------------------------------------------------------------------------------------- the session stack


@pytest.mark.parametrize(("case", "authorization"), NOT_A_KEY, ids=[case for case, _ in NOT_A_KEY])
@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_a_request_without_a_valid_key_is_401_in_the_error_shape(
    stack: LocalStack, method: str, path: str, case: str, authorization: bytes | None
) -> None:
    # Given a route that needs a key, When a request comes without a valid one
    assert stack.gateway is not None
    status, headers, body = raw_request(stack.gateway.port, method, path, authorization)
    # Then it is 401 UNAUTHENTICATED in the one error shape, never a 5xx
    assert_unauthenticated(status, headers, body)
    assert stack.admin_key.encode() not in body


def test_a_key_with_a_nul_is_401_and_a_raw_nul_in_a_header_is_400(stack: LocalStack) -> None:
    assert stack.gateway is not None
    key = f"Bearer {UNKNOWN_KEY[:20]}\x00{UNKNOWN_KEY[21:]}"
    # A NUL byte is not allowed in an HTTP field value: the HTTP layer refuses the request, as any such header
    status, headers, body = raw_request(stack.gateway.port, "GET", "/tasks", key.encode())
    assert status == 400 and json.loads(body)["error"]["code"] == "BAD_REQUEST", body
    # Past the HTTP layer (a key with a NUL in it, as the gateway would hand it on), authorizer and function say 401
    environ = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/tasks",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_AUTHORIZATION": key,
        "CONTENT_LENGTH": "0",
    }
    status, headers, body = stack.gateway.handle(environ, "a-request-id")
    assert_unauthenticated(status, headers, body)


def test_the_refusal_never_echoes_the_key_it_was_given(stack: LocalStack) -> None:
    response = requests.get(f"{stack.api_url}/tasks", headers={"Authorization": f"Bearer {UNKNOWN_KEY}"}, timeout=30)
    assert response.status_code == 401
    assert UNKNOWN_KEY not in response.text and UNKNOWN_KEY[4:16] not in response.text


def test_the_admin_key_is_accepted_on_every_kind_of_route(stack: LocalStack, http: requests.Session) -> None:
    for path in ("/tasks", "/usage", "/schedules", "/tenants"):
        response = http.get(f"{stack.api_url}{path}", timeout=TIMEOUT)
        assert response.status_code == 200, (path, response.text[:500])


@pytest.mark.parametrize("authorization", [None, f"Bearer {UNKNOWN_KEY}", "Basic dXNlcjpwYXNzd29yZA=="])
def test_openapi_and_docs_need_no_key(stack: LocalStack, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    document = requests.get(f"{stack.api_url}/openapi.json", headers=headers, timeout=TIMEOUT)
    assert document.status_code == 200 and "/tasks" in document.json()["paths"]
    assert requests.get(f"{stack.api_url}/docs", headers=headers, timeout=TIMEOUT).status_code == 200


# ---------------------------------------------------------------------------------------------- the admin key


class UpProcess(ChildProcess):
    """`taskrunner local up` on a state folder, in process mode (these tests run no task)."""

    def __init__(self, state_dir: Path) -> None:
        self.api_port = free_port()
        env = {
            "TASKRUNNER_STATE_DIR": str(state_dir),
            "TASKRUNNER_EPHEMERAL": "0",
            "TASKRUNNER_STACK_NAME": "auth-e2e",
            "TASKRUNNER_API_PORT": str(self.api_port),
            "TASKRUNNER_AWS_PORT": str(free_port()),
            "TASKRUNNER_REGISTRY_PORT": str(free_port()),
            "TASKRUNNER_AGENT_MODE": "process",
            "TASKRUNNER_QUIET": "1",
        }
        super().__init__("taskrunner_local", "local", "up", env=env, new_session=True)

    @property
    def banner(self) -> str:
        return "\n".join(self.output)

    def status_with(self, key: str) -> int:
        """What GET /tasks answers with this key."""
        url = f"http://127.0.0.1:{self.api_port}/tasks"
        return requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT).status_code

    def ctrl_c(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=120)


@dataclass
class Stacks:
    """The runs of one durable stack on one state folder, one after the other (a failed test's are killed)."""

    state_dir: Path
    started: list[UpProcess] = field(default_factory=list)

    def start(self) -> UpProcess:
        up = UpProcess(self.state_dir)
        self.started.append(up)
        up.wait_for(UP_BANNER_END, START_TIMEOUT_SECONDS)
        return up


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[Stacks]:
    runs = Stacks(tmp_path / "state")
    yield runs
    for up in runs.started:
        if up.process.poll() is None:
            os.killpg(up.process.pid, signal.SIGKILL)
            up.process.wait(timeout=30)


def test_the_admin_key_is_made_once_kept_across_restarts_and_replaced_when_its_file_is_deleted(stacks: Stacks) -> None:
    state_dir = stacks.state_dir
    # Given a first start on a new state folder
    first = stacks.start()
    key, key_file = admin_key_in(first.banner)
    # Then the banner shows the key, and the folder keeps it for its owner alone
    assert key_file == state_dir / "admin.key"
    assert key_file.read_text() == f"{key}\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.status_with(key) == 200
    first.ctrl_c()

    # When the stack starts again on the folder
    second = stacks.start()
    # Then the same key works, and the stack was restored as it was (the key's digest is a deployment parameter)
    assert admin_key_in(second.banner)[0] == key
    assert second.status_with(key) == 200
    assert "restored (template unchanged)" in second.banner
    second.ctrl_c()

    # When admin.key is deleted and the stack starts again
    key_file.unlink()
    third = stacks.start()
    # Then a new key was made and deployed: it works, the old one does not, and the banner says why
    new_key, _ = admin_key_in(third.banner)
    assert new_key != key
    assert key_file.read_text() == f"{new_key}\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "admin.key was missing: a new admin key was made, and the previous one no longer works" in third.banner
    assert "updated: the template or its parameters changed" in third.banner
    assert third.status_with(new_key) == 200
    assert third.status_with(key) == 401
    third.ctrl_c()


def test_reset_forgets_the_admin_key_with_the_state(stacks: Stacks) -> None:
    state_dir = stacks.state_dir
    # Given a stack that made its key, stopped
    first = stacks.start()
    key, key_file = admin_key_in(first.banner)
    first.ctrl_c()
    # When the folder is reset
    reset = ChildProcess(
        "taskrunner_local", "local", "reset", env={"TASKRUNNER_STATE_DIR": str(state_dir), "TASKRUNNER_EPHEMERAL": "0"}
    )
    assert reset.process.wait(timeout=60) == 0 and reset.read_to_end(timeout=10), reset.output
    assert "admin.key" in reset.output[-1] and not key_file.exists()
    # Then the next start makes a new key, and the old one is refused
    second = stacks.start()
    new_key, _ = admin_key_in(second.banner)
    assert new_key != key
    assert second.status_with(key) == 401 and second.status_with(new_key) == 200
    second.ctrl_c()


def test_a_key_file_others_could_read_is_replaced_by_a_new_key_of_the_owners_alone(stacks: Stacks) -> None:
    # Given a folder whose admin.key was made readable by everyone (the key may have leaked)
    first = stacks.start()
    key, key_file = admin_key_in(first.banner)
    first.ctrl_c()
    key_file.chmod(0o644)
    # When the stack starts again
    second = stacks.start()
    # Then a new key replaced it, in a file of its owner's alone, the banner says so, and the old key is refused
    new_key = admin_key_in(second.banner)[0]
    assert new_key != key and new_key.startswith("trk_")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "could be read by other users: a new admin key replaced it" in second.banner
    assert second.status_with(key) == 401 and second.status_with(new_key) == 200
    second.ctrl_c()
