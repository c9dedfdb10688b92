"""The local Fargate agent: runs every ECS task started in the emulator, as a local process (process mode, the
default) or as an OCI container of its image (container mode, `containers.py`).

It behaves like Fargate where a user can see it (DESIGN §3): the lifecycle timestamps, `lastStatus`,
`stopCode`, `stoppedReason` and container `exitCode`/`reason`; the memory limit (exit 137, reason
`OutOfMemoryError…`); StopTask as SIGTERM to every process of the task, then SIGKILL after the stop timeout; a
command that cannot start as `TaskFailedToStart`; stdout and stderr into the task's awslogs stream the way the
awslogs driver writes them; "ECS Task State Change" events to EventBridge; and no process left behind. That
lifecycle is shared by both modes; a `Launcher` only gets a task's image ready, starts its essential container
and stops it. In process mode the image is recorded, not pulled: the command runs on the host, in a fresh working
directory.

As on ECS, the task stops when its essential container's main process exits, and then every process of the
task dies: a daemon it left (`setsid`, a double fork) neither keeps the task running nor survives it. The
task's cgroup (see `limits.py`) is how the agent finds them all. Whatever goes wrong inside the agent, the
task is settled (stopped, with a reason naming the error) and its processes, cgroup and directory are gone.

The agent outlives itself where the stack is durable: every change it makes to a task goes to `on_task_changed`
(the stack writes the task to its state store), and a task's container keeps running when the agent crashes or
the stack stops cleanly (`shutdown(keep_running=True)`). The next agent's `recover` re-adopts what still runs
(and resumes its log stream where the last one stopped, see `LogCursors`), settles what exited meanwhile from
the container's own record, settles what vanished as stopped with the stack (`TerminationNotice`), starts again
what never started, and removes whatever of the old stack no task uses.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from taskrunner_local.aws_inside import AwsInside, iso_timestamp
from taskrunner_local.limits import LimitsFactory, TaskLimits

if TYPE_CHECKING:
    from taskrunner_local.persistence.store import StateStore

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
PASSED_HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")

#: CloudWatch Logs counts each event as its UTF-8 message plus 26 bytes.
LOG_EVENT_OVERHEAD_BYTES = 26
#: The awslogs driver's maximumBytesPerEvent: CloudWatch's 256 KiB event limit minus the overhead. A longer
#: line becomes several events.
LOG_EVENT_MAX_BYTES = 262_144 - LOG_EVENT_OVERHEAD_BYTES
#: PutLogEvents' limits: events per batch, and bytes per batch counting the overhead of each event.
LOG_BATCH_MAX_EVENTS = 10_000
LOG_BATCH_MAX_BYTES = 1_048_576
LOG_FLUSH_SECONDS = 0.2
#: What one task's output may hold of the agent's memory while its log stream is behind, counted as
#: CloudWatch counts it; past it the agent stops reading the task's pipes, so the task's writes block, as a
#: container runtime's do. (A batch being shipped, a partial line per stream and the pipes come on top.)
LOG_QUEUE_MAX_BYTES = 1_048_576
LOG_QUEUE_MAX_EVENTS = 10_000
LOG_READ_BYTES = 65_536
#: After the main process exited (and every other process of the task was killed), how long the agent keeps
#: reading the pipes for what is still in them before it closes them: only a process outside the task can hold
#: them open longer.
LOG_DRAIN_SECONDS = 1.0
#: How often the agent looks at a stop timeout running out while it waits on the task.
SUPERVISE_POLL_SECONDS = 0.25

#: The output streams of a task's essential container, as the log cursor counts them.
STDOUT, STDERR = 0, 1
#: How often the agent writes down that it is alive (in the state store's meta table, under this key): a task
#: whose container vanished while no agent ran is settled as stopped at the last such moment.
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_META_KEY = "fargate_agent.alive_at"
#: A task the local stack could not follow to its end (its container, or its host process, is gone when the stack
#: starts again; or process mode's stack stops): ECS's code for a task stopped because its host went away.
STACK_STOPPED_CODE = "TerminationNotice"
STACK_STOPPED_REASON = "Task stopped: the local stack stopped while the task was running"
STACK_STOPPED_CONTAINER_REASON = "The local stack stopped while the container was running"
#: How long letting go of the tasks waits for a container being created (the next agent must find it).
START_GATE_SECONDS = 60.0
#: How long letting go of the tasks waits for each task's thread to unwind once its output is no longer read.
LET_GO_JOIN_SECONDS = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


def _camel(value: Any) -> Any:
    """Keys of the task definition as moto stores them, whichever casing they were registered in."""
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


@dataclass
class Launch:
    """What the agent needs to run one ECS task, resolved from its task definition and overrides."""

    #: the entry point and command together (what process mode runs), None when neither is given
    command: list[str] | None
    image: str
    #: the container definition's entryPoint ([]: the image's own)
    entry_point: list[str]
    #: the overridden command, else the container definition's (None: the image's CMD)
    arguments: list[str] | None
    environment: dict[str, str]
    cpu_units: int
    memory_mib: int
    ephemeral_storage_gib: int
    log_group: str | None
    log_stream: str | None
    stop_timeout: float
    container_name: str
    #: linuxParameters.initProcessEnabled: an init process is PID 1 and forwards signals to the command
    init_process: bool = False
    #: runtimePlatform.cpuArchitecture: X86_64 or ARM64
    architecture: str = "X86_64"


class StartError(Exception):
    """The task cannot start (its stop code is TaskFailedToStart); the message is its stoppedReason."""


class ImageNotPresent(StartError):
    """`start` found the task's image missing: the agent pulls it (`Launcher.pull`) and starts the task again.
    The message is the stoppedReason should the image still be missing after the pull."""


class NotStarted(Exception):
    """`Launcher.adopt` found what a previous agent made of the task (a container) but it never started, and
    removed it: the task never ran, and the agent starts it again."""


@dataclass(frozen=True)
class Stray:
    """Something of this stack a launcher found running that no agent of this process started (a previous agent
    crashed or was replaced), and the ECS task it belongs to ("" when it does not say)."""

    #: for the agent's log, e.g. "container 0123456789ab"
    what: str
    #: what the launcher removes it by
    key: str
    task_arn: str


class Execution(Protocol):
    """One started task, as the agent supervises it."""

    #: the host process whose stdout and stderr carry the task's output and whose exit ends the task
    process: subprocess.Popen[bytes]

    def terminate(self) -> None:
        """StopTask: SIGTERM to the task now (the agent calls `kill_all` once the stop timeout runs out)."""

    def kill_all(self) -> bool:
        """SIGKILL every process of the task; True when none is left."""

    def leftovers(self) -> list[str]:
        """What of the task could not be killed (for the agent's log)."""

    def exit_status(self, returncode: int) -> tuple[int, bool]:
        """The essential container's exit code and whether it was killed for memory, once `process` exited
        with `returncode`."""

    def finished_at(self) -> datetime | None:
        """When the essential container's main process exited, as its runtime recorded it (known after
        `exit_status`); None when only the agent saw it exit."""

    def release(self) -> None:
        """The agent lets go of the task and the task keeps running (an agent crash, a durable stack's stop): end
        what this agent runs to follow it (never the task), so that the next agent can adopt it."""

    def close(self) -> bool:
        """Kill and remove whatever is left of the task; True when nothing was left behind."""


@dataclass(frozen=True)
class Adopted:
    """A task a previous agent started whose container is still there: this agent supervises it from now on."""

    #: `process` carries the container's whole output, from its start, and ends when the container exits
    execution: Execution
    #: when the container started, as its runtime recorded it
    started_at: datetime | None
    #: when it exited, if it exited while no agent ran; None while it still runs
    finished_at: datetime | None


class Launcher(Protocol):
    """How the agent runs tasks: as host processes (`ProcessLauncher`) or containers (`containers.py`)."""

    mode: str
    #: whether a task outlives its agent and the next agent adopts it (containers); tasks that cannot be adopted
    #: (host processes) are killed when the stack stops
    adopts: bool

    def describe(self) -> str:
        """One line for the banner: how tasks run."""

    def prepare(self, launch: Launch) -> None:
        """Get the task's image ready (between pullStartedAt and pullStoppedAt); raises StartError."""

    def pull(self, launch: Launch) -> None:
        """Pull the image `start` found missing (ImageNotPresent); raises StartError."""

    def start(self, task: Any, launch: Launch) -> Execution:
        """Start the task's essential container; raises StartError when it cannot start, ImageNotPresent when
        its image is not there."""

    def adopt(self, task: Any, launch: Launch) -> Adopted | None:
        """What a previous agent started of `task` and is still there (running, or exited since), to supervise;
        None when nothing can be adopted (what is left is then `kill_leftovers`' to remove); raises NotStarted
        when what is there never started."""

    def kill_leftovers(self, task: Any) -> bool:
        """Kill what a previous agent left running of `task`; True when nothing is left."""

    def strays(self) -> list[Stray]:
        """What of this stack is running or left over, whichever agent started it (the agent leaves out its own)."""

    def remove_stray(self, stray: Stray) -> bool:
        """Stop and remove `stray`; True when it is gone."""

    def sweep(self, stopped: list[Any], live: set[str]) -> list[str]:
        """At an agent's start: remove what a previous agent left of the `stopped` tasks and whatever files no
        task of `live` (task ids) uses; what was removed, for the agent's log."""

    def shutdown(self) -> None:
        """The stack stops: remove whatever of this launcher's tasks is still there."""


def ecs_environment(launch: Launch, region: str) -> dict[str, str]:
    """The variables Fargate gives a task's container, then the task's own (which win)."""
    return {
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        "ECS_CONTAINER_NAME": launch.container_name,
        **launch.environment,
    }


@dataclass
class _RunningTask:
    task: Any
    backend: Any
    stop_requested: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None
    #: the stopCode a requested stop settles the task with: StopTask's, or the stack's own stop
    stop_code: str = "UserInitiated"
    stop_requested_at: datetime | None = None
    execution: Execution | None = None
    thread: threading.Thread | None = None
    stop_timeout: float = 30.0
    shipper: _LogShipper | None = None
    #: when (monotonic) every process of a task that was asked to stop gets SIGKILL
    kill_at: float | None = None
    terminated: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: a task a previous agent started, which this one supervises from now on, and how it was launched
    adopted: Adopted | None = None
    launch: Launch | None = None
    #: whether the task holds one of the agent's `max_running_tasks` slots
    holds_slot: bool = False


def _event_text(piece: bytes) -> tuple[str, int]:
    """A piece of output as an event's message, and the message's size as CloudWatch counts it (UTF-8 bytes;
    an undecodable byte becomes U+FFFD, three bytes)."""
    try:
        return piece.decode("utf-8"), len(piece)
    except UnicodeDecodeError:
        text = piece.decode("utf-8", errors="replace")
        return text, len(text.encode("utf-8"))


def _char_boundary(data: bytes | bytearray, start: int, end: int) -> int:
    """`end`, moved back (at most three bytes, never to `start`) so that it does not cut a UTF-8 character."""
    cut = end
    while cut > start + 1 and end - cut < 3 and 0x80 <= data[cut] < 0xC0:  # a continuation byte
        cut -= 1
    return cut if cut > start and not 0x80 <= data[cut] < 0xC0 else end


def _take_event(data: bytes | bytearray, start: int) -> tuple[int, str, int]:
    """The longest piece of `data` from `start` that makes one event of at most LOG_EVENT_MAX_BYTES, cut
    between characters where the bytes are UTF-8: its end, its message and its size."""
    end = min(len(data), start + LOG_EVENT_MAX_BYTES)
    while True:
        if end < len(data):
            end = _char_boundary(data, start, end)
        text, size = _event_text(bytes(data[start:end]))
        if size <= LOG_EVENT_MAX_BYTES:
            return end, text, size
        # undecodable bytes grew it (each to three): shrink it in proportion, then cut between characters again
        end = start + max(1, min(end - start - 1, (end - start) * LOG_EVENT_MAX_BYTES // size))


class _LineSplitter:
    """One output stream into log events the way the awslogs driver makes them: a line is an event (without
    its newline), a line longer than LOG_EVENT_MAX_BYTES becomes several, and a partial line is never held
    beyond one event's worth."""

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, int]]:
        events: list[tuple[str, int]] = []
        lines = data.split(b"\n")
        for index, line in enumerate(lines[:-1]):
            if index == 0 and self._partial:
                self._partial += line
                complete: bytes | bytearray = self._partial
                self._partial = bytearray()
            else:
                complete = line
            events += self._line(complete[:-1] if complete.endswith(b"\r") else complete)
        self._partial += lines[-1]
        while len(self._partial) > LOG_EVENT_MAX_BYTES:  # a line this long is several events
            end, text, size = _take_event(self._partial, 0)
            events.append((text, size))
            del self._partial[:end]
        return events

    def flush(self) -> list[tuple[str, int]]:
        """The last line of a stream that ended without a newline."""
        if not self._partial:
            return []
        events = self._line(self._partial)
        self._partial = bytearray()
        return events

    @staticmethod
    def _line(line: bytes | bytearray) -> list[tuple[str, int]]:
        if len(line) <= LOG_EVENT_MAX_BYTES:
            text, size = _event_text(bytes(line))
            if size <= LOG_EVENT_MAX_BYTES:
                return [(text, size)]
        events = []
        start = 0
        while start < len(line):
            start, text, size = _take_event(line, start)
            events.append((text, size))
        return events


@dataclass(frozen=True)
class LogPosition:
    """How far a task's output has been shipped: the events taken from each of its container's output streams
    (which its runtime keeps whole: where a re-adopting agent resumes), and the events in its log stream."""

    stdout: int = 0
    stderr: int = 0
    stream: int = 0

    def taken(self, pipe: int) -> int:
        return self.stdout if pipe == STDOUT else self.stderr


_LOG_CURSOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS fargate_log_cursor (
    task_arn TEXT PRIMARY KEY,
    stdout_before INTEGER NOT NULL,
    stderr_before INTEGER NOT NULL,
    stream_before INTEGER NOT NULL,
    stdout_after INTEGER NOT NULL,
    stderr_after INTEGER NOT NULL,
    stream_after INTEGER NOT NULL
) WITHOUT ROWID
"""


class LogCursors:
    """Where each task's log shipping stands, so that an agent re-adopting a task ships each line of its output
    exactly once: the lines the old agent shipped are skipped, the ones it had read but not shipped (or not read)
    are shipped, read again from the container runtime's own record of the output (`podman logs`).

    Before each PutLogEvents batch the shipper writes down the position before and after it; at re-adoption the
    number of events in the log stream says whether that batch landed. The position is not written in one
    transaction with the batch: the logs part writes the batch under its own lock, and holding the store's writer
    across that call would take the two locks in the opposite order from every request thread. Without a state
    store the cursors live in this object only: an agent that adopts a task another agent shipped ships its output
    again from its start (the stack always gives its agent a store)."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store
        self._memory: dict[str, tuple[LogPosition, LogPosition]] = {}
        if store is not None:
            store.ensure_schema(_LOG_CURSOR_SCHEMA)

    def begin(self, task_arn: str, before: LogPosition, after: LogPosition) -> None:
        """A batch taking the position from `before` to `after` is about to be put (durable when this returns)."""
        if self.store is None:
            self._memory[task_arn] = (before, after)
            return
        with self.store.transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO fargate_log_cursor VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task_arn, before.stdout, before.stderr, before.stream, after.stdout, after.stderr, after.stream),
            )

    def resume(self, task_arn: str, stream_events: int) -> LogPosition:
        """Where shipping resumes, given the events now in the task's log stream: after the last batch if it
        landed, before it if not; from the start when nothing was ever shipped."""
        recorded = self._load(task_arn)
        if recorded is None:
            return LogPosition(stream=stream_events)
        before, after = recorded
        position = after if stream_events >= after.stream else before
        return LogPosition(position.stdout, position.stderr, stream_events)

    def _load(self, task_arn: str) -> tuple[LogPosition, LogPosition] | None:
        if self.store is None:
            return self._memory.get(task_arn)
        with self.store.reading() as connection:
            row = connection.execute(
                "SELECT stdout_before, stderr_before, stream_before, stdout_after, stderr_after, stream_after "
                "FROM fargate_log_cursor WHERE task_arn = ?",
                (task_arn,),
            ).fetchone()
        return None if row is None else (LogPosition(*row[:3]), LogPosition(*row[3:]))

    def forget(self, task_arn: str) -> None:
        """The task is settled and its container gone: its output will never be read again."""
        if self.store is None:
            self._memory.pop(task_arn, None)
            return
        with self.store.transaction() as connection:
            connection.execute("DELETE FROM fargate_log_cursor WHERE task_arn = ?", (task_arn,))

    def keep_only(self, task_arns: set[str]) -> int:
        """Forget every task but these (the ones still running); how many were forgotten."""
        if self.store is None:
            gone = set(self._memory) - task_arns
            for task_arn in gone:
                del self._memory[task_arn]
            return len(gone)
        with self.store.reading() as connection:
            recorded = {row[0] for row in connection.execute("SELECT task_arn FROM fargate_log_cursor")}
        gone = recorded - task_arns
        if gone:
            with self.store.transaction() as connection:
                connection.executemany("DELETE FROM fargate_log_cursor WHERE task_arn = ?", [(a,) for a in gone])
        return len(gone)


class _LogShipper:
    """Ships one task's output to its awslogs stream, in order, in PutLogEvents batches within CloudWatch's
    limits. Its queue is bounded: `put` blocks while the stream is behind (backpressure).

    With `cursors`, each batch of container output is recorded (`LogCursors`) before it is put; a shipper that
    `resume`s a task another agent started skips the events that agent shipped, as counted per output stream."""

    def __init__(
        self,
        aws: AwsInside,
        group: str | None,
        stream: str | None,
        *,
        task_arn: str = "",
        cursors: LogCursors | None = None,
        resume: bool = False,
    ) -> None:
        self.aws = aws
        self.group = group
        self.stream = stream
        self.task_arn = task_arn
        self.cursors = cursors
        self._events: collections.deque[tuple[int, str, int, int | None]] = collections.deque()
        self._queued_bytes = 0
        self._changed = threading.Condition()
        self._closed = False
        self._dead = False
        self._abandoned = False
        self._last_ms = 0
        self.lost = 0
        self.error: BaseException | None = None
        #: why the log cursor could not be written (the lines were still shipped)
        self.cursor_error: Exception | None = None
        self.position = LogPosition()
        if group and stream:
            aws.create_log_stream(group, stream)
            if resume and cursors is not None:
                self.position = cursors.resume(task_arn, aws.count_log_events(group, stream))
        #: events of each output stream still to skip: the previous agent shipped them
        self._skip = [self.position.stdout, self.position.stderr]
        self._thread = threading.Thread(target=self._ship, daemon=True, name=f"logs-{stream}")
        self._thread.start()

    def line(self, text: str) -> None:
        """A line of the agent's own (a start error), not of the container's output."""
        self.put(text, len(text.encode("utf-8")))

    def put(self, text: str, size: int, pipe: int | None = None) -> None:
        """Queue one event of the container's output stream `pipe` (None: the agent's own line)."""
        cost = size + LOG_EVENT_OVERHEAD_BYTES
        with self._changed:
            if pipe is not None and self._skip[pipe] > 0:  # already in the stream
                self._skip[pipe] -= 1
                return
            while not self._dead and (
                len(self._events) >= LOG_QUEUE_MAX_EVENTS
                or (self._events and self._queued_bytes + cost > LOG_QUEUE_MAX_BYTES)
            ):
                self._changed.wait(1.0)
            if self._abandoned:  # the next agent ships it
                return
            if self._dead:  # nothing ships any more: count the line, do not block the task forever
                self.lost += 1
                return
            stamp = max(self._last_ms, int(time.time() * 1000))
            self._last_ms = stamp
            self._events.append((stamp, text, cost, pipe))
            self._queued_bytes += cost
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed or self._abandoned

    def close(self) -> None:
        """Ship what is queued and stop; returns once every line is in the log stream."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def abandon(self) -> None:
        """Stop at once, shipping nothing more (the agent crashed or lets go of the task): what is queued stays
        out of the stream and out of the cursor, for the next agent to ship. Returns once no batch is in flight."""
        with self._changed:
            self._abandoned = True
            self._dead = True
            self._changed.notify_all()
        self._thread.join()

    def _ship(self) -> None:
        try:
            self._ship_batches()
        except BaseException as exc:  # the agent reports it; the task's output must never block on it
            self.error = exc
        finally:
            with self._changed:  # from now on a line is counted lost, never waited on
                self._dead = True
                if not self._abandoned:
                    self.lost += len(self._events)
                self._events.clear()
                self._changed.notify_all()

    def _ship_batches(self) -> None:
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        taken = [0, 0]  # events of each output stream in the batch
        deadline: float | None = None
        while True:
            with self._changed:
                while not self._events and not self._closed and not self._abandoned:
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    self._changed.wait(timeout)
                if self._abandoned:
                    return
                while self._events and len(batch) < LOG_BATCH_MAX_EVENTS:
                    stamp, text, cost, pipe = self._events[0]
                    if batch_bytes + cost > LOG_BATCH_MAX_BYTES:
                        break
                    self._events.popleft()
                    self._queued_bytes -= cost
                    batch.append({"timestamp": stamp, "message": text})
                    batch_bytes += cost
                    if pipe is not None:
                        taken[pipe] += 1
                self._changed.notify_all()
                full = bool(self._events)  # what is left did not fit in this batch
                done = self._closed and not self._events
            if batch and deadline is None:
                deadline = time.monotonic() + LOG_FLUSH_SECONDS
            if batch and (full or done or (deadline is not None and time.monotonic() >= deadline)):
                self._put(batch, taken)
                batch, batch_bytes, taken, deadline = [], 0, [0, 0], None
            if done:
                return

    def _put(self, batch: list[dict[str, Any]], taken: list[int]) -> None:
        if not (self.group and self.stream):
            return
        before = self.position
        after = LogPosition(before.stdout + taken[STDOUT], before.stderr + taken[STDERR], before.stream + len(batch))
        if self.cursors is not None:
            try:
                self.cursors.begin(self.task_arn, before, after)
            except Exception as exc:  # the lines matter more than resuming exactly after a crash
                self.cursor_error = exc
        for attempt in range(5):
            try:
                self.aws.put_log_events(self.group, self.stream, batch)
                self.position = after
                return
            except Exception:  # keep the lines; the endpoint may be busy
                time.sleep(0.1 * (attempt + 1))
        self.lost += len(batch)
        # the lines are out of the stream: the position moves past them in the output, not in the stream
        self.position = LogPosition(after.stdout, after.stderr, before.stream)


class _ProcessExecution:
    """A task running as a host process, in its own cgroups (see `limits.py`) and working directory."""

    def __init__(self, process: subprocess.Popen[bytes], limits: TaskLimits, workdir: Path) -> None:
        self.process = process
        self.limits = limits
        self.workdir = workdir

    def terminate(self) -> None:
        self.limits.signal_all(signal.SIGTERM)

    def kill_all(self) -> bool:
        return self.limits.kill_all()

    def leftovers(self) -> list[str]:
        return [str(pid) for pid in self.limits.processes()]

    def exit_status(self, returncode: int) -> tuple[int, bool]:
        return (128 - returncode if returncode < 0 else returncode), self.limits.oom_killed()

    def finished_at(self) -> datetime | None:
        return None

    def release(self) -> None:
        """Nothing to end: the task's output comes straight from its processes, which the next agent kills (a host
        process cannot be re-adopted: its exit status goes to this process only)."""

    def close(self) -> bool:
        try:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
            return self.limits.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


#: process mode's working directories: `task-<ecs task id>-<random>` in the agent's work_dir
_TASK_DIR_PREFIX = "task-"


class ProcessLauncher:
    """Process mode: the task's command runs on the host, in a fresh working directory and its own cgroups; the
    image is recorded, not pulled. Only the fallback where no container engine works: no isolation from the host.

    A task's processes are not adopted by the next agent: nothing but their parent can learn their exit status,
    and their output went to pipes of the agent that is gone. They are killed (every process in the task's
    cgroup) and the task is settled as stopped with the stack."""

    mode = "process"
    adopts = False

    def __init__(self, work_dir: Path, region: str, limits: LimitsFactory) -> None:
        self.work_dir = work_dir
        self.region = region
        self.limits = limits

    def describe(self) -> str:
        return f"host processes (process mode, {self.limits.kind} limits; images are not pulled, no isolation)"

    def prepare(self, launch: Launch) -> None:
        if not launch.command:
            raise StartError(
                "CannotStartContainerError: the task has no command; local process mode runs only tasks with a command"
            )

    def pull(self, launch: Launch) -> None:
        """Images are not pulled in process mode."""

    def strays(self) -> list[Stray]:
        """A previous agent's tasks are found from the emulator's tasks (`kill_leftovers`), not listed."""
        return []

    def remove_stray(self, stray: Stray) -> bool:
        return True

    def adopt(self, task: Any, launch: Launch) -> Adopted | None:
        return None

    def start(self, task: Any, launch: Launch) -> Execution:
        workdir = Path(tempfile.mkdtemp(prefix=f"{_TASK_DIR_PREFIX}{task.id}-", dir=self.work_dir))
        limits: TaskLimits | None = None
        try:
            limits = self.limits.for_task(task.id, launch.memory_mib * 1024 * 1024, launch.cpu_units / 1024)
            environment = {k: os.environ[k] for k in PASSED_HOST_VARIABLES if k in os.environ}
            environment["HOME"] = str(workdir)
            environment.update(ecs_environment(launch, self.region))
            environment.update(limits.environment())
            assert launch.command
            try:
                process = subprocess.Popen(
                    launch.command,
                    cwd=workdir,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    bufsize=0,
                    start_new_session=True,
                    preexec_fn=limits.enter,  # noqa: PLW1509 - only writes our pid into the task's cgroups
                )
            except Exception as exc:  # not found, not executable, a NUL byte in an argument or variable, …
                raise StartError(f"CannotStartContainerError: {exc}") from exc
        except BaseException:
            try:
                if limits is not None:
                    limits.close()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        task.local_process_group = process.pid  # lets a restarted agent find what this one left running
        limits.started(process.pid)
        return _ProcessExecution(process, limits, workdir)

    def kill_leftovers(self, task: Any) -> bool:
        return self.limits.kill_leftovers(task.id, getattr(task, "local_process_group", None))

    def sweep(self, stopped: list[Any], live: set[str]) -> list[str]:
        """The cgroups of stopped tasks (a previous agent stopped before it removed them: its stragglers are
        killed). Only cgroups named by this stack's tasks: the cgroup parent is shared by every stack on the
        machine. The process groups of stopped tasks are left alone: their numbers may name other processes by
        now."""
        return [
            f"the cgroup of stopped task {task.id}" for task in stopped if self.limits.kill_leftover_cgroup(task.id)
        ]

    def shutdown(self) -> None:
        """Every task's processes were killed by its own thread."""


@dataclass
class Recovery:
    """What an agent's `recover` did with the tasks and leftovers of the agents before it."""

    #: tasks whose container was still there (running, or exited while no agent ran): supervised from now on
    adopted: list[str] = field(default_factory=list)
    #: tasks that never started: started now
    restarted: list[str] = field(default_factory=list)
    #: tasks with nothing left to adopt: settled as stopped with the stack (or as the StopTask asked)
    settled: list[str] = field(default_factory=list)
    #: what of the old stack was removed (containers no task uses, cgroups, directories, log cursors)
    removed: list[str] = field(default_factory=list)


class FargateAgent:
    def __init__(
        self,
        aws: AwsInside,
        *,
        work_dir: Path,
        stop_timeout_seconds: float = 30.0,
        max_running_tasks: int = 64,
        region: str = "us-east-1",
        on_log: Callable[[str], None] | None = None,
        launcher: Launcher | None = None,
        store: StateStore | None = None,
        on_task_changed: Callable[[Any], None] | None = None,
    ) -> None:
        """`store`: the stack's state store, where the agent keeps its log cursors (`LogCursors`) and its
        heartbeat; `on_task_changed(task)`: called after each change the agent makes to a moto ECS task (the stack
        writes the task to its store there), before the change's event goes out."""
        self.aws = aws
        self.work_dir = work_dir
        self.default_stop_timeout = stop_timeout_seconds
        self.region = region
        #: process mode's cgroups
        self.limits = LimitsFactory()
        self.launcher: Launcher = launcher or ProcessLauncher(work_dir, region, self.limits)
        self.on_log = on_log or (lambda line: None)
        self.on_task_changed = on_task_changed
        self.store = store
        self.cursors = LogCursors(store)
        self._slots = threading.BoundedSemaphore(max_running_tasks)
        self._running: dict[str, _RunningTask] = {}
        self._lock = threading.Lock()
        #: no task is started any more (the agent lets go of its tasks, or the stack stops)
        self._closing = False
        #: tasks whose container is being started, which letting go waits for (`_start`)
        self._starting = 0
        self._started = threading.Condition(self._lock)
        #: the agent no longer changes any task (it crashed, or let go of its tasks for the next agent)
        self._detached = False
        work_dir.mkdir(parents=True, exist_ok=True)
        #: the last moment the agents before this one were known to be alive (None: no record)
        self.last_alive = self._read_heartbeat()
        self._beating = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if store is not None:
            self._beat()
            self._heartbeat = threading.Thread(target=self._keep_beating, daemon=True, name="agent-heartbeat")
            self._heartbeat.start()

    # ------------------------------------------------------------------ hooks from patched moto

    def on_run_task(self, backend: Any, tasks: list[Any]) -> None:
        if self._closing:  # left PROVISIONING: the next agent starts it
            return
        for task in tasks:
            running = _RunningTask(task=task, backend=backend)
            self._start_thread(running)

    def _start_thread(self, running: _RunningTask) -> None:
        running.thread = threading.Thread(
            target=self._run, args=(running,), daemon=True, name=f"task-{running.task.id}"
        )
        with self._lock:
            self._running[running.task.task_arn] = running
        running.thread.start()

    def on_stop_task(self, backend: Any, task: Any, reason: str) -> None:
        if self._detached:  # the next agent sees the task's desired status and stops it
            return
        with self._lock:
            running = self._running.get(task.task_arn)
        if running is None:
            # Not ours (or already settled): record the stop as Fargate would.
            self._settle(task, stop_code="UserInitiated", reason=reason)
            return
        running.stop_reason = reason
        running.stop_requested_at = _now()
        running.stop_requested.set()
        task.stopping_at = running.stop_requested_at
        task.stop_code = "UserInitiated"
        self._changed(task)
        if running.execution is not None and running.execution.process.poll() is None:
            self._terminate(running)

    # ------------------------------------------------------------------ lifecycle

    def _resolve(self, running: _RunningTask) -> Launch:
        task = running.task
        definition = running.backend.describe_task_definition(task.task_definition_arn)
        containers = [_camel(c) for c in definition.container_definitions]
        container = next((c for c in containers if c.get("essential", True)), containers[0])
        overrides = _camel(task.overrides or {})
        container_override: dict[str, Any] = next(
            (o for o in overrides.get("containerOverrides", []) if o.get("name") == container.get("name")), {}
        )
        command = container_override.get("command") or container.get("command")
        entry_point = container.get("entryPoint") or []
        environment = {e["name"]: e["value"] for e in container.get("environment") or []}
        environment.update({e["name"]: e["value"] for e in container_override.get("environment") or []})
        options = (container.get("logConfiguration") or {}).get("options") or {}
        log_group = options.get("awslogs-group")
        prefix = options.get("awslogs-stream-prefix")
        storage = (overrides.get("ephemeralStorage") or _camel(definition.ephemeral_storage or {}) or {}).get(
            "sizeInGiB", 20
        )
        return Launch(
            command=[*entry_point, *command] if command or entry_point else None,
            image=container.get("image") or "",
            entry_point=list(entry_point),
            arguments=list(command) if command else None,
            environment=environment,
            cpu_units=int(overrides.get("cpu") or definition.cpu or 256),
            memory_mib=int(overrides.get("memory") or definition.memory or 512),
            ephemeral_storage_gib=int(storage),
            log_group=log_group,
            log_stream=f"{prefix}/{container['name']}/{task.id}" if log_group and prefix else None,
            stop_timeout=float(container.get("stopTimeout") or self.default_stop_timeout),
            container_name=container["name"],
            init_process=bool((container.get("linuxParameters") or {}).get("initProcessEnabled")),
            architecture=str(
                _camel(getattr(definition, "runtime_platform", None) or {}).get("cpuArchitecture") or "X86_64"
            ),
        )

    def _run(self, running: _RunningTask) -> None:
        """The task's thread. Whatever happens in it, the task ends settled and leaves nothing behind (unless the
        agent lets go of it: then it is left as it is, for the next agent)."""
        try:
            if running.adopted is not None:
                self._resume(running)
            else:
                self._run_task(running)
        except Exception as exc:
            self.on_log(f"agent error in {running.task.task_arn}: {exc!r}\n{traceback.format_exc().rstrip()}")
            try:
                self._fail(running, exc)
            except Exception as again:
                self.on_log(f"could not settle {running.task.task_arn} after an agent error: {again!r}")
        finally:
            self._clean_up(running)

    def _take_slot(self, running: _RunningTask, *, wait: bool = True) -> bool:
        """One of the `max_running_tasks` slots, waited for while the agent runs; False once it stops starting
        tasks. An adopted task does not wait (it runs already): without a free slot it runs beyond the limit."""
        if not wait:
            running.holds_slot = self._slots.acquire(blocking=False)
            return True
        while not self._slots.acquire(timeout=SUPERVISE_POLL_SECONDS):
            if self._closing:
                return False
        running.holds_slot = True
        return not self._closing

    def _run_task(self, running: _RunningTask) -> None:
        task = running.task
        try:
            launch = self._resolve(running)
        except Exception as exc:  # a task definition we cannot read: the task cannot start
            self._finish(running, stop_code="TaskFailedToStart", reason=f"ResourceInitializationError: {exc}")
            return
        running.stop_timeout = launch.stop_timeout
        task.cpu, task.memory = str(launch.cpu_units), str(launch.memory_mib)
        task.ephemeral_storage = {"sizeInGiB": launch.ephemeral_storage_gib}
        task.availability_zone = f"{self.region}a"
        task.platform_version = task.platform_version or "1.4.0"
        task.platform_family = "Linux"
        task.launch_type = task.launch_type or "FARGATE"
        task.connectivity = "CONNECTED"
        task.connectivity_at = _now()
        self._changed(task)
        if not self._take_slot(running):
            return  # the agent stops: the task is left unstarted, for the next agent to start
        if running.stop_requested.is_set():
            self._finish(running, stop_code="UserInitiated", reason=running.stop_reason)
            return
        task._status = "PENDING"
        self._changed(task)
        self._emit(task)
        self._start_and_wait(running, launch)

    def _start_and_wait(self, running: _RunningTask, launch: Launch) -> None:
        task = running.task
        task.pull_started_at = _now()
        self._changed(task)
        try:
            self.launcher.prepare(launch)
        except StartError as exc:
            task.pull_stopped_at = _now()
            self._finish(running, stop_code="TaskFailedToStart", reason=str(exc))
            return
        task.pull_stopped_at = _now()
        self._changed(task)
        if running.stop_requested.is_set():
            self._finish(running, stop_code="UserInitiated", reason=running.stop_reason)
            return
        running.shipper = shipper = self._shipper(task, launch)
        try:
            try:
                execution = self._start(running, launch)
            except ImageNotPresent:
                # the image is pulled now: the pull window is this one (no event showed the first)
                task.pull_started_at = _now()
                self._changed(task)
                try:
                    self.launcher.pull(launch)
                finally:
                    task.pull_stopped_at = _now()
                    self._changed(task)
                if running.stop_requested.is_set():
                    self._finish(running, stop_code="UserInitiated", reason=running.stop_reason, shipper=shipper)
                    return
                execution = self._start(running, launch)
        except StartError as exc:
            shipper.line(str(exc))
            self._finish(running, stop_code="TaskFailedToStart", reason=str(exc), shipper=shipper)
            return
        if execution is None or self._detached:
            return  # the agent stops starting tasks, or lets go of them: the next agent starts or adopts this one
        task.started_at = _now()
        task._status = "RUNNING"
        for container in task.containers:
            container.last_status = "RUNNING"
        self._changed(task)
        self._emit(task)
        if running.stop_requested.is_set():
            self._terminate(running)
        self._await_exit(running, execution, shipper)

    def _start(self, running: _RunningTask, launch: Launch) -> Execution | None:
        """`launcher.start`, unless the agent no longer starts tasks (None). Letting go of the tasks waits for a
        start under way, so that no container appears after the next agent looked for it."""
        with self._lock:
            if self._closing:
                return None
            self._starting += 1
        try:
            running.execution = self.launcher.start(running.task, launch)
            return running.execution
        finally:
            with self._lock:
                self._starting -= 1
                self._started.notify_all()

    def _shipper(self, task: Any, launch: Launch, *, resume: bool = False) -> _LogShipper:
        return _LogShipper(
            self.aws, launch.log_group, launch.log_stream, task_arn=task.task_arn, cursors=self.cursors, resume=resume
        )

    def _resume(self, running: _RunningTask) -> None:
        """Supervise a task a previous agent started, from where it stands: running, or exited while no agent ran
        (then it is settled from its container's own record: exit code, OOM kill, start and finish times)."""
        task, adopted, launch = running.task, running.adopted, running.launch
        assert adopted is not None and launch is not None
        running.stop_timeout = launch.stop_timeout
        running.execution = execution = adopted.execution
        self._take_slot(running, wait=False)
        running.shipper = shipper = self._shipper(task, launch, resume=True)
        if task.started_at is None:  # the previous agent started it and stopped before it wrote that down
            task.started_at = adopted.started_at or _now()
            task.pull_started_at = task.pull_started_at or task.started_at
            task.pull_stopped_at = task.pull_stopped_at or task.started_at
        if adopted.finished_at is None and task._status != "RUNNING":
            task._status = "RUNNING"
            for container in task.containers:
                container.last_status = "RUNNING"
            self._changed(task)
            self._emit(task)
        state = "running" if adopted.finished_at is None else f"exited at {iso_timestamp(adopted.finished_at)}"
        self.on_log(f"re-adopted {task.task_arn} ({state})")
        if running.stop_requested.is_set() and adopted.finished_at is None:
            self._terminate(running)
        self._await_exit(running, execution, shipper, exited_at=adopted.finished_at)

    def _await_exit(
        self, running: _RunningTask, execution: Execution, shipper: _LogShipper, *, exited_at: datetime | None = None
    ) -> None:
        """Supervise the started task to its end and settle it. `exited_at`: it had already exited (while no agent
        ran), and stopped then."""
        task = running.task
        returncode = self._supervise(running, execution, shipper)
        if self._detached:
            return
        exit_code, oom = execution.exit_status(returncode)
        task.execution_stopped_at = execution.finished_at() or task.execution_stopped_at
        for container in task.containers:
            container.exitCode = exit_code
            container.reason = OOM_REASON if oom else None
        if running.stop_requested.is_set():
            stop_code, reason = running.stop_code, running.stop_reason
        else:
            stop_code, reason = "EssentialContainerExited", "Essential container in task exited"
        self._finish(running, stop_code=stop_code, reason=reason, shipper=shipper, at=exited_at)

    def _supervise(self, running: _RunningTask, execution: Execution, shipper: _LogShipper) -> int:
        """Pump the task's output into its log stream until its main process exits; then kill every other
        process of the task (ECS: the task stops with its essential container's main process), read what is
        left in the pipes for a bounded time, and close them. Returns the main process's return code."""
        process = execution.process
        assert process.stdout is not None and process.stderr is not None
        streams = {
            process.stdout.fileno(): (STDOUT, _LineSplitter()),
            process.stderr.fileno(): (STDERR, _LineSplitter()),
        }
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # before Linux 5.3: look a few times a second
            pidfd = os.pidfd_open(process.pid)
            poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        try:
            while (returncode := process.poll()) is None:
                timeout = SUPERVISE_POLL_SECONDS if pidfd is not None else 0.05
                if running.kill_at is not None:
                    timeout = min(timeout, max(0.0, running.kill_at - time.monotonic()))
                self._pump(poller, streams, shipper, timeout)
                if running.kill_at is not None and time.monotonic() >= running.kill_at and process.poll() is None:
                    running.kill_at = None
                    execution.kill_all()  # the stop timeout ran out: SIGKILL to every process of the task
            if pidfd is not None:
                poller.unregister(pidfd)  # stays readable from now on
            if not self._detached:  # a replaced agent leaves the task to the one that replaced it
                running.task.execution_stopped_at = _now()
                self._kill_task_processes(running, execution)
            deadline = time.monotonic() + LOG_DRAIN_SECONDS
            while streams and (remaining := deadline - time.monotonic()) > 0:
                self._pump(poller, streams, shipper, remaining)
        finally:
            for pipe, splitter in streams.values():
                for text, size in splitter.flush():
                    shipper.put(text, size, pipe)
            process.stdout.close()
            process.stderr.close()
            if pidfd is not None:
                os.close(pidfd)
        return returncode

    def _kill_task_processes(self, running: _RunningTask, execution: Execution) -> None:
        if not execution.kill_all():
            self.on_log(f"some processes of {running.task.task_arn} could not be killed: {execution.leftovers()}")

    @staticmethod
    def _pump(
        poller: select.poll,
        streams: dict[int, tuple[int, _LineSplitter]],
        shipper: _LogShipper,
        timeout_seconds: float,
    ) -> None:
        """Read what the task wrote (one bounded chunk per ready stream) and queue it as events; blocks while
        the task's log stream is behind, so the task's writes block too."""
        for fd, _event in poller.poll(max(0, int(timeout_seconds * 1000))):
            if fd not in streams:
                continue  # the pidfd: the process has exited
            pipe, splitter = streams[fd]
            data = os.read(fd, LOG_READ_BYTES)
            events = splitter.feed(data) if data else splitter.flush()
            for text, size in events:
                shipper.put(text, size, pipe)
            if not data:  # end of the stream
                poller.unregister(fd)
                del streams[fd]

    def _terminate(self, running: _RunningTask) -> None:
        """StopTask: SIGTERM to every process of the task now, SIGKILL to every one after the stop timeout
        (the task's thread sends it)."""
        with running.lock:
            if running.terminated:
                return
            running.terminated = True
        running.kill_at = time.monotonic() + running.stop_timeout
        if running.execution is not None:
            running.execution.terminate()

    def _fail(self, running: _RunningTask, error: Exception) -> None:
        """An error of the agent itself: kill the task's processes and settle the task, as a start failure
        when its container had not started, else as its essential container having exited."""
        task = running.task
        if self._detached or task._status == "STOPPED":
            return
        if running.execution is not None:
            self._kill_task_processes(running, running.execution)
            with contextlib.suppress(Exception):
                running.execution.process.wait(timeout=5)  # reaped, not left a zombie
        if getattr(task, "started_at", None) is None:
            self._finish(
                running,
                stop_code="TaskFailedToStart",
                reason=f"CannotStartContainerError: {error}",
                shipper=running.shipper,
            )
            return
        for container in task.containers:
            container.exitCode = None
            container.reason = f"Local agent error: {error!r}"
        task.execution_stopped_at = task.execution_stopped_at or _now()
        stopped = running.stop_requested.is_set()
        self._finish(
            running,
            stop_code=running.stop_code if stopped else "EssentialContainerExited",
            reason=running.stop_reason
            if stopped
            else f"Essential container in task exited: local agent error: {error!r}",
            shipper=running.shipper,
        )

    def _clean_up(self, running: _RunningTask) -> None:
        """On every path out of a task's thread: no process, cgroup, container, directory or pipe of it is left;
        unless the agent let go of the task, which then keeps running for the next agent."""
        task = running.task
        try:
            if self._detached:
                self._let_go_of(running)
                if running.execution is not None:  # here, in the thread that read them
                    for pipe in (running.execution.process.stdout, running.execution.process.stderr):
                        if pipe is not None:
                            pipe.close()
                return
            try:
                if running.execution is not None and not running.execution.close():
                    self.on_log(f"some processes of {task.task_arn} outlived it: {running.execution.leftovers()}")
            finally:
                if running.shipper is not None and not running.shipper.closed:
                    running.shipper.close()
            if task._status == "STOPPED":
                self.cursors.forget(task.task_arn)
        except Exception as exc:
            self.on_log(f"could not clean up after {task.task_arn}: {exc!r}")
        finally:
            if running.holds_slot:
                running.holds_slot = False
                self._slots.release()
            if not self._detached:
                with self._lock:
                    self._running.pop(task.task_arn, None)

    def _let_go_of(self, running: _RunningTask) -> None:
        """Stop following the task and leave it running: nothing more is shipped or changed by this agent."""
        if running.shipper is not None:
            running.shipper.abandon()
        execution = running.execution
        if execution is not None:
            execution.release()

    def _finish(
        self,
        running: _RunningTask,
        *,
        stop_code: str,
        reason: str | None,
        shipper: _LogShipper | None = None,
        at: datetime | None = None,
    ) -> None:
        task = running.task
        if self._detached:  # a replaced agent leaves its tasks to the one that replaced it
            return
        task._status = "DEPROVISIONING"
        if stop_code == "TaskFailedToStart":
            for container in task.containers:
                container.reason = reason
        self._changed(task)
        if shipper is not None:
            shipper.close()  # every line is in the log stream before the task reports STOPPED
            if shipper.error is not None:
                self.on_log(f"the log stream of {task.task_arn} failed: {shipper.error!r}")
            if shipper.cursor_error is not None:
                self.on_log(f"the log cursor of {task.task_arn} could not be written: {shipper.cursor_error!r}")
            if shipper.lost:
                self.on_log(f"{shipper.lost} log line(s) of {task.task_arn} could not be written to its log stream")
        if self._detached:  # let go of while its last lines were shipped
            return
        self._settle(task, stop_code=stop_code, reason=reason, at=at)
        with self._lock:
            self._running.pop(task.task_arn, None)

    def _settle(self, task: Any, *, stop_code: str, reason: str | None, at: datetime | None = None) -> None:
        """The task is STOPPED, at `at` (now when None): recorded (`on_task_changed`), then announced."""
        moment = at or _now()
        task.stop_code = stop_code
        task.stopped_reason = reason or task.stopped_reason or ""
        task.stopping_at = task.stopping_at or moment
        task.execution_stopped_at = task.execution_stopped_at or moment
        task.stopped_at = moment
        task.desired_status = "STOPPED"
        for container in task.containers:
            container.last_status = "STOPPED"
        task._status = "STOPPED"
        self._changed(task)
        self._emit(task)

    def _changed(self, task: Any) -> None:
        """The agent changed `task`: the stack records it. Its failure is logged; the task goes on."""
        if self.on_task_changed is None or self._detached:
            return
        try:
            self.on_task_changed(task)
        except Exception as exc:
            self.on_log(f"could not record the change of {task.task_arn}: {exc!r}")

    # ------------------------------------------------------------------ events

    def _emit(self, task: Any) -> None:
        """An "ECS Task State Change" event, shaped as AWS sends it, to the default event bus."""
        try:
            detail = self.aws.describe_task(task)
            detail["updatedAt"] = iso_timestamp(_now())
            self.aws.put_event("aws.ecs", "ECS Task State Change", detail, [task.task_arn])
        except Exception as exc:  # the event path is a safety net; the workflow still finishes the task
            self.on_log(f"could not emit the state change of {task.task_arn}: {exc!r}")

    # ------------------------------------------------------------------ heartbeat

    def _read_heartbeat(self) -> datetime | None:
        if self.store is None:
            return None
        try:
            recorded = self.store.meta(HEARTBEAT_META_KEY)
            return datetime.fromisoformat(recorded) if recorded else None
        except (ValueError, RuntimeError) as exc:
            self.on_log(f"could not read the previous agent's heartbeat: {exc!r}")
            return None

    def _beat(self) -> None:
        if self.store is None:
            return
        try:
            self.store.set_meta(HEARTBEAT_META_KEY, _now().isoformat())
        except Exception as exc:  # a closed store at the stack's stop, a full disk: the tasks go on
            self.on_log(f"could not record the agent's heartbeat: {exc!r}")

    def _keep_beating(self) -> None:
        while not self._beating.wait(HEARTBEAT_SECONDS):
            self._beat()

    def _stop_beating(self, *, last_beat: bool) -> None:
        self._beating.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
            if last_beat:
                self._beat()

    def _last_seen(self, task: Any) -> datetime:
        """When a task the agents lost track of was last known to run: the last heartbeat of the agents before,
        or the task's own last recorded moment when later (or when there is no heartbeat)."""
        moments = [
            moment
            for moment in (
                self.last_alive,
                getattr(task, "created_at", None),
                getattr(task, "pull_started_at", None),
                getattr(task, "pull_stopped_at", None),
                getattr(task, "started_at", None),
                getattr(task, "stopping_at", None),
            )
            if isinstance(moment, datetime) and moment.tzinfo is not None
        ]
        return max(moments, default=None) or _now()

    # ------------------------------------------------------------------ recovery, orphans and shutdown

    def recover(self, backend: Any) -> Recovery:
        """The agent's start, once the emulator holds the tasks as the agents before it last recorded them (a
        restart of the stack, or of the agent). Every task not STOPPED that this agent does not run:

        - its container is still there (running, or exited while no agent ran): adopted, and supervised to its
          end as if this agent had started it; its log stream resumes where the last agent stopped (`LogCursors`);
        - nothing of it can be adopted (no container; in process mode, always: what is left is killed), and
          StopTask was asked: settled as the StopTask asked; it never started: started now (ECS starts a task it
          accepted, whatever happened to the agent in between); it ran: settled as stopped with the stack
          (TerminationNotice), at the last moment it was known to run (`_last_seen`).

        Then whatever of the old stack no task uses is removed: containers of stopped or unknown tasks (one log
        line each), cgroups and directories (`Launcher.sweep`), log cursors."""
        known: dict[str, Any] = {}
        for cluster_tasks in list(backend.tasks.values()):
            known.update(cluster_tasks)
        with self._lock:
            ours = set(self._running)
        unsettled = {arn: task for arn, task in known.items() if task._status != "STOPPED" and arn not in ours}
        recovery = Recovery()
        self._remove_strays(known, unsettled, recovery)
        for task in unsettled.values():
            try:
                self._recover_task(backend, task, recovery)
            except Exception as exc:  # the task is settled; the others are still recovered
                self.on_log(f"could not recover {task.task_arn}: {exc!r}\n{traceback.format_exc().rstrip()}")
                self._settle(task, stop_code=STACK_STOPPED_CODE, reason=STACK_STOPPED_REASON, at=self._last_seen(task))
                recovery.settled.append(task.task_arn)
        with self._lock:
            live = {running.task.id for running in self._running.values()}
            live_arns = set(self._running)
        stopped = [task for task in known.values() if task._status == "STOPPED"]
        try:
            recovery.removed += self.launcher.sweep(stopped, live) + self._sweep_work_dir(live)
        except Exception as exc:
            self.on_log(f"could not sweep what a previous agent left behind: {exc!r}")
        forgotten = self.cursors.keep_only(live_arns)
        if forgotten:
            recovery.removed.append(f"{forgotten} log cursor(s) of settled tasks")
        return recovery

    def _sweep_work_dir(self, live: set[str]) -> list[str]:
        """The working directories of process mode's tasks (`task-<ecs task id>-…`) that no live task uses."""
        removed = []
        for entry in self.work_dir.glob(f"{_TASK_DIR_PREFIX}*"):
            task_id = entry.name.removeprefix(_TASK_DIR_PREFIX).rpartition("-")[0]
            if entry.is_dir() and task_id not in live:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(f"directory {entry.name}")
        return removed

    def settle_orphans(self, backend: Any) -> int:
        """`recover` for a caller that only reports a number: how many tasks it adopted, started or settled."""
        recovery = self.recover(backend)
        return len(recovery.adopted) + len(recovery.restarted) + len(recovery.settled)

    def _remove_strays(self, known: dict[str, Any], unsettled: dict[str, Any], recovery: Recovery) -> None:
        """Remove what the launcher finds of this stack that no task left to recover uses (the containers of
        stopped tasks, of tasks this stack does not know, of none), one log line each."""
        try:
            strays = self.launcher.strays()
        except Exception as exc:  # the tasks are still recovered: their containers are looked up by task
            self.on_log(f"could not look for what a previous agent left behind: {exc!r}")
            return
        for stray in strays:
            with self._lock:
                if stray.task_arn in self._running:
                    continue  # started by this agent after the listing
            if stray.task_arn in unsettled:
                continue  # adopted, or removed with its task
            gone = self.launcher.remove_stray(stray)
            fate = "already stopped" if stray.task_arn in known else "not known to this stack"
            self.on_log(
                f"{'removed' if gone else 'could not remove'} {stray.what}, left behind by a previous agent "
                f"(task {stray.task_arn or 'unnamed'}: {fate})"
            )
            if gone:
                recovery.removed.append(stray.what)

    def _recover_task(self, backend: Any, task: Any, recovery: Recovery) -> None:
        running = _RunningTask(task=task, backend=backend)
        try:
            launch: Launch | None = self._resolve(running)
        except Exception as exc:  # no task definition to read the stop timeout and log stream from
            self.on_log(f"cannot adopt {task.task_arn}: {exc!r}")
            launch = None
        never_ran = getattr(task, "started_at", None) is None
        try:
            adopted = self.launcher.adopt(task, launch) if launch is not None else None
        except NotStarted as exc:
            self.on_log(str(exc))
            adopted, never_ran = None, True
        if adopted is not None:
            running.adopted, running.launch = adopted, launch
            if task.desired_status == "STOPPED":  # StopTask was asked before the agent stopped
                running.stop_reason = task.stopped_reason
                running.stop_requested_at = task.stopping_at
                running.stop_requested.set()
            self._start_thread(running)
            recovery.adopted.append(task.task_arn)
            return
        if not self.launcher.kill_leftovers(task):
            self.on_log(f"some processes of the task {task.task_arn} could not be killed")
        if task.desired_status == "STOPPED":
            self._settle(task, stop_code="UserInitiated", reason=task.stopped_reason, at=self._last_seen(task))
            recovery.settled.append(task.task_arn)
        elif never_ran:
            self.on_log(f"starting {task.task_arn} again: it had not started when the previous agent stopped")
            self.on_run_task(backend, [task])
            recovery.restarted.append(task.task_arn)
        else:
            for container in task.containers:
                container.exitCode = None
                container.reason = STACK_STOPPED_CONTAINER_REASON
            self._settle(task, stop_code=STACK_STOPPED_CODE, reason=STACK_STOPPED_REASON, at=self._last_seen(task))
            self.on_log(f"settled {task.task_arn}: nothing of it was left to adopt")
            recovery.settled.append(task.task_arn)

    def detach(self) -> None:
        """Stop managing tasks without touching them, as a crashed agent would: no heartbeat, no line shipped and no
        task changed from now on, the commands that follow the containers ended. The next agent (`recover`)
        adopts or settles them."""
        self._stop_beating(last_beat=False)
        self._let_go()

    def shutdown(self, keep_running: bool = False) -> int:
        """The stack stops. `keep_running` (a durable stack's stop): tasks the next agent can adopt (containers)
        keep running, and the agent only lets go of them; the others (host processes) are killed and settled as
        stopped with the stack. Otherwise every task is killed and settled so, and the launcher removes what is
        left. A task that had not started is left as it is either way (the next agent starts it). Returns how
        many started tasks were left running."""
        if keep_running and self.launcher.adopts:
            self._stop_beating(last_beat=True)
            return self._let_go()
        self._close_gate()
        with self._lock:
            running = list(self._running.values())
        for task in running:
            if task.execution is None:
                continue
            if not task.stop_requested.is_set():
                task.stop_code, task.stop_reason = STACK_STOPPED_CODE, STACK_STOPPED_REASON
                task.stop_requested.set()
            with contextlib.suppress(Exception):
                task.execution.kill_all()
        for task in running:
            if task.thread is not None:
                task.thread.join(timeout=5)
        self._stop_beating(last_beat=True)
        self.launcher.shutdown()
        return 0

    def _close_gate(self) -> None:
        """Start no task from now on, and wait for the starts under way."""
        with self._lock:
            self._closing = True
            self._started.wait_for(lambda: self._starting == 0, timeout=START_GATE_SECONDS)

    def _let_go(self) -> int:
        """Leave every task running as it is, for the next agent: its log shipping stops at once (what is queued
        is shipped by the next agent), the commands that follow it end, its thread unwinds without changing it.
        Returns how many of them had started."""
        self._close_gate()
        self._detached = True
        with self._lock:
            running = list(self._running.values())
            self._running.clear()
        for task in running:
            with contextlib.suppress(Exception):
                self._let_go_of(task)
        if self.launcher.adopts:  # with nothing left to read, each thread ends at once
            for task in running:
                if task.thread is not None:
                    task.thread.join(timeout=LET_GO_JOIN_SECONDS)
        return sum(1 for task in running if task.execution is not None)
