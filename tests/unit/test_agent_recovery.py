"""What a Fargate agent decides at its start about the tasks the agents before it left (adopt, settle, start
again, remove), how it records its changes and its log position so that a restarted stack can resume, and how it
stops: letting go of tasks that can be adopted, killing those that cannot.

Real moto backends in-process (an account of each test's own), real SQLite in the test's folder, real host
processes; only the launcher is a stand-in where a container engine would be needed.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from moto.ecs.models import ecs_backends

from taskrunner_local.agent import (
    HEARTBEAT_META_KEY,
    STACK_STOPPED_CODE,
    STACK_STOPPED_REASON,
    STDERR,
    STDOUT,
    Adopted,
    FargateAgent,
    Launch,
    LogCursors,
    LogPosition,
    NotStarted,
    Stray,
    _LogShipper,
)
from taskrunner_local.containers import engine_time
from taskrunner_local.persistence.store import StateStore
from tests.support.ecs import REGION, EcsAccount
from tests.support.local_tasks import processes_with, wait_until

#: how long before the tests the tasks of their agents were accepted
TASK_AGE = timedelta(minutes=5)
#: the after-images the stack's hook writes in these tests (the stack itself pickles the whole task)
TASK_KIND = "test-ecs-task"


# ------------------------------------------------------------------------------------------------ a launcher


class OutputExecution:
    """A container as an adopting agent sees it: a process carrying its output (here the output itself), and an
    exit recorded by the engine."""

    def __init__(self, script: str, exit_code: int, finished_at: datetime | None) -> None:
        self.process = subprocess.Popen(
            ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.exit_code = exit_code
        self.finished = finished_at
        self.terminated = False
        self.killed = False
        self.released = False
        self.closed = False

    def terminate(self) -> None:
        self.terminated = True
        self.process.terminate()

    def kill_all(self) -> bool:
        self.killed = True
        if self.process.poll() is None:
            self.process.kill()
        return True

    def leftovers(self) -> list[str]:
        return []

    def exit_status(self, returncode: int) -> tuple[int, bool]:
        return (self.exit_code if not self.terminated else 143), False

    def finished_at(self) -> datetime | None:
        return self.finished

    def release(self) -> None:
        """The command that carried the output ends (here the output's own process: nothing else to end)."""
        self.released = True
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> bool:
        self.closed = True
        self.process.wait()
        return True


@dataclass
class StandInLauncher:
    """Adopts what `left` says a previous agent left of each task; starts nothing but records what it was asked."""

    left: dict[str, OutputExecution | None] = field(default_factory=dict)
    listed: list[Stray] = field(default_factory=list)
    #: tasks whose container was created and never started
    never_started: set[str] = field(default_factory=set)
    adopts: bool = True
    mode: str = "container"
    started: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    shut_down: bool = False

    def describe(self) -> str:
        return "stand-in"

    def prepare(self, launch: Launch) -> None: ...

    def pull(self, launch: Launch) -> None: ...

    def start(self, task: Any, launch: Launch) -> Any:
        self.started.append(task.task_arn)
        execution = OutputExecution("echo started again", 0, None)
        self.left[task.task_arn] = execution
        return execution

    def adopt(self, task: Any, launch: Launch) -> Adopted | None:
        if task.task_arn in self.never_started:
            raise NotStarted("created, never started")
        execution = self.left.get(task.task_arn)
        if execution is None:
            return None
        return Adopted(execution, task.started_at, execution.finished)  # type: ignore[arg-type]

    def kill_leftovers(self, task: Any) -> bool:
        self.killed.append(task.task_arn)
        return True

    def strays(self) -> list[Stray]:
        return self.listed

    def remove_stray(self, stray: Stray) -> bool:
        self.removed.append(stray.key)
        return True

    def sweep(self, stopped: list[Any], live: set[str]) -> list[str]:
        return []

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass
class Recorded:
    """The after-images the stack's hook wrote: one row per task in the store, the statuses in order."""

    store: StateStore
    statuses: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, task: Any) -> None:
        image = {
            "status": task._status,
            "stop_code": task.stop_code,
            "stopped_reason": task.stopped_reason,
            "exit_code": task.containers[0].exitCode,
            **{name: _iso(getattr(task, name, None)) for name in ("started_at", "stopped_at", "pull_started_at")},
        }
        self.store.put(TASK_KIND, task.task_arn, json.dumps(image).encode())
        self.statuses.append((task.task_arn, task._status))


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if isinstance(moment, datetime) else None


@pytest.fixture
def ecs() -> EcsAccount:
    return EcsAccount("unit", task_age=TASK_AGE)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    opened = StateStore(tmp_path / "state")
    yield opened
    opened.close()


def agent_with(ecs: EcsAccount, tmp_path: Path, launcher: Any, **options: Any) -> FargateAgent:
    lines: list[str] = options.pop("lines", [])
    return FargateAgent(
        ecs.aws, work_dir=tmp_path / "tasks", launcher=launcher, on_log=lines.append, stop_timeout_seconds=1, **options
    )


def settled(task: Any) -> bool:
    return wait_until(lambda: task._status == "STOPPED", 15)


# ------------------------------------------------------------------------------------------------ log cursors


def test_a_log_cursor_outlives_its_store_and_resumes_after_the_batch_only_if_the_batch_landed(tmp_path: Path) -> None:
    # Given a batch of 2 stdout and 1 stderr events begun after 3 events shipped, written through one store
    store = StateStore(tmp_path)
    before, after = LogPosition(2, 1, 3), LogPosition(4, 2, 6)
    LogCursors(store).begin("arn:task", before, after)
    store.close()
    # When a new store is opened on the folder
    cursors = LogCursors(reopened := StateStore(tmp_path))
    # Then the stream's event count says where to resume: after the batch when it landed, before it when not
    assert cursors.resume("arn:task", stream_events=6) == after
    assert cursors.resume("arn:task", stream_events=3) == before
    # And a task never shipped resumes at its start, a forgotten one too
    assert cursors.resume("arn:other", stream_events=0) == LogPosition()
    cursors.forget("arn:task")
    assert cursors.resume("arn:task", stream_events=6) == LogPosition(0, 0, 6)
    reopened.close()


def test_keeping_only_the_live_tasks_forgets_the_cursors_of_the_others(store: StateStore) -> None:
    cursors = LogCursors(store)
    for name in ("live", "settled", "gone"):
        cursors.begin(name, LogPosition(), LogPosition(1, 0, 1))
    assert cursors.keep_only({"live"}) == 2
    assert cursors.resume("live", 1) == LogPosition(1, 0, 1)
    assert cursors.resume("settled", 1) == LogPosition(0, 0, 1)


class CountingLogs:
    """The logs side of a shipper: batches received, and a stream that already holds `held` events."""

    def __init__(self, held: int = 0) -> None:
        self.held = held
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def create_log_stream(self, group: str, stream: str) -> None: ...

    def count_log_events(self, group: str, stream: str) -> int:
        return self.held + sum(len(batch) for batch in self.batches)

    def put_log_events(self, group: str, stream: str, events: list[dict[str, Any]]) -> None:
        assert self.gate.wait(30)
        self.batches.append([event["message"] for event in events])


def test_a_resumed_shipper_skips_what_was_shipped_of_each_output_stream_and_ships_the_rest() -> None:
    # Given a cursor: 2 stdout and 1 stderr events shipped, then a batch begun that did not land (3 in the stream)
    cursors = LogCursors(None)
    cursors.begin("arn:task", LogPosition(2, 1, 3), LogPosition(3, 2, 5))
    logs = CountingLogs(held=3)
    # When the task's whole output is read again, the two streams interleaved differently than the first time
    shipper = _LogShipper(logs, "g", "s", task_arn="arn:task", cursors=cursors, resume=True)  # type: ignore[arg-type]
    for text, pipe in [("e1", STDERR), ("o1", STDOUT), ("e2", STDERR), ("o2", STDOUT), ("o3", STDOUT), ("o4", STDOUT)]:
        shipper.put(text, 2, pipe)
    shipper.close()
    # Then only what was not in the stream is shipped, in order, and the cursor moved past it
    assert [line for batch in logs.batches for line in batch] == ["e2", "o3", "o4"]
    assert shipper.position == LogPosition(4, 2, 6)
    assert cursors.resume("arn:task", stream_events=6) == LogPosition(4, 2, 6)


def test_an_abandoned_shipper_ships_nothing_more_and_its_queue_stays_out_of_the_cursor() -> None:
    # Given a shipper whose stream is stalled, with a line queued behind a batch in flight
    cursors = LogCursors(None)
    logs = CountingLogs()
    logs.gate.clear()
    shipper = _LogShipper(logs, "g", "s", task_arn="arn:task", cursors=cursors)  # type: ignore[arg-type]
    shipper.put("one", 3, STDOUT)
    assert wait_until(lambda: cursors.resume("arn:task", 1) == LogPosition(1, 0, 1), 5)  # the batch has begun
    shipper.put("two", 3, STDOUT)
    # When the agent lets go of the task (the batch in flight lands)
    threading.Timer(0.3, logs.gate.set).start()
    shipper.abandon()
    shipper.put("three", 5, STDOUT)
    # Then only the batch in flight landed, and the cursor says so: "two" and "three" are the next agent's
    assert logs.batches == [["one"]]
    assert cursors.resume("arn:task", stream_events=1) == LogPosition(1, 0, 1)
    assert shipper.lost == 0


# ------------------------------------------------------------------------------------------------ recovery


def test_a_running_container_is_adopted_and_settled_from_its_own_exit(
    ecs: EcsAccount, tmp_path: Path, store: StateStore
) -> None:
    # Given a task whose container still runs, writing a line to each stream and exiting 3
    task = ecs.task(status="RUNNING", started=True)
    launcher = StandInLauncher({task.task_arn: OutputExecution("echo out; echo err >&2; exit 3", 3, None)})
    recorded = Recorded(store)
    agent = agent_with(ecs, tmp_path, launcher, store=store, on_task_changed=recorded)
    # When
    recovery = agent.recover(ecs.backend)
    # Then it is adopted, followed to its exit, its output shipped, and every change recorded before STOPPED
    assert recovery.adopted == [task.task_arn]
    assert settled(task)
    assert (task.stop_code, task.containers[0].exitCode) == ("EssentialContainerExited", 3)
    assert sorted(ecs.stream(task)) == ["err", "out"]
    assert [status for _, status in recorded.statuses][-2:] == ["DEPROVISIONING", "STOPPED"]
    assert json.loads(store.get(TASK_KIND, task.task_arn) or b"{}")["exit_code"] == 3
    assert wait_until(lambda: launcher.left[task.task_arn].closed, 5)  # type: ignore[union-attr]


def test_a_container_that_exited_meanwhile_is_stopped_when_it_finished(ecs: EcsAccount, tmp_path: Path) -> None:
    # Given a task whose container exited (0) ten seconds ago, while no agent ran
    finished = datetime.now(UTC) - timedelta(seconds=10)
    task = ecs.task(status="RUNNING", started=True)
    launcher = StandInLauncher({task.task_arn: OutputExecution("echo done", 0, finished)})
    # When
    agent_with(ecs, tmp_path, launcher).recover(ecs.backend)
    # Then its timestamps are the container's
    assert settled(task)
    assert task.execution_stopped_at == task.stopped_at == task.stopping_at == finished
    assert ecs.stream(task) == ["done"]


def test_a_stop_asked_before_the_agent_stopped_is_carried_out_on_the_adopted_container(
    ecs: EcsAccount, tmp_path: Path
) -> None:
    # Given a running task StopTask was asked to stop just before its agent stopped
    task = ecs.task(status="RUNNING", started=True)
    task.desired_status, task.stopped_reason, task.stopping_at = "STOPPED", "Cancelled", datetime.now(UTC)
    execution = OutputExecution("sleep 30", 0, None)
    agent = agent_with(ecs, tmp_path, StandInLauncher({task.task_arn: execution}))
    # When
    agent.recover(ecs.backend)
    # Then the new agent stops it, as the user asked
    assert settled(task)
    assert execution.terminated
    assert (task.stop_code, task.stopped_reason) == ("UserInitiated", "Cancelled")


def test_a_task_with_nothing_left_is_settled_at_the_last_heartbeat_of_the_agents_before(
    ecs: EcsAccount, tmp_path: Path
) -> None:
    # Given a running task with nothing left of it, and the heartbeat of the agent that ran it, in its store
    task = ecs.task(status="RUNNING", started=True)
    store = StateStore(tmp_path / "state")
    last_beat = datetime.now(UTC) - timedelta(seconds=30)
    store.set_meta(HEARTBEAT_META_KEY, last_beat.isoformat())
    store.close()
    # When an agent starts on the store, opened again
    store = StateStore(tmp_path / "state")
    agent = agent_with(ecs, tmp_path, StandInLauncher(), store=store)
    recovery = agent.recover(ecs.backend)
    # Then the task is settled as stopped with the stack, at that heartbeat
    assert recovery.settled == [task.task_arn]
    assert (task._status, task.stop_code, task.stopped_reason) == ("STOPPED", STACK_STOPPED_CODE, STACK_STOPPED_REASON)
    assert task.stopped_at == task.execution_stopped_at == last_beat
    assert task.containers[0].exitCode is None
    # And the new agent beats: the next one will read a later moment
    assert agent.last_alive == last_beat
    recorded = store.meta(HEARTBEAT_META_KEY)
    assert recorded is not None and datetime.fromisoformat(recorded) > last_beat
    agent.shutdown()
    store.close()


def test_without_a_heartbeat_a_lost_task_stops_at_its_own_last_recorded_moment(ecs: EcsAccount, tmp_path: Path) -> None:
    task = ecs.task(status="RUNNING", started=True)
    agent_with(ecs, tmp_path, StandInLauncher()).recover(ecs.backend)
    assert task.stopped_at == task.started_at


def test_a_task_that_never_started_is_started_again_and_one_asked_to_stop_is_stopped(
    ecs: EcsAccount, tmp_path: Path
) -> None:
    # Given a task accepted but not started, and another StopTask stopped before it started
    waiting = ecs.task(status="PENDING")
    cancelled = ecs.task(status="PROVISIONING")
    cancelled.desired_status, cancelled.stopped_reason = "STOPPED", "Cancelled early"
    launcher = StandInLauncher()
    # When
    recovery = agent_with(ecs, tmp_path, launcher).recover(ecs.backend)
    # Then the first runs now, the second is settled as the user asked
    assert (recovery.restarted, recovery.settled) == ([waiting.task_arn], [cancelled.task_arn])
    assert settled(waiting)
    assert launcher.started == [waiting.task_arn]
    assert (waiting.stop_code, waiting.containers[0].exitCode) == ("EssentialContainerExited", 0)
    assert (cancelled._status, cancelled.stop_code, cancelled.stopped_reason) == (
        "STOPPED",
        "UserInitiated",
        "Cancelled early",
    )


def test_a_task_reported_running_whose_container_never_started_is_started_again(
    ecs: EcsAccount, tmp_path: Path
) -> None:
    # Given a task reported RUNNING whose container was created and never started
    task = ecs.task(status="RUNNING", started=True)
    launcher = StandInLauncher(never_started={task.task_arn})
    # When
    recovery = agent_with(ecs, tmp_path, launcher).recover(ecs.backend)
    # Then it is started afresh: it never ran
    assert recovery.restarted == [task.task_arn]
    assert settled(task)
    assert launcher.started == [task.task_arn]
    assert ecs.stream(task) == ["started again"]


def test_only_containers_no_task_left_to_recover_uses_are_swept(ecs: EcsAccount, tmp_path: Path) -> None:
    # Given containers of a running task, of a stopped one, of a task unknown to the stack and of none
    running, stopped = ecs.task(status="RUNNING", started=True), ecs.task(status="STOPPED", started=True)
    launcher = StandInLauncher(
        {running.task_arn: OutputExecution("sleep 0.2", 0, None)},
        listed=[
            Stray("container c1", "c1", running.task_arn),
            Stray("container c2", "c2", stopped.task_arn),
            Stray("container c3", "c3", f"arn:aws:ecs:{REGION}:{ecs.account}:task/tasks/unknown"),
            Stray("container c4", "c4", ""),
        ],
    )
    lines: list[str] = []
    # When
    recovery = agent_with(ecs, tmp_path, launcher, lines=lines).recover(ecs.backend)
    # Then the running task's container is adopted, not swept; each other one is removed with one log line
    assert recovery.adopted == [running.task_arn]
    assert launcher.removed == ["c2", "c3", "c4"]
    assert recovery.removed == ["container c2", "container c3", "container c4"]
    removals = [line for line in lines if line.startswith("removed container")]
    assert ["already stopped" in removals[0], "not known to this stack" in removals[1], "unnamed" in removals[2]] == [
        True,
        True,
        True,
    ]
    assert stopped.stop_code is None  # left as it was
    assert settled(running)


def test_a_failing_hook_is_logged_and_the_task_still_settles(ecs: EcsAccount, tmp_path: Path) -> None:
    task = ecs.task(status="RUNNING", started=True)
    lines: list[str] = []

    def broken(changed: Any) -> None:
        raise OSError("disk full")

    agent_with(ecs, tmp_path, StandInLauncher(), on_task_changed=broken, lines=lines).recover(ecs.backend)
    assert task._status == "STOPPED"
    assert any("could not record the change" in line and "disk full" in line for line in lines)


def test_a_restarted_stack_settles_a_host_process_task_from_what_its_store_and_fresh_backends_hold(
    ecs: EcsAccount, tmp_path: Path
) -> None:
    # Given a process-mode task running, every change of it written through one store, and the agent crashed
    store = StateStore(tmp_path / "state")
    recorded = Recorded(store)
    first = FargateAgent(ecs.aws, work_dir=tmp_path / "tasks", store=store, on_task_changed=recorded)
    marker = f"restored-{uuid.uuid4().hex}"
    task = ecs.task(f"echo up; sleep 60 # {marker}")
    first.on_run_task(ecs.backend, [task])
    assert wait_until(lambda: task._status == "RUNNING" and ecs.stream(task) == ["up"], 15)
    first.detach()
    store.close()
    image = json.loads(StateStore(tmp_path / "state").get(TASK_KIND, task.task_arn) or b"{}")
    # When the stack starts again: fresh moto backends, the task restored from its last after-image, a new store
    ecs_backends[ecs.account].reset()
    restored_ecs = EcsAccount("unit", account=ecs.account, task_age=TASK_AGE)
    restored = restored_ecs.task(f"echo up; sleep 60 # {marker}", status=image["status"])
    restored.id = task.id
    restored.local_process_group = task.local_process_group
    for name in ("started_at", "pull_started_at"):
        setattr(restored, name, datetime.fromisoformat(image[name]))
    restored_ecs.backend.tasks[restored_ecs.cluster.name] = {restored.task_arn: restored}
    store = StateStore(tmp_path / "state")
    second = FargateAgent(restored_ecs.aws, work_dir=tmp_path / "tasks", store=store, on_task_changed=Recorded(store))
    recovery = second.recover(restored_ecs.backend)
    # Then its process is killed, its task settled as stopped with the stack, its directory gone
    assert recovery.settled == [restored.task_arn]
    assert (restored.stop_code, restored.stopped_reason) == (STACK_STOPPED_CODE, STACK_STOPPED_REASON)
    assert json.loads(store.get(TASK_KIND, restored.task_arn) or b"{}")["status"] == "STOPPED"
    assert list((tmp_path / "tasks").iterdir()) == []
    assert wait_until(lambda: processes_with(marker) == [], 5)
    assert not second.limits.kill_leftover_cgroup(task.id)  # its cgroup is gone too
    second.shutdown()
    store.close()


# ------------------------------------------------------------------------------------------------ stopping


def test_a_durable_stop_lets_go_of_adoptable_tasks_without_touching_them(ecs: EcsAccount, tmp_path: Path) -> None:
    # Given an agent following a running container
    task = ecs.task(status="RUNNING", started=True)
    execution = OutputExecution("sleep 30", 0, None)
    launcher = StandInLauncher({task.task_arn: execution})
    agent = agent_with(ecs, tmp_path, launcher)
    agent.recover(ecs.backend)
    # When the durable stack stops
    assert agent.shutdown(keep_running=True) == 1
    # Then the container was let go of, not killed, and the task is left RUNNING for the next agent
    assert execution.released and not execution.killed and not execution.closed
    assert task._status == "RUNNING" and not launcher.shut_down


@pytest.mark.parametrize("keep_running", [False, True])
def test_a_stop_kills_tasks_that_cannot_be_adopted_and_settles_them_as_stopped_with_the_stack(
    ecs: EcsAccount, tmp_path: Path, keep_running: bool
) -> None:
    # Given an agent of host processes (they cannot be adopted) running a task
    task = ecs.task(status="RUNNING", started=True)
    execution = OutputExecution("sleep 30", 0, None)
    launcher = StandInLauncher({task.task_arn: execution}, adopts=False)
    agent = agent_with(ecs, tmp_path, launcher)
    agent.recover(ecs.backend)
    # When the stack stops, durable or not
    agent.shutdown(keep_running=keep_running)
    # Then the task is killed and settled
    assert execution.killed and launcher.shut_down
    assert (task._status, task.stop_code, task.stopped_reason) == ("STOPPED", STACK_STOPPED_CODE, STACK_STOPPED_REASON)


def test_a_task_waiting_for_a_slot_is_left_unstarted_when_the_agent_lets_go(ecs: EcsAccount, tmp_path: Path) -> None:
    # Given an agent with one slot, taken by a running task, and a second task waiting for it
    launcher = StandInLauncher()
    agent = agent_with(ecs, tmp_path, launcher, max_running_tasks=1)
    busy = ecs.task(status="RUNNING", started=True)
    launcher.left[busy.task_arn] = OutputExecution("sleep 30", 0, None)
    agent.recover(ecs.backend)
    waiting = ecs.task()
    agent.on_run_task(ecs.backend, [waiting])
    # When the agent crashes
    agent.detach()
    # Then the waiting task was not started, and a task accepted afterwards is left for the next agent too
    late = ecs.task()
    agent.on_run_task(ecs.backend, [late])
    assert launcher.started == []
    assert (waiting._status, late._status) == ("PROVISIONING", "PROVISIONING")


# ------------------------------------------------------------------------------------------------ the engine's times


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-28T11:11:20.513609383Z", datetime(2026, 11, 28, 11, 11, 20, 513609, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_the_engines_times_are_read_to_the_microsecond_and_its_zero_time_is_none(
    value: object, expected: datetime | None
) -> None:
    assert engine_time(value) == expected
