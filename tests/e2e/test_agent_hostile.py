"""Hostile tasks against the local Fargate agent, over HTTP on the real local stack (container mode, or process
mode with TASKRUNNER_E2E_AGENT_MODE=process; a container's processes are on this machine's /proc too): daemons that
leave their process group, a main process that ignores SIGTERM, a fork bomb, a line longer than a log event,
a flood of lines while the log stream is stalled, and launches or supervision that fail inside the agent.

Whatever a task does, it must end (no task left RUNNING or PROVISIONING), leave no process, cgroup or working
directory or container behind, and keep its output within CloudWatch's limits without losing or repeating a line."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.containers import TASK_ARN_LABEL, ContainerLauncher
from taskrunner_local.images import PYTHON_IMAGE
from taskrunner_local.limits import CGROUP_ROOT, TASK_PIDS_MAX
from taskrunner_local.stack import LocalStack
from tests.support.local_tasks import processes_with, shell, wait_until

LOG_EVENT_MAX_BYTES = 262_118  # CloudWatch's 256 KiB per event, minus its 26 bytes of overhead


def seconds(base: int) -> str:
    """A `sleep` argument no other test uses (`1003.481516`), so the process can be found by its command line."""
    return f"{base}.{random.randrange(10**5, 10**6)}"


def sleeping(argument: str) -> list[int]:
    """The pids of the `sleep <argument>` processes on this machine."""
    wanted = b"sleep\0" + argument.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().endswith(wanted):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def leftovers(stack: LocalStack, ecs_task_arn: str) -> list[str]:
    """The task's cgroups, working directory and container, if any is still there."""
    task_id = ecs_task_arn.rsplit("/", 1)[-1]
    cgroups = [CGROUP_ROOT / c / "taskrunner-local" / task_id for c in ("memory", "cpu", "pids", "freezer")]
    cgroups.append(CGROUP_ROOT / "taskrunner-local" / task_id)
    assert stack.agent is not None
    found = [str(p) for p in cgroups if p.exists()] + [str(p) for p in stack.agent.work_dir.glob(f"task-{task_id}-*")]
    launcher = stack.agent.launcher
    if isinstance(launcher, ContainerLauncher):
        listed = launcher.engine.run("ps", "-a", "-q", "--filter", f"label={TASK_ARN_LABEL}={ecs_task_arn}")
        assert listed.returncode == 0, listed.stderr
        found += [f"container {container}" for container in listed.stdout.split()]
    return found


def all_logs(api: TaskRunnerClient, task_id: str) -> list[str]:
    """Every page of `GET /tasks/{id}/logs`."""
    lines: list[str] = []
    token = None
    for _ in range(1000):
        params = {"limit": "10000", **({"next_token": token} if token else {})}
        response = api.http.get(f"{api.base_url}/tasks/{task_id}/logs", params=params, timeout=60)
        response.raise_for_status()
        page = response.json()
        lines += [event["message"] for event in page["events"]]
        token = page["next_token"]
        if not token or not page["events"]:
            break
    return lines


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Exceptions that end a thread (an agent thread must never die of one)."""
    errors: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    return errors


def test_a_setsid_daemon_neither_keeps_the_task_running_nor_survives_it(
    stack: LocalStack, api: TaskRunnerClient, thread_errors: list[Any]
) -> None:
    daemon = seconds(1003)
    started = time.monotonic()
    task_id = api.submit(shell(f"setsid sleep {daemon} & echo started"))["task_id"]
    task = api.wait(task_id, timeout=30)
    assert task["status"] == "SUCCEEDED" and task["exit_code"] == 0
    assert time.monotonic() - started < 10  # it ended when `sh` exited, not when the daemon would have
    assert sleeping(daemon) == []
    assert api.logs(task_id) == ["started"]
    assert wait_until(lambda: not leftovers(stack, task["ecs_task_arn"]), 5), leftovers(stack, task["ecs_task_arn"])
    assert thread_errors == []


def test_a_double_fork_daemon_neither_keeps_the_task_running_nor_survives_it(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    daemon = seconds(1004)
    # the classic daemon: fork, setsid, fork again, and the grandchild (reparented to init) sleeps on
    code = (
        "import os\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        f"os.execvp('sleep', ['sleep', '{daemon}'])\n"
    )
    started = time.monotonic()
    task_id = api.submit(shell(f'python3 -c "{code}"; sleep 0.2; echo started'))["task_id"]
    task = api.wait(task_id, timeout=30)
    assert task["status"] == "SUCCEEDED" and task["exit_code"] == 0
    assert time.monotonic() - started < 10
    assert sleeping(daemon) == []
    assert api.logs(task_id) == ["started"]
    assert wait_until(lambda: not leftovers(stack, task["ecs_task_arn"]), 5)


def test_a_cancel_kills_a_main_process_that_ignores_sigterm_and_its_daemon(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    daemon, loop = seconds(1005), seconds(1)
    script = f"trap '' TERM; setsid sleep {daemon} & echo started; while :; do sleep {loop}; done"
    task_id = api.submit(shell(script))["task_id"]
    api.wait(task_id, {"RUNNING"}, timeout=30)
    assert wait_until(lambda: sleeping(daemon), 10)
    cancelled = time.monotonic()
    response = api.cancel(task_id)
    assert response.status_code == 202 and response.json()["status"] == "CANCELLED"
    task = api.wait(task_id, timeout=60)
    assert task["status"] == "CANCELLED" and task["stop_code"] == "UserInitiated"
    assert task["exit_code"] == 137  # SIGTERM ignored: SIGKILL after the stop timeout (5 s here)
    assert time.monotonic() - cancelled < 5 + 10
    assert sleeping(daemon) == [] and sleeping(loop) == []
    assert wait_until(lambda: not leftovers(stack, task["ecs_task_arn"]), 5)


def test_a_fork_bomb_stays_within_its_pids_limit_ends_and_leaves_nothing(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    bomb = seconds(60)
    script = f"i=0; while [ $i -lt 5000 ]; do sleep {bomb} & i=$((i + 1)); done; echo spawned $i"
    task_id = api.submit(shell(script, timeout_seconds=120))["task_id"]
    most = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        most = max(most, len(sleeping(bomb)))
        if api.get(task_id)["status"] in {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}:
            break
        time.sleep(0.1)
    task = api.wait(task_id, timeout=30)
    assert task["status"] in {"SUCCEEDED", "FAILED"}, task
    assert 0 < most < TASK_PIDS_MAX  # the shell itself is one of the task's pids
    assert wait_until(lambda: not sleeping(bomb), 5), len(sleeping(bomb))
    assert wait_until(lambda: not leftovers(stack, task["ecs_task_arn"]), 5)
    # the stack is unharmed
    after = api.wait(api.submit(shell("echo fine"))["task_id"], timeout=30)
    assert after["status"] == "SUCCEEDED" and api.logs(after["task_id"]) == ["fine"]


def test_a_line_longer_than_a_log_event_is_split_like_the_awslogs_driver_splits_it(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    # 1 MiB and more of one line of 1-, 2-, 3- and 4-byte UTF-8 characters, no newline in it, then `done`
    unit = "\u00e9\u20ac\U0001f600a"
    count = 1_048_576 // len(unit.encode()) + 3
    code = f"import sys; sys.stdout.buffer.write(({unit!r} * {count}).encode() + b'\\ndone\\n')"
    task = api.wait(api.submit({"image": PYTHON_IMAGE, "command": ["python3", "-c", code]})["task_id"])
    assert task["status"] == "SUCCEEDED"
    events = all_logs(api, task["task_id"])
    assert events[-1] == "done"
    pieces = events[:-1]
    assert len(pieces) == 5
    assert all(len(piece.encode()) <= LOG_EVENT_MAX_BYTES for piece in pieces)
    assert "".join(pieces) == unit * count  # in order, nothing lost or repeated, no character cut in two


def test_a_flood_of_lines_is_held_back_while_the_log_stream_is_stalled_and_arrives_whole(
    stack: LocalStack, api: TaskRunnerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stack.agent is not None
    aws = stack.agent.aws
    original = aws.put_log_events
    stalled = threading.Event()
    released = threading.Event()

    def put_log_events(group: str, stream: str, events: list[dict[str, Any]]) -> None:
        stalled.set()
        released.wait(60)
        original(group, stream, events)

    monkeypatch.setattr(aws, "put_log_events", put_log_events)
    marker = f"flood-{random.randrange(10**9)}"
    try:
        task_id = api.submit(shell(f"seq 1 100000; : {marker}"))["task_id"]
        api.wait(task_id, {"RUNNING"}, timeout=30)
        assert stalled.wait(30)
        time.sleep(2)
        # the agent holds a bounded backlog, so the task's writes block, as a container runtime's do
        assert processes_with(marker), "the task wrote 100,000 lines into an unbounded buffer"
        assert api.get(task_id)["status"] == "RUNNING"
    finally:
        released.set()
    task = api.wait(task_id, timeout=120)
    assert task["status"] == "SUCCEEDED"
    assert all_logs(api, task_id) == [str(i) for i in range(1, 100_001)]


@pytest.mark.parametrize(
    "override",
    [
        {"command": ["sh", "-c", "echo nul\x00byte"]},
        {"command": ["true"], "environment": [{"name": "BAD", "value": "nul\x00byte"}]},
    ],
    ids=["command", "environment"],
)
def test_a_launch_that_raises_in_the_agent_stops_the_ecs_task_as_failed_to_start(
    stack: LocalStack, api: TaskRunnerClient, thread_errors: list[Any], override: dict[str, Any]
) -> None:
    # The API refuses a NUL byte, so the ECS task is run as the workflow runs it, with one in its override.
    template = api.wait(api.submit(shell("true"))["task_id"])
    ecs = stack.client("ecs")
    cluster = stack.deployment.outputs["ClusterName"]  # type: ignore[union-attr]
    [described] = ecs.describe_tasks(cluster=cluster, tasks=[template["ecs_task_arn"]])["tasks"]
    container = described["containers"][0]["name"]
    ec2 = stack.client("ec2")
    network = {
        "subnets": [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:1]],
        "securityGroups": [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"][:1]],
        "assignPublicIp": "DISABLED",
    }
    [started] = ecs.run_task(
        cluster=cluster,
        taskDefinition=described["taskDefinitionArn"],
        launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": network},
        overrides={"containerOverrides": [{"name": container, **override}]},
    )["tasks"]
    arn = started["taskArn"]

    def stopped() -> dict[str, Any] | None:
        [task] = ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"]
        return task if task["lastStatus"] == "STOPPED" else None

    assert wait_until(stopped, 20), ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]["lastStatus"]
    task = stopped()
    assert task is not None
    assert task["stopCode"] == "TaskFailedToStart"
    # a container is created with the override (the engine's create refuses it), a process is started with it
    step = "Create" if stack.agent.launcher.mode == "container" else "Start"  # type: ignore[union-attr]
    assert task["stoppedReason"].startswith(f"Cannot{step}ContainerError: ")
    assert "null byte" in task["stoppedReason"]
    assert thread_errors == []
    assert stack.agent is not None
    assert wait_until(lambda: arn not in stack.agent._running, 5)
    # the task's thread ends (it settled the task first, so it may still be unwinding a moment after)
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == f"task-{arn.rsplit('/', 1)[-1]}"], 5)
    assert wait_until(lambda: not leftovers(stack, arn), 5)


def test_an_agent_error_after_the_start_settles_the_task_and_kills_its_processes(
    stack: LocalStack, api: TaskRunnerClient, thread_errors: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an agent that breaks down once the task's main process has exited, as it reads the exit status
    assert stack.agent is not None
    launcher = stack.agent.launcher
    start = launcher.start

    def failing_start(task: Any, launch: Any) -> Any:
        execution = start(task, launch)

        def exit_status(returncode: int) -> tuple[int, bool]:
            raise RuntimeError("the agent broke down")

        execution.exit_status = exit_status  # type: ignore[method-assign]
        return execution

    monkeypatch.setattr(launcher, "start", failing_start)
    daemon = seconds(1006)
    task = api.wait(api.submit(shell(f"setsid sleep {daemon} & echo started"))["task_id"], timeout=30)
    assert task["status"] == "FAILED" and task["stop_code"] == "EssentialContainerExited"
    assert "the agent broke down" in task["status_reason"]
    assert sleeping(daemon) == []
    assert thread_errors == []
    assert wait_until(lambda: not leftovers(stack, task["ecs_task_arn"]), 5)
