"""The real SAM CLI runs this project's functions against the local stack: `sam local invoke`, `sam local
start-lambda` (warm containers, for the bulk of the sample events) and `sam local start-api`.

One `sam build` (for this host's architecture, reused while template, functions and layer are unchanged), Podman's
Docker API on a socket of this module's own, the Lambda base image (pulled, or built offline), and a relay from
SAM's bridge network to the session stack's AWS endpoint (`taskrunner_local.sam_local`). Skipped on a developer
machine without podman, SAM CLI or Python 3.13; in CI (`CI=true`) that fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from taskrunner.adapters import task_key

from taskrunner_local import sam_local
from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT
from taskrunner_local.engine import Engine
from taskrunner_local.images import ensure_lambda_base
from taskrunner_local.sam import SamApp
from taskrunner_local.stack import LocalStack
from tests.support.engine import require
from tests.support.local_tasks import shell
from tests.support.sample_events import TASK_ID

EVENTS = ROOT / "events"
#: each folder of events/ and the function whose events it holds (`functions/<folder>/` unless named here)
FOLDER_FUNCTIONS = {"ecs": "TaskEventsFunction"}
#: events that are no function's: the state machine's execution input (SAM CLI runs no state machine)
NOT_FUNCTION_EVENTS = {"statemachine"}
#: how long `sam local start-*` may take to serve, and one invocation may take (a cold container builds its image)
SERVE_SECONDS = 120.0
INVOKE_SECONDS = 120.0
#: the source template as it is (its default architecture, arm64), without a build
SOURCE = ["--template-file", str(ROOT / "template.yaml"), "--skip-pull-image"]


# ------------------------------------------------------------------------------------------------ what SAM runs


@dataclass(frozen=True)
class SamLocal:
    engine: Engine
    api: sam_local.DockerApi
    build: sam_local.SamBuild
    env_file: Path
    relay: sam_local.BridgeRelay

    def env(self) -> dict[str, str]:
        return sam_local.sam_env(self.api.docker_host)

    def run(self, command: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run a SAM CLI command against the Docker API: what it did, and how long it took."""
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=INVOKE_SECONDS, check=False
        )
        return done, time.monotonic() - started

    def invoke(self, function: str, event: Path) -> tuple[dict[str, Any], str, float]:
        """`sam local invoke`: the function's response, SAM's own output and how long it took."""
        done, took = self.run(sam_local.invoke_command(self.build, self.env_file, function, event))
        assert done.returncode == 0, f"sam local invoke {function} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
        # the response is the first line of stdout; the function's own log lines follow it
        first = done.stdout.strip().splitlines()[0]
        return json.loads(first), done.stderr, took


def function_of(folder: str, app: SamApp) -> str:
    if folder in FOLDER_FUNCTIONS:
        return FOLDER_FUNCTIONS[folder]
    [function] = [f.logical_id for f in app.functions() if f.code_dir.name == folder]
    return function


def sample_events() -> dict[str, str]:
    """Every sample event that is a function's (`folder/name.json`), and the function."""
    app = SamApp(ROOT / "template.yaml")
    return {
        str(path.relative_to(EVENTS)): function_of(path.parent.name, app)
        for path in sorted(EVENTS.glob("*/*.json"))
        if path.parent.name not in NOT_FUNCTION_EVENTS
    }


@pytest.fixture(scope="module")
def sam(stack: LocalStack) -> Iterator[SamLocal]:
    if stack.choice is None or stack.choice.mode != "container":
        pytest.skip("sam local runs with the container engine; the session stack runs in process mode")
    try:
        engine = sam_local.podman_engine()
        sam_local.check_architecture(sam_local.host_architecture())
        build = sam_local.sam_build(sam_local.host_architecture(), log=lambda _: None)
    except sam_local.SamLocalUnavailable as error:
        require(str(error))
    ensure_lambda_base(engine)
    workdir = Path(tempfile.mkdtemp(prefix="sam-local-"))
    api = sam_local.DockerApi(engine, socket_path=workdir / "docker.sock", workdir=workdir).start()
    env_file = workdir / "env.json"
    try:
        with sam_local.route_to_stack(engine, stack.aws_endpoint, stack.deployment.stack_name, env_file) as relay:
            yield SamLocal(engine, api, build, env_file, relay)
    finally:
        api.stop()
        leftovers = _sam_containers(engine)
        if leftovers:
            engine.run("rm", "-f", *leftovers)
    assert leftovers == [], f"sam local left containers {leftovers}"


def _sam_containers(engine: Engine) -> list[str]:
    """SAM CLI's containers (those of the Lambda base image or of the images it derives from it)."""
    listed = engine.run("ps", "-a", "--format", "{{.ID}} {{.Image}}")
    return [
        line.split()[0]
        for line in listed.stdout.splitlines()
        if re.search(r"samcli/lambda-python|lambda/python:3\.13", line)
    ]


def _serve(sam: SamLocal, action: str, port: int, ready: str) -> Iterator[subprocess.Popen[str]]:
    """`sam local start-lambda|start-api` on `port` until the module ends (SIGINT: SAM removes its containers)."""
    log = sam.api.workdir / f"{action}.log"
    command = [str(sam_local.SAM), "local", action, "--port", str(port), "--warm-containers", "LAZY"]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, *sam_local.local_args(sam.build, sam.env_file)],
            cwd=ROOT,
            env=sam.env(),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVE_SECONDS
        while ready not in log.read_text():
            assert process.poll() is None, f"sam local {action} exited: {log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"sam local {action} did not serve: {log.read_text()[-4000:]}"
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def lambda_client(sam: SamLocal) -> Iterator[Any]:
    """boto3's Lambda client against `sam local start-lambda`: warm containers, one per function."""
    port = free_port()
    for _ in _serve(sam, "start-lambda", port, "Running on http://"):
        yield boto3.client(
            "lambda",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(read_timeout=INVOKE_SECONDS, retries={"max_attempts": 0}),
        )


@pytest.fixture(scope="module")
def sam_api_url(sam: SamLocal) -> Iterator[str]:
    """`sam local start-api`: the HTTP API, served from the template's HttpApi events."""
    port = free_port()
    for _ in _serve(sam, "start-api", port, "Running on http://"):
        yield f"http://127.0.0.1:{port}"


def invoke_warm(lambda_client: Any, function: str, event: Path) -> Any:
    answer = lambda_client.invoke(FunctionName=function, Payload=event.read_bytes())
    # (SAM CLI's start-lambda answers a function's error with its payload, without the FunctionError field)
    return json.loads(answer["Payload"].read() or b"null")


# ------------------------------------------------------------------------------------------------ the events


def test_every_sample_event_has_a_function_of_the_template() -> None:
    # Given the events/ folders, When mapped to the template's functions
    events = sample_events()
    # Then every function has events, and every event file is a function's or the state machine's
    functions = {f.logical_id for f in SamApp(ROOT / "template.yaml").functions()}
    assert set(events.values()) == functions
    assert len(events) + len(list((EVENTS / "statemachine").glob("*.json"))) == len(list(EVENTS.glob("*/*.json")))


def _status_and_body(response: dict[str, Any]) -> tuple[int, Any]:
    body = response.get("body") or ""
    is_json = response.get("headers", {}).get("Content-Type", "").startswith("application/json")
    return response["statusCode"], json.loads(body) if is_json and body else body


#: the API's sample events in the order they run, each with the status it answers on the session stack (the
#: schedule `nightly` is deleted first, then created, used and deleted; TASK_ID names no task)
API_EVENTS = [
    ("get_openapi.json", 200),
    ("get_docs.json", 200),
    ("post_task.json", 202),
    ("post_task_idempotent.json", 202),
    ("post_task_invalid_memory.json", 422),
    ("post_task_malformed_json.json", 400),
    ("get_task.json", 404),
    ("list_tasks.json", 200),
    ("cancel_task.json", 404),
    ("get_task_logs.json", 404),
    ("get_usage.json", 200),
    ("delete_schedule.json", None),  # 204, or 404 where no earlier run left one
    ("post_schedule.json", 201),
    ("post_schedule_unix_cron.json", 422),  # a Unix cron expression: the rule says how to write it
    ("get_schedule.json", 200),
    ("list_schedules.json", 200),
    ("put_schedule.json", 200),
    ("run_schedule.json", 202),
    ("list_tasks_of_schedule.json", 200),
    ("delete_schedule.json", 204),
    ("post_task_unauthenticated.json", 401),  # no authorizer context: no caller
    ("post_tenant_not_admin.json", 403),  # a tenant's own key administers no tenant
    ("post_tenant.json", 201),
    ("list_tenants.json", 200),
    ("get_tenant.json", 200),
    ("put_tenant.json", 200),
    ("rotate_tenant_key.json", 201),
    ("revoke_tenant_key.json", 404),  # a key id acme never had
    ("get_usage_of_tenant.json", 200),
    ("disable_tenant.json", 200),
]


def test_the_api_sample_events_answer_on_warm_containers(lambda_client: Any) -> None:
    # Given sam local start-lambda, When every API event is invoked in turn
    answers: dict[str, list[tuple[int, Any]]] = {}
    for name, expected in API_EVENTS:
        status, body = _status_and_body(invoke_warm(lambda_client, "ApiFunction", EVENTS / "api" / name))
        answers.setdefault(name, []).append((status, body))
        # Then each answers as the API does
        if expected is None:
            assert status in (204, 404), (name, status, body)
        else:
            assert status == expected, (name, status, body)
    assert {name for name, _ in API_EVENTS} == {path.name for path in (EVENTS / "api").glob("*.json")}
    assert answers["get_openapi.json"][0][1]["openapi"].startswith("3.")
    assert "swagger-ui" in answers["get_docs.json"][0][1].lower()
    assert answers["post_task_invalid_memory.json"][0][1]["error"]["details"][0]["field"] == "memory"
    assert answers["post_task_malformed_json.json"][0][1]["error"]["code"] == "MALFORMED_JSON"
    submitted = answers["post_task.json"][0][1]
    assert submitted["status"] == "SUBMITTED" and submitted["execution_arn"]
    assert answers["get_task.json"][0][1]["error"]["code"] == "TASK_NOT_FOUND"
    assert answers["get_schedule.json"][0][1]["name"] == "nightly"
    assert answers["put_schedule.json"][0][1]["enabled"] is False
    run = answers["run_schedule.json"][0][1]
    listed = answers["list_tasks_of_schedule.json"][0][1]
    assert run["task_id"] in {task["task_id"] for task in listed["items"]}
    assert answers["post_task_unauthenticated.json"][0][1]["error"]["code"] == "UNAUTHENTICATED"
    assert answers["post_tenant_not_admin.json"][0][1]["error"]["code"] == "FORBIDDEN"
    created = answers["post_tenant.json"][0][1]
    assert created["name"] == "acme" and created["api_key"].startswith("trk_")
    assert answers["rotate_tenant_key.json"][0][1]["api_key"] != created["api_key"]
    assert answers["disable_tenant.json"][0][1]["enabled"] is False


#: the other functions' sample events, and what each returns: their TASK_ID names no task on the stack, so the
#: functions that act on one task raise TaskNotFound (Lambda's error shape, as the state machine sees it); the
#: schedule `nightly` is gone (the API events delete it); the template's own schedule submits a task
NOT_FOUND = {"errorType": "TaskNotFound", "errorMessage": f"task '{TASK_ID}' does not exist"}
FUNCTION_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("ecs/task_state_change_running.json", {"handled": False}),
    ("ecs/task_state_change_stopped.json", {"handled": False}),
    ("finalize/completed.json", NOT_FOUND),
    ("finalize/task_failed.json", NOT_FOUND),
    ("finalize/error.json", NOT_FOUND),
    ("finalize/not_started.json", NOT_FOUND),
    ("stop_task/timeout.json", NOT_FOUND),
    ("queue/wait.json", NOT_FOUND),
    ("reconcile/scheduled.json", {"examined": 0, "settled": 0, "error": 0, "truncated": False}),
    ("scheduled_submit/scheduled_run.json", {"errorType": "ScheduleNotFound"}),
    ("scheduled_submit/template_schedule_run.json", {"schedule": "example-nightly", "outcome": "STARTED"}),
    # the authorizer always authorizes; its context names no tenant for a key no tenant has, nor for Basic auth
    ("authorizer/unknown_key.json", {"isAuthorized": True}),
    ("authorizer/basic_scheme.json", {"isAuthorized": True}),
]


@pytest.mark.parametrize(("event", "expected"), FUNCTION_EVENTS, ids=[event for event, _ in FUNCTION_EVENTS])
def test_the_other_functions_sample_events_run_on_warm_containers(
    lambda_client: Any, event: str, expected: dict[str, Any]
) -> None:
    # When
    answer = invoke_warm(lambda_client, sample_events()[event], EVENTS / event)
    # Then
    assert {key: answer.get(key) for key in expected} == expected, answer


def test_every_function_event_is_checked() -> None:
    checked = {f"api/{name}" for name, _ in API_EVENTS} | {event for event, _ in FUNCTION_EVENTS}
    assert checked == set(sample_events())


# ------------------------------------------------------------------------------------------------ sam local invoke


def _offline_post_task(engine: Engine, into: Path) -> Path:
    """events/api/post_task.json, with its image replaced by the offline Python image where the event's own image
    (python:3.12-slim, from Docker Hub) is neither in the store nor pullable (no registry is reachable here)."""
    event = json.loads((EVENTS / "api" / "post_task.json").read_text())
    spec = json.loads(event["body"])
    if not engine.image_exists(f"docker.io/library/{spec['image']}") and not _registry_reachable():
        spec["image"] = shell("")["image"]
        event["body"] = json.dumps(spec)
    path = into / "post_task.json"
    path.write_text(json.dumps(event))
    return path


def _registry_reachable() -> bool:
    from taskrunner_local.images import registry_reachable

    return registry_reachable("registry-1.docker.io", timeout=3.0)


def test_sam_local_invoke_submits_a_task_that_succeeds_on_the_stack(
    sam: SamLocal, stack: LocalStack, api: TaskRunnerClient, tmp_path: Path
) -> None:
    # Given the sample submission (in an image this machine has)
    event = _offline_post_task(sam.engine, tmp_path)
    # When sam local invoke runs ApiFunction on it
    response, output, took = sam.invoke("ApiFunction", event)
    # Then the function answered 202 from its container, and the task runs to SUCCEEDED on the stack
    status, task = _status_and_body(response)
    assert status == 202, (task, output[-3000:])
    assert "Invoking app.lambda_handler (python3.13)" in output
    print(f"sam local invoke ApiFunction post_task: {took:.1f} s")
    finished = api.wait(task["task_id"], timeout=120)
    assert (finished["status"], finished["exit_code"]) == ("SUCCEEDED", 0), finished
    assert api.logs(task["task_id"]) == ["hi"]
    # and the task's record in DynamoDB, which the function wrote through the relay, says so too
    record = stack.client("dynamodb").get_item(
        TableName=stack.deployment.outputs["TasksTableName"], Key=task_key(task["task_id"]), ConsistentRead=True
    )["Item"]
    assert record["status"]["S"] == "SUCCEEDED", record


#: a true `sam local invoke` of every function (the API's submission has its own test above): one event each
INVOKED_EVENTS = [
    "api/post_task_invalid_memory.json",
    "ecs/task_state_change_running.json",
    "finalize/completed.json",
    "stop_task/timeout.json",
    "queue/wait.json",
    "reconcile/scheduled.json",
    "scheduled_submit/scheduled_run.json",
    "authorizer/basic_scheme.json",
]


def test_every_function_is_invoked_by_sam_local_invoke() -> None:
    assert {sample_events()[event] for event in INVOKED_EVENTS} == set(sample_events().values())


@pytest.mark.parametrize("event", INVOKED_EVENTS)
def test_sam_local_invoke_runs_a_sample_event(sam: SamLocal, event: str) -> None:
    # When
    function = sample_events()[event]
    response, output, took = sam.invoke(function, EVENTS / event)
    print(f"sam local invoke {function} {event}: {took:.1f} s")
    # Then it answers as on warm containers
    if function == "ApiFunction":
        status, body = _status_and_body(response)
        assert status == 422 and body["error"]["code"] == "VALIDATION_ERROR", body
    else:
        expected = dict(FUNCTION_EVENTS)[event]
        assert {key: response.get(key) for key in expected} == expected, (response, output[-3000:])


def test_the_template_default_arm64_is_refused_with_what_would_run_it(sam: SamLocal) -> None:
    # Given the template's default architecture, arm64, on this x86_64 host without binfmt_misc emulation
    if sam_local.can_run("arm64"):
        pytest.skip("this host runs arm64 binaries")
    # When sam local invoke runs the source template as it is
    done, took = sam.run(
        [str(sam_local.SAM), "local", "invoke", "ApiFunction", "-e", str(EVENTS / "api" / "get_openapi.json"), *SOURCE]
    )
    print(f"sam local invoke (arm64): {took:.1f} s, exit {done.returncode}")
    # Then it fails: it builds on the arm64 base image, which is neither in the store nor pullable here (and could
    # not run without emulation)
    assert done.returncode == 1, done.stdout
    assert "Error building docker image" in done.stderr and "python:3.13-arm64" in done.stderr, done.stderr[-3000:]
    # and the project's check says why, and what runs instead
    with pytest.raises(sam_local.SamLocalUnavailable, match="arm64 functions need emulation"):
        sam_local.check_architecture("arm64")


# ------------------------------------------------------------------------------------------------ sam local start-api


@pytest.mark.parametrize("gateway", ["sam local start-api", "the project gateway"])
def test_smoke_submit_get_logs(gateway: str, request: pytest.FixtureRequest, stack: LocalStack) -> None:
    # Given the API served by SAM CLI from the template, or by the local stack's own gateway
    url = request.getfixturevalue("sam_api_url") if gateway.startswith("sam") else stack.api_url
    # (SAM CLI's start-api runs the template's Lambda authorizer, which knows the stack's admin key: its digest is
    # in the deployed function's environment, which the --env-vars file hands on)
    client = TaskRunnerClient(url, timeout=INVOKE_SECONDS, api_key=stack.admin_key)
    marker = f"smoke through {gateway}"
    # When a task is submitted, read back and its logs fetched
    task_id = client.submit(shell(f"echo '{marker}'"))["task_id"]
    task = client.wait(task_id, timeout=120)
    # Then
    assert (task["status"], task["exit_code"]) == ("SUCCEEDED", 0), task
    assert client.logs(task_id) == [marker]
    assert client.http.get(f"{url}/tasks/{TASK_ID}", timeout=INVOKE_SECONDS).status_code == 404
    # and without a key, the route is refused
    assert requests.get(f"{url}/tasks/{TASK_ID}", timeout=INVOKE_SECONDS).status_code == 401


def test_a_task_cannot_reach_the_stack_through_the_relay_sams_functions_use(
    sam: SamLocal, api: TaskRunnerClient
) -> None:
    # Given the relay that lets SAM's function containers (on the engine's bridge) reach the stack's AWS endpoint
    target = (str(sam_local.default_bridge(sam.engine).gateway), sam.relay.port)
    # and the bridge up, as it is while a function runs (the host has its gateway address only then)
    bridged = sam.engine.run(
        "run", "-d", "--rm", "--network", "podman", "localhost/taskrunner/busybox:latest", "sleep", "120"
    )
    assert bridged.returncode == 0, bridged.stderr
    # When a task (a slirp4netns container, whose connections come from the host's own addresses) connects to it
    code = f"""
import socket
try:
    connection = socket.create_connection({target!r}, timeout=5)
    connection.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("answered" if connection.recv(1024) else "closed")
except OSError as error:
    print("unreachable", type(error).__name__)
"""
    try:
        task = api.wait(api.submit({**shell("true"), "command": ["python3", "-c", code]})["task_id"], timeout=120)
    finally:
        sam.engine.run("rm", "-f", "-t", "0", bridged.stdout.strip())
    # Then the relay closed it without an answer (or it never connected)
    assert task["status"] == "SUCCEEDED", task
    [line] = api.logs(task["task_id"])
    assert line.startswith(("closed", "unreachable")), line
