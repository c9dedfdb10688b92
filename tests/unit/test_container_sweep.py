"""What a restarted agent does with what a previous one left behind (containers that outlived a crashed stack or
a replaced agent): each container no task left to recover uses is removed with one log line, a task with
nothing left to adopt is settled once; and how container mode picks the platform of an ARM64 or X86_64 task.
(Adoption itself: `test_agent_recovery.py`.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from taskrunner_local.agent import (
    STACK_STOPPED_CODE,
    STACK_STOPPED_CONTAINER_REASON,
    STACK_STOPPED_REASON,
    Adopted,
    FargateAgent,
    Launch,
    StartError,
    Stray,
    _RunningTask,
)
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
    adopts = True

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

    def adopt(self, task: Any, launch: Launch) -> Adopted | None:
        raise AssertionError("these tasks have no task definition to adopt them with")

    def kill_leftovers(self, task: Any) -> bool:
        self.killed.append(task.task_arn)
        return True

    def sweep(self, stopped: list[Any], live: set[str]) -> list[str]:
        return []

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


def test_the_sweep_removes_the_containers_no_task_left_to_recover_uses_and_settles_a_lost_task_once(
    tmp_path: Path,
) -> None:
    # Given containers of this stack left by a previous agent: of a running task (whose task definition is gone, so
    # that it cannot be adopted), of a stopped one, of a task this stack does not know, and one that names no task
    running, stopped = ecs_task("running", "RUNNING"), ecs_task("stopped", "STOPPED")
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
    backend = SimpleNamespace(tasks={CLUSTER: {arn("running"): running, arn("stopped"): stopped}})
    # When
    settled = agent.settle_orphans(backend)
    # Then every container but the running task's is removed, with one line each
    assert launcher.removed == ["c2", "c3", "c4"]
    removals = [line for line in lines if line.startswith("removed container")]
    assert [line.split(",")[0] for line in removals] == [f"removed container c{i}" for i in range(2, 5)]
    assert "already stopped" in removals[0] and "not known to this stack" in removals[1]
    assert "unnamed" in removals[2]
    # And the running task, with nothing to adopt it by, has what is left of it killed and is settled once
    assert settled == 1
    assert launcher.killed == [arn("running")]
    assert (running._status, running.stop_code, running.stopped_reason) == (
        "STOPPED",
        STACK_STOPPED_CODE,
        STACK_STOPPED_REASON,
    )
    assert running.containers[0].reason == STACK_STOPPED_CONTAINER_REASON
    assert (stopped._status, stopped.stop_code) == ("STOPPED", None)  # untouched
    assert [event["taskArn"] for event in aws.events] == [arn("running")]
    # And a second sweep finds nothing more to settle
    launcher.listed = []
    assert agent.settle_orphans(backend) == 0
    assert len(aws.events) == 1


def test_the_sweep_leaves_the_containers_of_tasks_this_agent_runs(tmp_path: Path) -> None:
    # Given a container of a task this agent has just started
    launcher = FakeLauncher([container("mine", "mine")])
    agent = FargateAgent(FakeAws(), work_dir=tmp_path, launcher=launcher)  # type: ignore[arg-type]
    mine = ecs_task("mine", "RUNNING")
    agent._running[arn("mine")] = _RunningTask(task=mine, backend=None)
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


def test_containers_of_another_stack_of_the_same_name_are_not_strays(tmp_path: Path) -> None:
    """Two stacks of one name on two state folders: each sweeps only its own containers (and those of folders that
    are gone), never the other's, which the other re-adopts."""
    from taskrunner_local.containers import ContainerLauncher
    from taskrunner_local.engine import Engine
    from taskrunner_local.persistence.store import DATABASE

    ours, theirs, gone = tmp_path / "ours", tmp_path / "theirs", tmp_path / "gone"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / DATABASE).write_bytes(b"")
    listing = "\n".join(
        [
            f"c1|{arn('mine')}|{ours}",
            f"c2|{arn('theirs')}|{theirs}",
            f"c3|{arn('orphan')}|{gone}",
            f"c4|{arn('old')}|",  # made before containers named their folder
        ]
    )
    engine = Engine(name="podman", executable="podman")
    launcher = ContainerLauncher(
        engine, stack_name="taskrunner", region="us-east-1", work_dir=tmp_path / "w", state_dir=ours
    )
    launcher.engine = SimpleNamespace(  # type: ignore[assignment]
        run=lambda *args, **kwargs: SimpleNamespace(returncode=0, stdout=listing, stderr=""), name="podman"
    )
    assert [stray.key for stray in launcher.strays()] == ["c1", "c3", "c4"]
