"""A Fargate agent that starts after another one stopped (crashed, or let go of its tasks at a durable stack's
clean stop) and recovers what it left, with real Podman containers: a task still running is re-adopted and
followed to its end, its log stream holding each line exactly once; a task whose container exited meanwhile is
settled from the container's own record; a task whose container is gone is settled as stopped with the stack; a
task that never started is started; a container no task uses is removed; in process mode, a host process that
outlived its agent is killed and its task settled.

The agents run in this process, on moto's backends of an account of each test's own (the session's stack, when
it runs, has its own account and hooks: nothing here goes through them), with a state store in the test's folder
that each "restarted" agent opens again, as a restarted stack would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskrunner_local.agent import (
    HEARTBEAT_SECONDS,
    OOM_REASON,
    STACK_STOPPED_CODE,
    STACK_STOPPED_CONTAINER_REASON,
    STACK_STOPPED_REASON,
    FargateAgent,
    Launcher,
)
from taskrunner_local.containers import TASK_ARN_LABEL, ContainerLauncher, engine_time, stack_label
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from taskrunner_local.persistence.store import StateStore
from tests.support.ecs import REGION, EcsAccount, new_account
from tests.support.engine import engine_or_skip
from tests.support.local_tasks import processes_with, wait_until

STOP_TIMEOUT_SECONDS = 2.0
#: how long a task of these tests may take to reach a state (a container starts in about 0.2 s here)
SETTLE_SECONDS = 30.0


@dataclass
class Agents:
    """Agents of one stack, one after the other, on moto's backends of an account of the test's own."""

    account: str
    stack_name: str
    folder: Path
    #: None: process mode
    engine: Engine | None
    image: str
    lines: list[str] = field(default_factory=list)
    stores: list[StateStore] = field(default_factory=list)
    #: the agents that have not crashed, and their stores
    running: dict[int, tuple[FargateAgent, StateStore]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ecs = EcsAccount("recovery", image=self.image, account=self.account)

    @property
    def backend(self) -> Any:
        return self.ecs.backend

    def start_agent(self) -> FargateAgent:
        """An agent as the stack starts it: on the state folder (opened again), after the previous agent."""
        store = StateStore(self.folder / "state")
        launcher: Launcher | None = None
        if self.engine is not None:
            launcher = ContainerLauncher(
                self.engine,
                stack_name=self.stack_name,
                region=REGION,
                work_dir=self.folder / "containers",
                on_log=self.lines.append,
            )
        agent = FargateAgent(
            self.ecs.aws,
            work_dir=self.folder / "tasks",
            stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
            region=REGION,
            on_log=self.lines.append,
            launcher=launcher,
            store=store,
        )
        self.stores.append(store)
        self.running[id(agent)] = (agent, store)
        return agent

    def crash(self, agent: FargateAgent) -> datetime:
        """The agent stops as a crash stops it (and its stack's store is closed); when."""
        crashed_at = datetime.now(UTC)
        agent.detach()
        _agent, store = self.running.pop(id(agent))
        store.close()
        return crashed_at

    def accept(self, script: str) -> Any:
        """A task RunTask accepted (PROVISIONING, as the lifecycle patch leaves it), not yet given to an agent."""
        return self.ecs.task(script)

    def run(self, agent: FargateAgent, script: str) -> Any:
        """A task `agent` runs, once it is RUNNING."""
        task = self.accept(script)
        agent.on_run_task(self.backend, [task])
        assert wait_until(lambda: task._status == "RUNNING", SETTLE_SECONDS), (task._status, self.lines)
        return task

    def stream(self, task: Any) -> list[str]:
        """The messages of the task's log stream, in order."""
        return self.ecs.stream(task)

    def containers(self, task: Any | None = None) -> list[str]:
        """The containers of this stack (of one task) that are still there."""
        assert self.engine is not None
        labels = [stack_label(self.stack_name)] + ([f"{TASK_ARN_LABEL}={task.task_arn}"] if task is not None else [])
        listed = self.engine.run("ps", "-a", "-q", "--no-trunc", *[f"--filter=label={label}" for label in labels])
        assert listed.returncode == 0, listed.stderr
        return listed.stdout.split()

    def close(self) -> None:
        """The stack stops (an ephemeral stack's stop: every task is killed)."""
        for agent, _store in reversed(self.running.values()):
            agent.shutdown()
        for store in self.stores:
            store.close()


def agents_for(tmp_path: Path, engine: Engine | None, image: str) -> Iterator[Agents]:
    account = new_account()
    stack_name = f"taskrunner-e2e-recovery-{uuid.uuid4().hex[:8]}"
    agents = Agents(account, stack_name, tmp_path, engine, image)
    try:
        yield agents
    finally:
        agents.close()
        if engine is not None:
            left = agents.containers()
            if left:
                engine.run("rm", "-f", "-t", "0", *left)
            assert left == [], "containers left behind"


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    yield from agents_for(tmp_path, engine_or_skip(BUSYBOX_IMAGE), BUSYBOX_IMAGE)


@pytest.fixture
def python_agents(tmp_path: Path) -> Iterator[Agents]:
    yield from agents_for(tmp_path, engine_or_skip(PYTHON_IMAGE), PYTHON_IMAGE)


@pytest.fixture
def process_agents(tmp_path: Path) -> Iterator[Agents]:
    yield from agents_for(tmp_path, None, BUSYBOX_IMAGE)


def exit_code(task: Any) -> Any:
    [container] = task.containers
    return container.exitCode


def settled(task: Any) -> bool:
    return wait_until(lambda: task._status == "STOPPED", SETTLE_SECONDS)


@pytest.mark.parametrize("how", ["crash", "durable stop"])
def test_a_running_task_is_re_adopted_and_its_stream_holds_each_line_exactly_once(agents: Agents, how: str) -> None:
    # Given a task writing a line a second, whose agent stops (crashes, or lets go of it) after its second line
    first = agents.start_agent()
    task = agents.run(first, "for i in $(seq 1 5); do echo line $i; sleep 1; done")
    assert wait_until(lambda: len(agents.stream(task)) >= 2, SETTLE_SECONDS)
    if how == "crash":
        agents.crash(first)
    else:
        first.shutdown(keep_running=True)
    shipped_before = len(agents.stream(task))
    # Then the container runs on
    [container] = agents.containers(task)
    assert agents.engine is not None
    assert agents.engine.run("inspect", "--format", "{{.State.Status}}", container).stdout.strip() == "running"
    # When the next agent starts
    second = agents.start_agent()
    recovery = second.recover(agents.backend)
    # Then it re-adopts the task and follows it to its end: exit code 0, every line once, no container left
    assert recovery.adopted == [task.task_arn]
    assert settled(task), agents.lines
    assert (task.stop_code, exit_code(task)) == ("EssentialContainerExited", 0)
    assert agents.stream(task) == [f"line {i}" for i in range(1, 6)]
    assert 2 <= shipped_before < 5  # the first agent shipped some, the second the rest
    assert wait_until(lambda: agents.containers(task) == [], 10)


def test_a_container_that_exited_while_no_agent_ran_is_settled_from_its_own_record(agents: Agents) -> None:
    # Given a task whose agent crashed, and whose container exited (3) afterwards, writing to stderr
    first = agents.start_agent()
    task = agents.run(first, "echo before; sleep 2; echo after >&2; exit 3")
    assert wait_until(lambda: agents.stream(task) == ["before"], SETTLE_SECONDS)
    agents.crash(first)
    [container] = agents.containers(task)
    assert agents.engine is not None
    assert agents.engine.run("wait", container).stdout.strip() == "3"
    state = json.loads(agents.engine.run("inspect", "--format", "{{json .State}}", container).stdout)
    # When the next agent starts
    second = agents.start_agent()
    recovery = second.recover(agents.backend)
    # Then the task is settled with the container's exit code, stopped when the container finished
    assert recovery.adopted == [task.task_arn]
    assert settled(task), agents.lines
    assert (task.stop_code, exit_code(task)) == ("EssentialContainerExited", 3)
    finished = engine_time(state["FinishedAt"])
    assert finished is not None and task.execution_stopped_at == finished == task.stopped_at
    assert task.started_at < finished
    # And its output is in its stream once, the container removed
    assert agents.stream(task) == ["before", "after"]
    assert wait_until(lambda: agents.containers(task) == [], 10)


def test_a_large_output_of_a_container_that_exited_while_no_agent_ran_is_shipped_whole(agents: Agents) -> None:
    # Given a task printing 100,000 lines whose agent crashed at its start, and whose container exited meanwhile
    # (podman's `logs --follow` stops early on such a container when its reader is slow)
    first = agents.start_agent()
    task = agents.run(first, "sleep 1; seq 1 100000; echo END")
    agents.crash(first)
    [container] = agents.containers(task)
    assert agents.engine is not None
    assert agents.engine.run("wait", container).stdout.strip() == "0"
    # When the next agent re-adopts it
    second = agents.start_agent()
    assert second.recover(agents.backend).adopted == [task.task_arn]
    assert settled(task), agents.lines
    # Then every line is in the stream, once
    assert agents.stream(task) == [*map(str, range(1, 100_001)), "END"]


def test_a_task_stopping_when_its_agent_crashed_keeps_every_line_it_printed(agents: Agents) -> None:
    # Given a task that ignores SIGTERM while it prints, asked to stop, whose agent crashed while it was stopping
    # (podman's `logs --follow` returns at once for a container that is stopping)
    first = agents.start_agent()
    script = "trap 'echo term' TERM; for i in $(seq 1 40); do echo c$i; sleep 0.1; done"
    task = agents.run(first, script)
    assert wait_until(lambda: "c3" in agents.stream(task), SETTLE_SECONDS)
    first.on_stop_task(agents.backend, task, "stopped by the test")
    agents.crash(first)
    # When the next agent re-adopts it
    second = agents.start_agent()
    second.recover(agents.backend)
    assert settled(task), agents.lines
    # Then every line it printed up to its end is in its stream, once
    lines = agents.stream(task)
    printed = [line for line in lines if line != "term"]
    assert printed == [f"c{i}" for i in range(1, len(printed) + 1)], lines
    assert len(printed) > 3 + 5, lines  # it went on printing for the stop timeout (2 s) after the crash


def test_a_task_whose_container_is_gone_is_settled_as_stopped_with_the_stack(agents: Agents) -> None:
    # Given a running task whose agent crashed, and whose container was removed afterwards
    first = agents.start_agent()
    task = agents.run(first, "echo up; sleep 600")
    crashed_at = agents.crash(first)
    assert agents.engine is not None
    agents.engine.run("rm", "-f", "-t", "0", *agents.containers(task))
    # When the next agent starts
    second = agents.start_agent()
    recovery = second.recover(agents.backend)
    # Then the task is settled at once, as stopped with the stack, at the first agent's last heartbeat
    assert recovery.settled == [task.task_arn]
    assert task._status == "STOPPED"
    assert (task.stop_code, task.stopped_reason) == (STACK_STOPPED_CODE, STACK_STOPPED_REASON)
    [container] = task.containers
    assert (container.exitCode, container.reason) == (None, STACK_STOPPED_CONTAINER_REASON)
    assert task.started_at <= task.stopped_at <= crashed_at
    assert crashed_at - task.stopped_at <= timedelta(seconds=HEARTBEAT_SECONDS + 1)
    assert task.execution_stopped_at == task.stopped_at


def test_a_task_that_never_started_is_started_by_the_next_agent(agents: Agents) -> None:
    # Given a task RunTask accepted whose agent crashed before it started it
    first = agents.start_agent()
    task = agents.accept("echo hello")
    agents.crash(first)
    # When the next agent starts
    second = agents.start_agent()
    recovery = second.recover(agents.backend)
    # Then it runs the task
    assert recovery.restarted == [task.task_arn]
    assert settled(task), agents.lines
    assert (task.stop_code, exit_code(task)) == ("EssentialContainerExited", 0)
    assert agents.stream(task) == ["hello"]


def test_containers_no_task_uses_are_removed(agents: Agents) -> None:
    # Given a container of this stack naming a task it does not know, and one of a task that is stopped
    assert agents.engine is not None
    stopped = agents.accept("true")
    stopped._status = "STOPPED"
    strays = []
    for task_arn in (f"arn:aws:ecs:{REGION}:{agents.account}:task/tasks/unknown", stopped.task_arn):
        created = agents.engine.run(
            "run", "-d", "--label", stack_label(agents.stack_name), "--label", f"{TASK_ARN_LABEL}={task_arn}",
            "--network", "none", BUSYBOX_IMAGE, "sleep", "600",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        strays.append(created.stdout.strip())
    # When an agent starts
    recovery = agents.start_agent().recover(agents.backend)
    # Then both are removed, one log line each, and the stopped task is left as it was
    assert agents.containers() == []
    assert sorted(recovery.removed) == sorted(f"container {stray[:12]}" for stray in strays)
    assert any("not known to this stack" in line for line in agents.lines)
    assert any("already stopped" in line for line in agents.lines)
    assert stopped.stop_code is None


def test_an_adopted_task_that_passes_its_memory_is_killed_for_it(python_agents: Agents) -> None:
    # Given a task whose main process allocates 700 MB of its 512 MiB once its agent crashed
    first = python_agents.start_agent()
    task = python_agents.run(first, "echo up; sleep 2; exec python3 -c \"b = b'x' * (700 * 1024 * 1024)\"")
    assert wait_until(lambda: python_agents.stream(task) == ["up"], SETTLE_SECONDS)
    python_agents.crash(first)
    # When the next agent adopts it
    assert python_agents.start_agent().recover(python_agents.backend).adopted == [task.task_arn]
    # Then it is killed for its memory, as if that agent had started it
    assert settled(task), python_agents.lines
    [container] = task.containers
    assert (task.stop_code, container.exitCode, container.reason) == ("EssentialContainerExited", 137, OOM_REASON)


def test_an_adopted_task_that_ignores_sigterm_is_killed_after_its_stop_timeout(agents: Agents) -> None:
    # Given a running task whose main process ignores SIGTERM (a shell as PID 1), re-adopted after a crash (once it
    # has started: podman starts a container a moment after the agent reports RUNNING)
    first = agents.start_agent()
    task = agents.run(first, "echo up; sleep 600")
    assert wait_until(lambda: agents.stream(task) == ["up"], SETTLE_SECONDS)
    agents.crash(first)
    second = agents.start_agent()
    assert second.recover(agents.backend).adopted == [task.task_arn]
    # When StopTask asks it to stop
    asked = datetime.now(UTC)
    second.on_stop_task(agents.backend, task, "Stopped by the test")
    # Then it is SIGKILLed after the stop timeout and settled as the user asked, its output shipped once
    assert settled(task), agents.lines
    assert (task.stop_code, task.stopped_reason, exit_code(task)) == ("UserInitiated", "Stopped by the test", 137)
    assert agents.stream(task) == ["up"]
    assert task.stopped_at - asked > timedelta(seconds=STOP_TIMEOUT_SECONDS)
    assert task.stopped_at - asked < timedelta(seconds=STOP_TIMEOUT_SECONDS + 5)


def test_in_process_mode_a_host_process_that_outlived_its_agent_is_killed_and_its_task_settled(
    process_agents: Agents,
) -> None:
    # Given a host process of a task whose agent crashed
    marker = f"outlived-{uuid.uuid4().hex}"
    first = process_agents.start_agent()
    task = process_agents.run(first, f"sleep 600 # {marker}")
    process_agents.crash(first)
    assert processes_with(marker) != []
    # When the next agent starts
    recovery = process_agents.start_agent().recover(process_agents.backend)
    # Then the process is gone, the task settled as stopped with the stack, its working directory removed
    assert recovery.settled == [task.task_arn]
    assert wait_until(lambda: processes_with(marker) == [], 10)
    assert (task.stop_code, task.stopped_reason) == (STACK_STOPPED_CODE, STACK_STOPPED_REASON)
    assert any(f"task-{task.id}-" in entry for entry in recovery.removed), recovery.removed
    assert list((process_agents.folder / "tasks").glob(f"task-{task.id}-*")) == []


def test_a_flood_on_both_output_streams_resumes_exactly_where_the_crashed_agent_stopped(agents: Agents) -> None:
    # Given a task writing 10,000 lines a burst to stdout and to stderr, six bursts, whose agent crashes mid-way
    script = (
        "for b in 1 2 3 4 5 6; do seq $((b * 10000 - 9999)) $((b * 10000)) | sed 's/^/o/';"
        " seq $((b * 10000 - 9999)) $((b * 10000)) | sed 's/^/e/' >&2; sleep 0.5; done"
    )
    first = agents.start_agent()
    task = agents.run(first, script)
    assert wait_until(lambda: len(agents.stream(task)) >= 10_000, SETTLE_SECONDS)
    agents.crash(first)
    shipped_before = len(agents.stream(task))
    # When the next agent re-adopts it
    assert agents.start_agent().recover(agents.backend).adopted == [task.task_arn]
    # Then each stream's lines are in the log stream once each, in their order
    assert settled(task), agents.lines
    messages = agents.stream(task)
    assert [m for m in messages if m.startswith("o")] == [f"o{i}" for i in range(1, 60_001)]
    assert [m for m in messages if m.startswith("e")] == [f"e{i}" for i in range(1, 60_001)]
    assert len(messages) == 120_000
    assert 10_000 <= shipped_before < 120_000


def test_a_container_created_but_never_started_is_replaced_and_its_task_started(agents: Agents) -> None:
    # Given a task reported RUNNING whose container never started (podman starts it a moment after the agent
    # reports RUNNING: an agent that stops in that moment leaves it so)
    assert agents.engine is not None
    first = agents.start_agent()
    task = agents.accept("echo fresh")
    task._status, task.started_at = "RUNNING", datetime.now(UTC)
    created = agents.engine.run(
        "create", "--name", f"ecs-task-{task.id}", "--label", stack_label(agents.stack_name),
        "--label", f"{TASK_ARN_LABEL}={task.task_arn}", "--network", "none", BUSYBOX_IMAGE, "echo", "stale",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    agents.crash(first)
    # When the next agent starts
    recovery = agents.start_agent().recover(agents.backend)
    # Then that container is removed and the task started afresh
    assert recovery.restarted == [task.task_arn]
    assert settled(task), agents.lines
    assert (task.stop_code, exit_code(task)) == ("EssentialContainerExited", 0)
    assert agents.stream(task) == ["fresh"]
    assert any("never started" in line for line in agents.lines)
