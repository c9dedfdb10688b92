"""Container mode of the local Fargate agent, over HTTP: each task runs as a container of its image through the
project's engine, with its limits, exit code, logs and stop, isolated from the host and from the stack's endpoints,
and no container is left behind.

The stack runs as `taskrunner local up --agent-mode container` in its own process: the e2e session's in-process
stack (process mode) patches moto for the whole process, so a second one cannot run beside it. Skipped on a
developer machine without an engine; in CI (`CI=true`) a missing engine fails.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT, LocalConfig
from taskrunner_local.containers import TASK_ARN_LABEL, emulates, stack_label
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from tests.support.child_process import ChildProcess
from tests.support.engine import engine_or_skip
from tests.support.local_tasks import UP_BANNER_END, admin_key_in, processes_with, read_banner, wait_until

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
        api = TaskRunnerClient(f"http://127.0.0.1:{api_port}", api_key=admin_key_in(banner)[0])
        yield ContainerStack(api, api_port, aws_port, engine, label, banner)
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
    # Given a running task whose PID 1 is a shell with no handler for SIGTERM (no initProcessEnabled: no init)
    api = container_stack.api
    task_id = api.submit(busybox("echo started; sleep 300"))["task_id"]
    api.wait(task_id, {"RUNNING"})
    # When
    cancelled_at = time.monotonic()
    response = api.cancel(task_id)
    task = api.wait(task_id, timeout=30)
    elapsed = time.monotonic() - cancelled_at
    # Then, as on Fargate: PID 1 ignores the SIGTERM it has no handler for, so it is SIGKILLed (137) once the stop
    # timeout runs out, not before
    assert response.status_code == 202
    assert (task["status"], task["stop_code"]) == ("CANCELLED", "UserInitiated")
    assert task["exit_code"] == 137
    assert STOP_TIMEOUT_SECONDS - 0.5 < elapsed < STOP_TIMEOUT_SECONDS + 10
    assert container_stack.containers_of(task["ecs_task_arn"]) == []


def test_a_cancelled_task_that_handles_sigterm_exits_at_once(container_stack: ContainerStack) -> None:
    # Given a running task whose PID 1 traps SIGTERM
    api = container_stack.api
    task_id = api.submit(busybox("trap 'echo terminated; exit 143' TERM; echo started; while :; do sleep 0.1; done"))[
        "task_id"
    ]
    api.wait(task_id, {"RUNNING"})
    assert wait_until(lambda: api.logs(task_id) == ["started"], timeout=10)
    # When
    cancelled_at = time.monotonic()
    api.cancel(task_id)
    task = api.wait(task_id, timeout=30)
    # Then
    assert (task["status"], task["exit_code"]) == ("CANCELLED", 143)
    assert time.monotonic() - cancelled_at < STOP_TIMEOUT_SECONDS
    assert api.logs(task_id) == ["started", "terminated"]


def test_stdout_and_stderr_are_split_into_lines_each_on_its_own(container_stack: ContainerStack) -> None:
    # Given a task that writes partial lines to both streams, interleaved
    api = container_stack.api
    script = "printf a; printf b >&2; printf c; sleep 0.3; printf 'd\\ne'; printf 'f\\n' >&2; printf g >&2"
    # When
    task = api.wait(api.submit(busybox(script))["task_id"])
    # Then each stream is split into lines on its own, and its last partial line is flushed at exit, as docker's
    # log copier does for the awslogs driver (one reader per stream): stdout wrote "acd\ne", stderr "bf\ng"
    assert task["status"] == "SUCCEEDED", task["status_reason"]
    lines = api.logs(task["task_id"])
    assert sorted(lines) == sorted(["acd", "e", "bf", "g"]), lines
    assert lines.index("acd") < lines.index("e") and lines.index("bf") < lines.index("g")


def test_an_arm64_task_runs_only_where_the_host_can_emulate_it(container_stack: ContainerStack) -> None:
    # Given an x86_64 host (an aarch64 one runs ARM64 natively)
    if platform.machine() != "x86_64":
        pytest.skip("the host is not x86_64")
    api = container_stack.api
    # When
    task = api.wait(api.submit(busybox("uname -m", architecture="ARM64"))["task_id"], timeout=60)
    # Then
    if emulates("qemu-aarch64"):
        assert (task["status"], api.logs(task["task_id"])) == ("SUCCEEDED", ["aarch64"])
    else:
        assert (task["status"], task["stop_code"]) == ("FAILED", "TaskFailedToStart")
        assert task["status_reason"] == (
            "CannotStartContainerError: ARM64 tasks need emulation and this x86_64 host has none "
            "(no binfmt_misc handler for aarch64; install qemu-user-static)"
        )
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


def test_a_task_cannot_read_a_file_of_the_host(container_stack: ContainerStack) -> None:
    # Given files only the host has, in /tmp and in root's home
    secret = f"host-secret-{uuid.uuid4().hex}"
    files = [Path("/tmp") / f"{secret}.txt", Path.home() / f"{secret}.txt"]
    for path in files:
        path.write_text(secret)
    api = container_stack.api
    try:
        # When a task tries to read them
        script = " ".join(f"cat {path} || echo missing {path};" for path in files)
        task = api.wait(api.submit(busybox(script))["task_id"])
    finally:
        for path in files:
            path.unlink()
    # Then
    lines = api.logs(task["task_id"])
    assert [line for line in lines if secret in line and not line.startswith(("missing", "cat:"))] == []
    assert [f"missing {path}" for path in files] == [line for line in lines if line.startswith("missing")]


def test_a_task_cannot_raise_its_own_memory_limit(container_stack: ContainerStack) -> None:
    # Given a 512 MiB task that tries to raise its cgroup's limit (v2 and v1 names), then allocates 700 MB
    code = """
for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
        with open(path, "w") as limit:
            limit.write("max" if path.endswith(".max") else "-1")
        print("raised", path)
    except OSError as error:
        print("refused", path, type(error).__name__)
b = b"x" * (700 * 1024 * 1024)
print("allocated")
"""
    api = container_stack.api
    # When
    task = api.wait(api.submit(python(code, memory=512))["task_id"], timeout=60)
    # Then the writes failed or changed nothing: the allocation is still killed for memory
    assert (task["status"], task["exit_code"]) == ("FAILED", 137)
    assert task["status_reason"].startswith("OutOfMemoryError"), task["status_reason"]
    assert "allocated" not in api.logs(task["task_id"])


def test_a_task_sees_only_its_own_processes(container_stack: ContainerStack) -> None:
    # Given a task that lists every process it can see
    code = """
import os
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        print("process", pid, open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
    except OSError:
        pass
"""
    api = container_stack.api
    # When
    task = api.wait(api.submit(python(code))["task_id"])
    # Then it sees itself, not the stack, the engine or this test (all running on the host)
    assert task["status"] == "SUCCEEDED", task["status_reason"]
    seen = [line for line in api.logs(task["task_id"]) if line.startswith("process")]
    assert seen and seen[0].startswith("process 1 python3")
    assert [line for line in seen if any(host in line for host in ("taskrunner_local", "pytest", "conmon"))] == []


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


# ---------------------------------------------------------------------------------------------------------------
# A restarted agent and a restarted stack: what the previous one left behind


class StackProcess(ChildProcess):
    """A stack in container mode in its own process (`python -m tests.e2e.test_container_mode`), which replaces
    its agent when told (`restart-agent` on its stdin), as a crashed agent is replaced."""

    def __init__(self, stack_name: str) -> None:
        self.api_port, self.aws_port = free_port(), free_port()
        ports = [str(self.api_port), str(self.aws_port)]
        # its process group is what a crash kills
        super().__init__(
            "tests.e2e.test_container_mode", *ports, stack_name, env={}, stdin=subprocess.PIPE, new_session=True
        )
        self.tasks_table = ""
        self.admin_key = ""

    @classmethod
    def start(cls, stack_name: str) -> StackProcess:
        stack = cls(stack_name)
        ready = stack.wait_for("ready ", timeout=START_TIMEOUT_SECONDS, at_start=True)
        stack.tasks_table, stack.admin_key = ready.split()[1:3]
        return stack

    @property
    def api(self) -> TaskRunnerClient:
        return TaskRunnerClient(f"http://127.0.0.1:{self.api_port}", api_key=self.admin_key)

    def tell(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def crash(self) -> None:
        """kill -9 of the stack's process group (its Lambda workers too); the engine's processes are not in it."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the stack stops cleanly
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.crash()

    def metering_records(self, task_id: str) -> list[dict[str, Any]]:
        ddb = boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{self.aws_port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        records = []
        for page in ddb.get_paginator("scan").paginate(TableName=self.tasks_table):  # a census
            records += [i for i in page["Items"] if i["pk"]["S"].startswith("METER#") and i["task_id"]["S"] == task_id]
        return records


def containers_labelled(engine: Engine, *labels: str) -> list[str]:
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    listed = engine.run("ps", "-a", "-q", "--no-trunc", *filters)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def test_a_restarted_agent_re_adopts_a_running_task_and_a_new_stack_removes_what_it_does_not_know() -> None:
    engine = engine_or_skip(BUSYBOX_IMAGE)
    stack_name = f"taskrunner-e2e-sweep-{uuid.uuid4().hex[:8]}"
    label = stack_label(stack_name)
    stacks: list[StackProcess] = []
    try:
        # Given a running task (that printed: its container has started)
        first = StackProcess.start(stack_name)
        stacks.append(first)
        api = first.api
        task_id = api.submit(busybox("echo started; sleep 600"))["task_id"]
        task_arn = api.wait(task_id, {"RUNNING"})["ecs_task_arn"]
        assert wait_until(lambda: api.logs(task_id) == ["started"], timeout=30)
        [container] = containers_labelled(engine, label, f"{TASK_ARN_LABEL}={task_arn}")
        # When its agent is replaced without its shutdown, as when it crashed
        first.tell("restart-agent")
        first.wait_for("restarted", at_start=True)
        # Then the new agent re-adopted the container, which runs on: its task is still RUNNING
        assert any(f"re-adopted {task_arn} (running)" in line for line in first.output), first.output
        assert containers_labelled(engine, label, f"{TASK_ARN_LABEL}={task_arn}") == [container]
        assert api.get(task_id)["status"] == "RUNNING"
        # and it supervises it to its end: a cancel stops it, metered once, its container removed
        assert api.cancel(task_id).status_code == 202
        task = api.wait(task_id, timeout=60)
        assert (task["status"], task["stop_code"]) == ("CANCELLED", "UserInitiated")
        assert task["metering"]["billed_seconds"] == 60
        time.sleep(2)  # a second settlement would have come by now
        assert len(first.metering_records(task_id)) == 1
        assert api.get(task_id)["metering"] == task["metering"]
        assert api.logs(task_id) == ["started"]
        assert wait_until(lambda: containers_labelled(engine, label) == [], timeout=30)

        # Given another running task, When the whole stack is killed (kill -9)
        task_arn = api.wait(api.submit(busybox("sleep 600"))["task_id"], {"RUNNING"})["ecs_task_arn"]
        first.crash()
        # Then its container outlives it (conmon keeps it running)
        [container] = containers_labelled(engine, label, f"{TASK_ARN_LABEL}={task_arn}")
        # When a stack of the same name starts
        second = StackProcess.start(stack_name)
        stacks.append(second)
        # Then it removed the container before it served, one line for it (its emulator never knew the task)
        assert containers_labelled(engine, label) == []
        removed = [line for line in second.output if f"removed container {container[:12]}" in line]
        assert len(removed) == 1 and "not known to this stack" in removed[0], second.output
    finally:
        for stack in stacks:
            stack.stop()
        left = containers_labelled(engine, label)
        if left:
            engine.run("rm", "-f", "-t", "0", *left)
    assert left == []


def _serve(api_port: int, aws_port: int, stack_name: str) -> None:
    """The stack of `StackProcess`: up until its stdin closes, its agent replaced on each `restart-agent`."""
    from taskrunner_local.stack import LocalStack

    config = LocalConfig(
        api_port=api_port,
        aws_port=aws_port,
        stack_name=stack_name,
        ephemeral=True,
        stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
        echo_function_logs=False,
        agent_mode="container",
    )
    with LocalStack(config) as stack:
        assert stack.deployment is not None
        print("ready", stack.deployment.outputs["TasksTableName"], stack.admin_key, flush=True)
        for line in sys.stdin:
            if line.strip() == "restart-agent":
                stack.restart_agent()
                print("restarted", flush=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
