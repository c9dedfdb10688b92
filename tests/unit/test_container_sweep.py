"""What a restarted agent does with what a previous one left behind (containers that outlived a crashed stack or
a replaced agent): each is removed with one log line, and the task it names is settled once when the emulator
still shows it running; and how container mode picks the platform of an ARM64 or X86_64 task."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from taskrunner_local.agent import FargateAgent, Launch, StartError, Stray
from taskrunner_local.containers import host_architecture, platform_option

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/tasks"


def arn(name: str) -> str:
    return f"arn:aws:ecs:us-east-1:123456789012:task/tasks/{name}"


def ecs_task(name: str, status: str, *, started: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        task_arn=arn(name),
        id=name,
        _status=status,
        started_at=object() if started else None,
        containers=[SimpleNamespace(reason=None, last_status=status)],
        stop_code=None,
        stopped_reason=None,
        stopping_at=None,
        execution_stopped_at=None,
        stopped_at=None,
        desired_status="RUNNING",
    )


class FakeLauncher:
    """Lists `strays` and records what the agent removes and kills."""

    mode = "container"

    def __init__(self, strays: list[Stray]) -> None:
        self.listed = strays
        self.removed: list[str] = []
        self.killed: list[str] = []

    def describe(self) -> str:
        return "fake"

    def prepare(self, launch: Launch) -> None:
        pass

    def pull(self, launch: Launch) -> None:
        pass

    def start(self, task: Any, launch: Launch) -> Any:
        raise AssertionError("not started here")

    def kill_leftovers(self, task: Any) -> bool:
        self.killed.append(task.task_arn)
        return True

    def strays(self) -> list[Stray]:
        return self.listed

    def remove_stray(self, stray: Stray) -> bool:
        self.removed.append(stray.key)
        return True

    def shutdown(self) -> None:
        pass


class FakeAws:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def describe_task(self, task: Any) -> dict[str, Any]:
        return {"taskArn": task.task_arn, "lastStatus": task._status, "stopCode": task.stop_code}

    def put_event(self, source: str, detail_type: str, detail: dict[str, Any], resources: list[str]) -> None:
        self.events.append(detail)


def container(name: str, task_name: str) -> Stray:
    return Stray(f"container {name}", name, arn(task_name) if task_name else "")


def test_the_sweep_removes_every_stray_container_and_settles_the_tasks_still_running_once(tmp_path: Path) -> None:
    # Given containers of this stack left by a previous agent: of a running task, of a stopped one, of a task this
    # stack does not know (the stack itself restarted), and one that names no task
    running, stopped = ecs_task("running", "RUNNING"), ecs_task("stopped", "STOPPED")
    pending = ecs_task("pending", "PENDING", started=False)  # whose container was never created
    launcher = FakeLauncher(
        [container("c1", "running"), container("c2", "stopped"), container("c3", "unknown"), container("c4", "")]
    )
    aws = FakeAws()
    lines: list[str] = []
    agent = FargateAgent(
        aws,  # type: ignore[arg-type]
        work_dir=tmp_path,
        launcher=launcher,
        on_log=lines.append,
    )
    backend = SimpleNamespace(
        tasks={CLUSTER: {arn("running"): running, arn("stopped"): stopped, arn("pending"): pending}}
    )
    # When
    settled = agent.settle_orphans(backend)
    # Then every container is removed, with one line each
    assert launcher.removed == ["c1", "c2", "c3", "c4"]
    assert [line.split(",")[0] for line in lines] == [f"removed container c{i}" for i in range(1, 5)]
    assert "settled as orphaned" in lines[0] and "already stopped" in lines[1]
    assert "not known to this stack" in lines[2] and "unnamed" in lines[3]
    # And the running task is settled once, as the restart path settles it; the pending one too (it never started)
    assert settled == 2
    assert (running._status, running.stop_code) == ("STOPPED", "EssentialContainerExited")
    assert running.stopped_reason == "Task orphaned: the local Fargate agent restarted"
    assert running.containers[0].reason == "Task orphaned: the local agent restarted"
    assert (pending._status, pending.stop_code) == ("STOPPED", "TaskFailedToStart")
    assert (stopped._status, stopped.stop_code) == ("STOPPED", None)  # untouched
    assert [event["taskArn"] for event in aws.events] == [arn("running"), arn("pending")]
    assert launcher.killed == [arn("pending")]  # the running one's container was removed by the sweep
    # And a second sweep finds nothing more to settle
    launcher.listed = []
    assert agent.settle_orphans(backend) == 0
    assert len(aws.events) == 2


def test_the_sweep_leaves_the_containers_of_tasks_this_agent_runs(tmp_path: Path) -> None:
    # Given a container of a task this agent has just started
    launcher = FakeLauncher([container("mine", "mine")])
    agent = FargateAgent(FakeAws(), work_dir=tmp_path, launcher=launcher)  # type: ignore[arg-type]
    agent._running[arn("mine")] = SimpleNamespace()  # type: ignore[assignment]
    # When
    agent.settle_orphans(SimpleNamespace(tasks={}))
    # Then
    assert launcher.removed == []


def test_a_failing_listing_is_logged_and_the_known_tasks_still_settled(tmp_path: Path) -> None:
    # Given an engine that cannot list containers
    launcher = FakeLauncher([])
    launcher.strays = lambda: (_ for _ in ()).throw(RuntimeError("engine down"))  # type: ignore[method-assign]
    lines: list[str] = []
    agent = FargateAgent(FakeAws(), work_dir=tmp_path, launcher=launcher, on_log=lines.append)  # type: ignore[arg-type]
    task = ecs_task("running", "RUNNING")
    # When
    settled = agent.settle_orphans(SimpleNamespace(tasks={CLUSTER: {task.task_arn: task}}))
    # Then
    assert settled == 1 and task._status == "STOPPED"
    assert launcher.killed == [task.task_arn]
    assert "engine down" in lines[0]


@pytest.mark.parametrize(("machine", "architecture"), [("x86_64", "X86_64"), ("aarch64", "ARM64")])
def test_a_task_of_the_hosts_architecture_needs_no_platform(machine: str, architecture: str, tmp_path: Path) -> None:
    # Then
    assert host_architecture(machine) == architecture
    assert platform_option(architecture, machine, binfmt_dir=tmp_path) == []


@pytest.mark.parametrize(
    ("machine", "architecture", "handler", "platform"),
    [("x86_64", "ARM64", "qemu-aarch64", "linux/arm64"), ("aarch64", "X86_64", "qemu-x86_64", "linux/amd64")],
)
def test_a_foreign_architecture_runs_emulated_when_the_kernel_has_an_enabled_handler(
    machine: str, architecture: str, handler: str, platform: str, tmp_path: Path
) -> None:
    # Given an enabled binfmt_misc handler
    (tmp_path / handler).write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/x\nflags: F\n")
    # Then
    assert platform_option(architecture, machine, binfmt_dir=tmp_path) == ["--platform", platform]


@pytest.mark.parametrize(
    ("machine", "architecture", "handler", "message"),
    [
        (
            "x86_64",
            "ARM64",
            "qemu-aarch64",
            "CannotStartContainerError: ARM64 tasks need emulation and this x86_64 host has none "
            "(no binfmt_misc handler for aarch64; install qemu-user-static)",
        ),
        (
            "aarch64",
            "X86_64",
            "qemu-x86_64",
            "CannotStartContainerError: X86_64 tasks need emulation and this aarch64 host has none "
            "(no binfmt_misc handler for x86_64; install qemu-user-static)",
        ),
    ],
)
@pytest.mark.parametrize("disabled", [False, True])
def test_a_foreign_architecture_cannot_start_without_emulation(
    machine: str, architecture: str, handler: str, message: str, *, disabled: bool, tmp_path: Path
) -> None:
    # Given no handler, or a disabled one
    if disabled:
        (tmp_path / handler).write_text("disabled\ninterpreter /usr/libexec/qemu-binfmt/x\n")
    # When / Then
    with pytest.raises(StartError) as raised:
        platform_option(architecture, machine, binfmt_dir=tmp_path)
    assert str(raised.value) == message
