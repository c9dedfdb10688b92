"""Process mode of the local Fargate agent, over HTTP: the fallback where no container engine works, or a
developer's choice. Each task is a host process in a fresh working directory and its own cgroups: its output in
the logs, its exit code, a timeout, a cancel, an OOM kill (137), and a daemon that neither keeps it running nor
survives it. And without an engine, `auto` falls back to it loudly.

Each stack runs as `taskrunner local up` in its own process: the session's in-process stack (container mode)
patches moto, its hooks and MOTO_PORT for the whole process, so a second one cannot run beside it. Its TMPDIR is
the test's, so that the tasks' working directories can be looked at.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT
from taskrunner_local.limits import CGROUP_ROOT
from tests.support.local_tasks import UP_BANNER_END, admin_key_in, processes_with, read_banner, shell, wait_until

STOP_TIMEOUT_SECONDS = 3
START_TIMEOUT_SECONDS = 120
#: what `taskrunner local up` ends with once it stopped cleanly
STOPPED = "no task process is left running"


@dataclass(frozen=True)
class ProcessStack:
    api: TaskRunnerClient
    #: what `local up` printed up to the end of its banner
    banner: str
    #: the stack's TMPDIR: its work directory is made there
    tmp: Path

    def workdirs_of(self, ecs_task_arn: str) -> list[Path]:
        task_id = ecs_task_arn.rsplit("/", 1)[-1]
        return sorted(self.tmp.glob(f"taskrunner-local-*/tasks/task-{task_id}-*"))

    def leftovers(self, ecs_task_arn: str) -> list[str]:
        """The task's cgroups and working directory, if any is still there."""
        task_id = ecs_task_arn.rsplit("/", 1)[-1]
        cgroups = [CGROUP_ROOT / c / "taskrunner-local" / task_id for c in ("memory", "cpu", "pids", "freezer")]
        cgroups.append(CGROUP_ROOT / "taskrunner-local" / task_id)
        return [str(p) for p in cgroups if p.exists()] + [str(p) for p in self.workdirs_of(ecs_task_arn)]


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    output: list[str]

    def stop(self) -> str:
        """Ctrl-C; what it printed after its banner."""
        self.process.send_signal(signal.SIGINT)
        remaining, _ = self.process.communicate(timeout=120)
        return remaining


def start_up(tmp: Path, *args: str, path: str | None = None) -> UpProcess:
    """`taskrunner local up` on free ports, with `args`, quiet, its TMPDIR in `tmp` (and PATH `path`)."""
    env = {
        **os.environ,
        "TASKRUNNER_QUIET": "1",
        "PYTHONUNBUFFERED": "1",
        "TASKRUNNER_STACK_NAME": f"taskrunner-e2e-processes-{uuid.uuid4().hex[:8]}",
        "TASKRUNNER_STOP_TIMEOUT": str(STOP_TIMEOUT_SECONDS),
        "TMPDIR": str(tmp),
    }
    env.pop("TASKRUNNER_AGENT_MODE", None)
    if path is not None:
        env["PATH"] = path
        for variable in ("TASKRUNNER_ENGINE", "DOCKER_HOST"):  # nothing names an engine elsewhere
            env.pop(variable, None)
    ports = ["--api-port", str(free_port()), "--aws-port", str(free_port())]
    process = subprocess.Popen(
        [sys.executable, "-m", "taskrunner_local", "up", *ports, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    up = UpProcess(process, [])
    try:
        up.output = read_banner(process, timeout=START_TIMEOUT_SECONDS)
    except BaseException:
        up.stop()
        raise
    return up


def api_of(banner: str) -> TaskRunnerClient:
    """The API the banner serves, as the admin whose key it shows."""
    [line] = [line for line in banner.splitlines() if line.strip().startswith("API ")]
    return TaskRunnerClient(line.split()[1], api_key=admin_key_in(banner)[0])


@pytest.fixture(scope="module")
def process_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    tmp = tmp_path_factory.mktemp("process-mode")
    up = start_up(tmp, "--agent-mode", "process")
    banner = "".join(up.output)
    try:
        assert UP_BANNER_END in banner, banner
        yield ProcessStack(api_of(banner), banner, tmp)
    finally:
        remaining = up.stop()
    # Then the stack stopped cleanly, and left no task directory behind
    assert up.process.returncode == 0, banner + remaining
    assert STOPPED in remaining
    assert list(tmp.glob("taskrunner-local-*/tasks/task-*")) == []


def seconds(base: int) -> str:
    """A `sleep` argument no other test uses, so the process can be found by its command line."""
    return f"{base}.{random.randrange(10**5, 10**6)}"


def test_the_start_and_the_banner_say_process_mode_was_chosen(process_stack: ProcessStack) -> None:
    # Then
    banner = process_stack.banner
    assert "starting the local stack (agent mode: process (chosen explicitly) — tasks are host processes" in banner
    assert "Agent mode     process (chosen explicitly) — tasks are host processes, not isolated" in banner
    assert "Tasks run as   host processes (process mode" in banner
    assert "WARNING" not in banner  # chosen on purpose: no fallback to warn about


def test_a_task_runs_on_the_host_in_a_fresh_directory_with_its_output_in_the_logs(
    process_stack: ProcessStack,
) -> None:
    # When
    api = process_stack.api
    task = api.wait(api.submit(shell("echo hello from the host; pwd; echo on stderr >&2"))["task_id"])
    # Then
    assert (task["status"], task["exit_code"], task["stop_code"]) == ("SUCCEEDED", 0, "EssentialContainerExited")
    assert task["metering"]["billed_seconds"] == 60
    lines = api.logs(task["task_id"])
    [pwd] = [line for line in lines if line.startswith("/")]
    assert sorted(lines) == sorted(["hello from the host", "on stderr", pwd])
    workdir = Path(pwd)
    assert workdir.is_relative_to(process_stack.tmp) and workdir.name.startswith("task-"), workdir
    assert wait_until(lambda: not workdir.exists(), 5)
    assert wait_until(lambda: not process_stack.leftovers(task["ecs_task_arn"]), 5)


def test_a_non_zero_exit_is_failed_with_that_exit_code(process_stack: ProcessStack) -> None:
    # When
    api = process_stack.api
    task = api.wait(api.submit(shell("echo failing >&2; exit 7"))["task_id"])
    # Then
    assert (task["status"], task["exit_code"], task["stop_code"]) == ("FAILED", 7, "EssentialContainerExited")
    assert api.logs(task["task_id"]) == ["failing"]


def test_a_timeout_is_timed_out_and_its_process_is_gone(process_stack: ProcessStack) -> None:
    # Given
    api = process_stack.api
    marker = f"timeout-{uuid.uuid4().hex}"
    task_id = api.submit(shell(f"sleep 300 # {marker}", timeout_seconds=2))["task_id"]
    api.wait(task_id, {"RUNNING"})
    assert wait_until(lambda: processes_with(marker))
    # When
    task = api.wait(task_id, timeout=60)
    # Then
    assert (task["status"], task["status_reason"]) == ("TIMED_OUT", "Timed out after 2 s")
    assert task["stop_code"] == "UserInitiated" and task["metering"]["billed_seconds"] == 60
    assert processes_with(marker) == []
    assert wait_until(lambda: not process_stack.leftovers(task["ecs_task_arn"]), 5)


def test_a_cancel_is_sigterm_to_the_task(process_stack: ProcessStack) -> None:
    # Given
    api = process_stack.api
    marker = f"cancel-{uuid.uuid4().hex}"
    task_id = api.submit(shell(f"echo started; sleep 300 # {marker}"))["task_id"]
    api.wait(task_id, {"RUNNING"})
    # When
    response = api.cancel(task_id)
    task = api.wait(task_id)
    # Then
    assert response.status_code == 202 and response.json()["status"] == "CANCELLED"
    assert (task["status"], task["stop_code"], task["exit_code"]) == ("CANCELLED", "UserInitiated", 143)
    assert processes_with(marker) == []
    assert api.cancel(task_id).status_code == 409


def test_a_cancel_kills_a_main_process_that_ignores_sigterm_and_its_daemon(process_stack: ProcessStack) -> None:
    # Given a task that ignores SIGTERM and left a daemon
    api = process_stack.api
    daemon, loop = seconds(1015), seconds(1)
    script = f"trap '' TERM; setsid sleep {daemon} & echo started; while :; do sleep {loop}; done"
    task_id = api.submit(shell(script))["task_id"]
    api.wait(task_id, {"RUNNING"}, timeout=30)
    assert wait_until(lambda: processes_with(f"sleep\0{daemon}\0"), 10)
    # When
    cancelled = time.monotonic()
    api.cancel(task_id)
    task = api.wait(task_id, timeout=60)
    # Then SIGKILL after the stop timeout, to every process of the task
    assert (task["status"], task["stop_code"], task["exit_code"]) == ("CANCELLED", "UserInitiated", 137)
    assert time.monotonic() - cancelled < STOP_TIMEOUT_SECONDS + 10
    assert processes_with(f"sleep\0{daemon}\0") == [] and processes_with(f"sleep\0{loop}\0") == []
    assert wait_until(lambda: not process_stack.leftovers(task["ecs_task_arn"]), 5)


def test_a_task_that_exceeds_its_memory_fails_with_exit_137(process_stack: ProcessStack) -> None:
    # When a task of 512 MiB keeps allocating
    api = process_stack.api
    hog = "python3 -c 'b = []\nwhile True: b.append(bytearray(64 * 1024 * 1024))'"
    task = api.wait(api.submit(shell(hog, memory=512))["task_id"], timeout=60)
    # Then
    assert (task["status"], task["exit_code"]) == ("FAILED", 137)
    assert task["status_reason"].startswith("OutOfMemoryError"), task["status_reason"]


def test_a_setsid_daemon_neither_keeps_the_task_running_nor_survives_it(process_stack: ProcessStack) -> None:
    # When
    api = process_stack.api
    daemon = seconds(1013)
    started = time.monotonic()
    task = api.wait(api.submit(shell(f"setsid sleep {daemon} & echo started"))["task_id"], timeout=30)
    # Then it ended when `sh` exited, not when the daemon would have, and the daemon is gone
    assert (task["status"], task["exit_code"]) == ("SUCCEEDED", 0)
    assert time.monotonic() - started < 10
    assert processes_with(f"sleep\0{daemon}\0") == []
    assert api.logs(task["task_id"]) == ["started"]
    assert wait_until(lambda: not process_stack.leftovers(task["ecs_task_arn"]), 5)


def path_without_engines(bin_dir: Path) -> str:
    """A PATH with every command of this one but podman and docker: no engine can be found on it."""
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = bin_dir / entry.name
            if entry.name not in ("podman", "docker") and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    assert shutil.which("podman", path=str(bin_dir)) is None and shutil.which("sh", path=str(bin_dir))
    return str(bin_dir)


def test_auto_without_an_engine_falls_back_to_processes_and_says_so_loudly(tmp_path: Path) -> None:
    # Given no container engine on the PATH, and no agent mode asked for
    path = path_without_engines(tmp_path / "bin")
    # When
    up = start_up(tmp_path, path=path)
    try:
        banner = "".join(up.output)
        assert UP_BANNER_END in banner, banner
        # Then the start and the banner say which mode runs, why, and how to get container mode
        why = "neither podman nor docker is on the PATH"
        assert f"starting the local stack (agent mode: process (auto: no container engine works: {why}" in banner
        assert f"Agent mode     process (auto: no container engine works: {why}" in banner
        assert banner.count("WARNING: no container engine works, so tasks run as HOST PROCESSES") == 2, banner
        assert banner.count("for container mode: `make engine images` (as root, on Debian)") == 2, banner
        # and tasks run, as host processes
        api = api_of(banner)
        task = api.wait(api.submit(shell("echo fell back"))["task_id"])
        assert (task["status"], api.logs(task["task_id"])) == ("SUCCEEDED", ["fell back"])
    finally:
        remaining = up.stop()
    assert up.process.returncode == 0, "".join(up.output) + remaining
    assert STOPPED in remaining
