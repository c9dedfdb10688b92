"""Container mode of the local Fargate agent, over HTTP: each task runs as a container of its image through the
project's engine, with its limits, exit code, logs and stop, isolated from the host and from the stack's endpoints,
and no container is left behind.

The stack runs as `taskrunner local up --agent-mode container` in its own process: the e2e session's in-process
stack (process mode) patches moto for the whole process, so a second one cannot run beside it. Skipped on a
developer machine without an engine; in CI (`CI=true`) a missing engine fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT
from taskrunner_local.containers import TASK_ARN_LABEL, stack_label
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from tests.support.engine import engine_or_skip
from tests.support.local_tasks import UP_BANNER_END, processes_with, read_banner, wait_until

STOP_TIMEOUT_SECONDS = 3
START_TIMEOUT_SECONDS = 120
#: set in the stack's own environment: a task must not see it
HOST_ONLY_VARIABLE = "TASKRUNNER_TEST_HOST_ONLY"


@dataclass(frozen=True)
class ContainerStack:
    api: TaskRunnerClient
    api_port: int
    aws_port: int
    engine: Engine
    #: every container of this stack carries it
    label: str
    banner: str

    def containers_of(self, ecs_task_arn: str) -> list[str]:
        """The containers of one task that are still there."""
        listed = self.engine.run(
            "ps", "-a", "-q", "--filter", f"label={self.label}", "--filter", f"label={TASK_ARN_LABEL}={ecs_task_arn}"
        )
        assert listed.returncode == 0, listed.stderr
        return listed.stdout.split()


def up_in_container_mode(api_port: int, aws_port: int) -> list[str]:
    """`taskrunner local up --agent-mode container` on these ports."""
    ports = ["--api-port", str(api_port), "--aws-port", str(aws_port)]
    return [sys.executable, "-m", "taskrunner_local", "up", "--agent-mode", "container", *ports]


@pytest.fixture(scope="module")
def container_stack() -> Iterator[ContainerStack]:
    engine = engine_or_skip(BUSYBOX_IMAGE, PYTHON_IMAGE)
    stack_name = f"taskrunner-e2e-containers-{uuid.uuid4().hex[:8]}"
    api_port, aws_port = free_port(), free_port()
    env = {
        **os.environ,
        "TASKRUNNER_QUIET": "1",
        "PYTHONUNBUFFERED": "1",
        "TASKRUNNER_STACK_NAME": stack_name,
        "TASKRUNNER_STOP_TIMEOUT": str(STOP_TIMEOUT_SECONDS),
        HOST_ONLY_VARIABLE: "leaked",
    }
    process = subprocess.Popen(
        up_in_container_mode(api_port, aws_port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    label = stack_label(stack_name)
    output: list[str] = []
    try:
        output = read_banner(process, timeout=START_TIMEOUT_SECONDS)
        banner = "".join(output)
        assert UP_BANNER_END in banner, banner
        yield ContainerStack(
            TaskRunnerClient(f"http://127.0.0.1:{api_port}"), api_port, aws_port, engine, label, banner
        )
    finally:
        process.send_signal(signal.SIGINT)
        remaining, _ = process.communicate(timeout=120)
    # Then the stack stopped cleanly and no container of it is left, whatever its tasks did
    assert process.returncode == 0, "".join(output) + remaining
    listed = engine.run("ps", "-a", "-q", "--filter", f"label={label}")
    assert (listed.returncode, listed.stdout.split()) == (0, [])


def python(code: str, **spec: object) -> dict[str, object]:
    return {"image": PYTHON_IMAGE, "command": ["python3", "-c", code], **spec}


def busybox(script: str, **spec: object) -> dict[str, object]:
    return {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", script], **spec}


def test_the_banner_says_tasks_run_as_containers(container_stack: ContainerStack) -> None:
    # Then
    assert "Tasks run as   containers (container mode" in container_stack.banner
    assert f'"image":"{PYTHON_IMAGE}"' in container_stack.banner


def test_a_task_succeeds_with_its_output_in_the_logs_and_its_container_removed(
    container_stack: ContainerStack,
) -> None:
    # Given
    api = container_stack.api
    # When
    task = api.wait(api.submit(busybox("echo hello from a container; echo on stderr >&2"))["task_id"])
    # Then
    assert (task["status"], task["exit_code"], task["stop_code"]) == ("SUCCEEDED", 0, "EssentialContainerExited")
    assert sorted(api.logs(task["task_id"])) == ["hello from a container", "on stderr"]
    assert task["metering"]["billed_seconds"] == 60
    assert container_stack.containers_of(task["ecs_task_arn"]) == []


def test_the_image_cmd_runs_when_the_task_has_no_command(container_stack: ContainerStack) -> None:
    # Given the busybox image, whose CMD is a shell reading an empty stdin
    api = container_stack.api
    # When
    task = api.wait(api.submit({"image": BUSYBOX_IMAGE})["task_id"])
    # Then
    assert (task["status"], task["exit_code"]) == ("SUCCEEDED", 0)


def test_a_non_zero_exit_is_failed_with_that_exit_code(container_stack: ContainerStack) -> None:
    # When
    api = container_stack.api
    task = api.wait(api.submit(busybox("echo failing >&2; exit 3"))["task_id"])
    # Then
    assert (task["status"], task["exit_code"], task["stop_code"]) == ("FAILED", 3, "EssentialContainerExited")
    assert api.logs(task["task_id"]) == ["failing"]


def test_a_command_not_in_the_image_fails_to_start(container_stack: ContainerStack) -> None:
    # When
    api = container_stack.api
    task = api.wait(api.submit({"image": BUSYBOX_IMAGE, "command": ["/no/such/program"]})["task_id"])
    # Then
    assert (task["status"], task["stop_code"]) == ("FAILED", "TaskFailedToStart")
    assert task["status_reason"].startswith("CannotStartContainerError"), task["status_reason"]


def test_a_task_that_exceeds_its_memory_is_killed_with_137_and_out_of_memory(
    container_stack: ContainerStack,
) -> None:
    # Given 512 MiB, When the task writes 700 MB
    api = container_stack.api
    task = api.wait(api.submit(python("b = b'x' * (700 * 1024 * 1024)", memory=512))["task_id"], timeout=60)
    # Then
    assert (task["status"], task["exit_code"]) == ("FAILED", 137)
    assert task["status_reason"].startswith("OutOfMemoryError"), task["status_reason"]


def test_a_cancelled_task_stops_within_its_stop_timeout(container_stack: ContainerStack) -> None:
    # Given a running task
    api = container_stack.api
    task_id = api.submit(busybox("echo started; sleep 300"))["task_id"]
    api.wait(task_id, {"RUNNING"})
    # When
    cancelled_at = time.monotonic()
    response = api.cancel(task_id)
    task = api.wait(task_id, timeout=30)
    # Then: PID 1 ignores SIGTERM it has no handler for, so the engine kills it once the stop timeout runs out
    assert response.status_code == 202
    assert (task["status"], task["stop_code"]) == ("CANCELLED", "UserInitiated")
    assert task["exit_code"] in (137, 143)
    assert time.monotonic() - cancelled_at < STOP_TIMEOUT_SECONDS + 10
    assert container_stack.containers_of(task["ecs_task_arn"]) == []


def test_a_task_past_its_timeout_is_timed_out_and_its_container_removed(container_stack: ContainerStack) -> None:
    # When
    api = container_stack.api
    task = api.wait(api.submit(busybox("sleep 300", timeout_seconds=2))["task_id"], timeout=60)
    # Then
    assert (task["status"], task["stop_code"]) == ("TIMED_OUT", "UserInitiated")
    assert container_stack.containers_of(task["ecs_task_arn"]) == []


def test_an_image_not_in_the_store_cannot_be_pulled_offline(container_stack: ContainerStack) -> None:
    # When
    api = container_stack.api
    task = api.wait(api.submit({"image": "docker.io/library/alpine:3.19", "command": ["true"]})["task_id"])
    # Then
    assert (task["status"], task["stop_code"]) == ("FAILED", "TaskFailedToStart")
    assert task["status_reason"].startswith("CannotPullContainerError"), task["status_reason"]


def test_a_task_cannot_reach_the_stacks_endpoints_nor_see_the_hosts_processes_or_environment(
    container_stack: ContainerStack,
) -> None:
    # Given a task that connects to the stack's API and AWS ports on the host's loopback
    code = f"""
import os, socket
for host in ("127.0.0.1", "10.0.2.2"):
    for port in ({container_stack.api_port}, {container_stack.aws_port}):
        try:
            socket.create_connection((host, port), timeout=3).close()
            print("reached", host, port)
        except OSError:
            print("isolated", host, port)
print("pid1", open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode())
print("host-only", os.environ.get("{HOST_ONLY_VARIABLE}"))
"""
    api = container_stack.api
    # When
    task = api.wait(api.submit(python(code, environment={"MINE": "1"}))["task_id"])
    # Then
    assert task["status"] == "SUCCEEDED", task["status_reason"]
    lines = api.logs(task["task_id"])
    assert [line for line in lines if line.startswith("reached")] == []
    assert len([line for line in lines if line.startswith("isolated")]) == 4
    assert "pid1 python3" in lines  # the container's own process, not the host's init
    assert "host-only None" in lines


def test_a_daemon_does_not_keep_the_task_running(container_stack: ContainerStack) -> None:
    # When
    api = container_stack.api
    started = time.monotonic()
    task = api.wait(api.submit(busybox("setsid sleep 1007 & echo started"))["task_id"], timeout=60)
    # Then
    assert (task["status"], task["exit_code"]) == ("SUCCEEDED", 0)
    assert time.monotonic() - started < 30
    assert processes_with("sleep\x001007") == []  # it died with the container's PID 1
    assert wait_until(lambda: container_stack.containers_of(task["ecs_task_arn"]) == [])


def test_container_mode_without_an_engine_refuses_to_start() -> None:
    # Given no engine on the PATH
    env = {**os.environ, "PATH": "/nonexistent", "TASKRUNNER_QUIET": "1"}
    # When
    done = subprocess.run(
        up_in_container_mode(free_port(), free_port()),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then it says why, and does not fall back to process mode
    assert done.returncode != 0
    assert "container mode needs a container engine" in done.stderr, done.stdout + done.stderr
    assert "taskrunner is up" not in done.stdout
