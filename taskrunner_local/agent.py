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
from typing import Any, Protocol

from taskrunner_local.aws_inside import AwsInside, iso_timestamp
from taskrunner_local.limits import LimitsFactory, TaskLimits

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

    def close(self) -> bool:
        """Kill and remove whatever is left of the task; True when nothing was left behind."""


class Launcher(Protocol):
    """How the agent runs tasks: as host processes (`ProcessLauncher`) or containers (`containers.py`)."""

    mode: str

    def describe(self) -> str:
        """One line for the banner: how tasks run."""

    def prepare(self, launch: Launch) -> None:
        """Get the task's image ready (between pullStartedAt and pullStoppedAt); raises StartError."""

    def pull(self, launch: Launch) -> None:
        """Pull the image `start` found missing (ImageNotPresent); raises StartError."""

    def start(self, task: Any, launch: Launch) -> Execution:
        """Start the task's essential container; raises StartError when it cannot start, ImageNotPresent when
        its image is not there."""

    def kill_leftovers(self, task: Any) -> bool:
        """Kill what a previous agent left running of `task`; True when nothing is left."""

    def strays(self) -> list[Stray]:
        """What of this stack is running or left over, whichever agent started it (the agent leaves out its own)."""

    def remove_stray(self, stray: Stray) -> bool:
        """Stop and remove `stray`; True when it is gone."""

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
    stop_requested_at: datetime | None = None
    execution: Execution | None = None
    thread: threading.Thread | None = None
    stop_timeout: float = 30.0
    shipper: _LogShipper | None = None
    #: when (monotonic) every process of a task that was asked to stop gets SIGKILL
    kill_at: float | None = None
    terminated: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


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


class _LogShipper:
    """Ships one task's output to its awslogs stream, in order, in PutLogEvents batches within CloudWatch's
    limits. Its queue is bounded: `put` blocks while the stream is behind (backpressure)."""

    def __init__(self, aws: AwsInside, group: str | None, stream: str | None) -> None:
        self.aws = aws
        self.group = group
        self.stream = stream
        self._events: collections.deque[tuple[int, str, int]] = collections.deque()
        self._queued_bytes = 0
        self._changed = threading.Condition()
        self._closed = False
        self._dead = False
        self._last_ms = 0
        self.lost = 0
        self.error: BaseException | None = None
        if group and stream:
            aws.create_log_stream(group, stream)
        self._thread = threading.Thread(target=self._ship, daemon=True, name=f"logs-{stream}")
        self._thread.start()

    def line(self, text: str) -> None:
        self.put(text, len(text.encode("utf-8")))

    def put(self, text: str, size: int) -> None:
        cost = size + LOG_EVENT_OVERHEAD_BYTES
        with self._changed:
            while not self._dead and (
                len(self._events) >= LOG_QUEUE_MAX_EVENTS
                or (self._events and self._queued_bytes + cost > LOG_QUEUE_MAX_BYTES)
            ):
                self._changed.wait(1.0)
            if self._dead:  # nothing ships any more: count the line, do not block the task forever
                self.lost += 1
                return
            stamp = max(self._last_ms, int(time.time() * 1000))
            self._last_ms = stamp
            self._events.append((stamp, text, cost))
            self._queued_bytes += cost
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Ship what is queued and stop; returns once every line is in the log stream."""
        with self._changed:
            self._closed = True
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
                self.lost += len(self._events)
                self._events.clear()
                self._changed.notify_all()

    def _ship_batches(self) -> None:
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        deadline: float | None = None
        while True:
            with self._changed:
                while not self._events and not self._closed:
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    self._changed.wait(timeout)
                while self._events and len(batch) < LOG_BATCH_MAX_EVENTS:
                    stamp, text, cost = self._events[0]
                    if batch_bytes + cost > LOG_BATCH_MAX_BYTES:
                        break
                    self._events.popleft()
                    self._queued_bytes -= cost
                    batch.append({"timestamp": stamp, "message": text})
                    batch_bytes += cost
                self._changed.notify_all()
                full = bool(self._events)  # what is left did not fit in this batch
                done = self._closed and not self._events
            if batch and deadline is None:
                deadline = time.monotonic() + LOG_FLUSH_SECONDS
            if batch and (full or done or (deadline is not None and time.monotonic() >= deadline)):
                self._put(batch)
                batch, batch_bytes, deadline = [], 0, None
            if done:
                return

    def _put(self, batch: list[dict[str, Any]]) -> None:
        if not (self.group and self.stream):
            return
        for attempt in range(5):
            try:
                self.aws.put_log_events(self.group, self.stream, batch)
                return
            except Exception:  # keep the lines; the endpoint may be busy
                time.sleep(0.1 * (attempt + 1))
        self.lost += len(batch)


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

    def close(self) -> bool:
        try:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
            return self.limits.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


class ProcessLauncher:
    """Process mode: the task's command runs on the host, in a fresh working directory and its own cgroups; the
    image is recorded, not pulled. Only the fallback where no container engine works: no isolation from the host."""

    mode = "process"

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

    def start(self, task: Any, launch: Launch) -> Execution:
        workdir = Path(tempfile.mkdtemp(prefix=f"task-{task.id}-", dir=self.work_dir))
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

    def shutdown(self) -> None:
        """Every task's processes were killed by its own thread."""


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
    ) -> None:
        self.aws = aws
        self.work_dir = work_dir
        self.default_stop_timeout = stop_timeout_seconds
        self.region = region
        #: process mode's cgroups
        self.limits = LimitsFactory()
        self.launcher: Launcher = launcher or ProcessLauncher(work_dir, region, self.limits)
        self.on_log = on_log or (lambda line: None)
        self._slots = threading.BoundedSemaphore(max_running_tasks)
        self._running: dict[str, _RunningTask] = {}
        self._lock = threading.Lock()
        self._detached = False
        work_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ hooks from patched moto

    def on_run_task(self, backend: Any, tasks: list[Any]) -> None:
        for task in tasks:
            running = _RunningTask(task=task, backend=backend)
            running.thread = threading.Thread(target=self._run, args=(running,), daemon=True, name=f"task-{task.id}")
            with self._lock:
                self._running[task.task_arn] = running
            running.thread.start()

    def on_stop_task(self, backend: Any, task: Any, reason: str) -> None:
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
        """The task's thread. Whatever happens in it, the task ends settled and leaves nothing behind."""
        try:
            self._run_task(running)
        except Exception as exc:
            self.on_log(f"agent error in {running.task.task_arn}: {exc!r}\n{traceback.format_exc().rstrip()}")
            try:
                self._fail(running, exc)
            except Exception as again:
                self.on_log(f"could not settle {running.task.task_arn} after an agent error: {again!r}")
        finally:
            self._clean_up(running)

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
        with self._slots:
            if running.stop_requested.is_set():
                self._finish(running, stop_code="UserInitiated", reason=running.stop_reason)
                return
            task._status = "PENDING"
            self._emit(task)
            self._start_and_wait(running, launch)

    def _start_and_wait(self, running: _RunningTask, launch: Launch) -> None:
        task = running.task
        task.pull_started_at = _now()
        try:
            self.launcher.prepare(launch)
        except StartError as exc:
            task.pull_stopped_at = _now()
            self._finish(running, stop_code="TaskFailedToStart", reason=str(exc))
            return
        task.pull_stopped_at = _now()
        if running.stop_requested.is_set():
            self._finish(running, stop_code="UserInitiated", reason=running.stop_reason)
            return
        running.shipper = shipper = _LogShipper(self.aws, launch.log_group, launch.log_stream)
        try:
            try:
                running.execution = execution = self.launcher.start(task, launch)
            except ImageNotPresent:
                # the image is pulled now: the pull window is this one (no event showed the first)
                task.pull_started_at = _now()
                try:
                    self.launcher.pull(launch)
                finally:
                    task.pull_stopped_at = _now()
                if running.stop_requested.is_set():
                    self._finish(running, stop_code="UserInitiated", reason=running.stop_reason, shipper=shipper)
                    return
                running.execution = execution = self.launcher.start(task, launch)
        except StartError as exc:
            shipper.line(str(exc))
            self._finish(running, stop_code="TaskFailedToStart", reason=str(exc), shipper=shipper)
            return
        task.started_at = _now()
        task._status = "RUNNING"
        for container in task.containers:
            container.last_status = "RUNNING"
        self._emit(task)
        if running.stop_requested.is_set():
            self._terminate(running)
        returncode = self._supervise(running, execution, shipper)
        if self._detached:
            return
        exit_code, oom = execution.exit_status(returncode)
        for container in task.containers:
            container.exitCode = exit_code
            container.reason = OOM_REASON if oom else None
        if running.stop_requested.is_set():
            self._finish(running, stop_code="UserInitiated", reason=running.stop_reason, shipper=shipper)
        else:
            self._finish(
                running,
                stop_code="EssentialContainerExited",
                reason="Essential container in task exited",
                shipper=shipper,
            )

    def _supervise(self, running: _RunningTask, execution: Execution, shipper: _LogShipper) -> int:
        """Pump the task's output into its log stream until its main process exits; then kill every other
        process of the task (ECS: the task stops with its essential container's main process), read what is
        left in the pipes for a bounded time, and close them. Returns the main process's return code."""
        process = execution.process
        assert process.stdout is not None and process.stderr is not None
        streams = {process.stdout.fileno(): _LineSplitter(), process.stderr.fileno(): _LineSplitter()}
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
            for splitter in streams.values():
                for text, size in splitter.flush():
                    shipper.put(text, size)
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
        poller: select.poll, streams: dict[int, _LineSplitter], shipper: _LogShipper, timeout_seconds: float
    ) -> None:
        """Read what the task wrote (one bounded chunk per ready stream) and queue it as events; blocks while
        the task's log stream is behind, so the task's writes block too."""
        for fd, _event in poller.poll(max(0, int(timeout_seconds * 1000))):
            splitter = streams.get(fd)
            if splitter is None:
                continue  # the pidfd: the process has exited
            data = os.read(fd, LOG_READ_BYTES)
            events = splitter.feed(data) if data else splitter.flush()
            for text, size in events:
                shipper.put(text, size)
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
            stop_code="UserInitiated" if stopped else "EssentialContainerExited",
            reason=running.stop_reason
            if stopped
            else f"Essential container in task exited: local agent error: {error!r}",
            shipper=running.shipper,
        )

    def _clean_up(self, running: _RunningTask) -> None:
        """On every path out of a task's thread: no process, cgroup, container, directory or pipe of it is left."""
        task = running.task
        try:
            try:
                if running.execution is not None and not running.execution.close():
                    self.on_log(f"some processes of {task.task_arn} outlived it: {running.execution.leftovers()}")
            finally:
                if running.shipper is not None and not running.shipper.closed:
                    running.shipper.close()
        except Exception as exc:
            self.on_log(f"could not clean up after {task.task_arn}: {exc!r}")
        finally:
            if not self._detached:
                with self._lock:
                    self._running.pop(task.task_arn, None)

    def _finish(
        self,
        running: _RunningTask,
        *,
        stop_code: str,
        reason: str | None,
        shipper: _LogShipper | None = None,
    ) -> None:
        task = running.task
        if self._detached:  # a replaced agent leaves its tasks to the one that replaced it
            return
        task._status = "DEPROVISIONING"
        if shipper is not None:
            shipper.close()  # every line is in the log stream before the task reports STOPPED
            if shipper.error is not None:
                self.on_log(f"the log stream of {task.task_arn} failed: {shipper.error!r}")
            if shipper.lost:
                self.on_log(f"{shipper.lost} log line(s) of {task.task_arn} could not be written to its log stream")
        if stop_code == "TaskFailedToStart":
            for container in task.containers:
                container.reason = reason
        self._settle(task, stop_code=stop_code, reason=reason)
        with self._lock:
            self._running.pop(task.task_arn, None)

    def _settle(self, task: Any, *, stop_code: str, reason: str | None) -> None:
        now = _now()
        task.stop_code = stop_code
        task.stopped_reason = reason or task.stopped_reason or ""
        task.stopping_at = task.stopping_at or now
        task.execution_stopped_at = task.execution_stopped_at or now
        task.stopped_at = now
        task.desired_status = "STOPPED"
        for container in task.containers:
            container.last_status = "STOPPED"
        task._status = "STOPPED"
        self._emit(task)

    # ------------------------------------------------------------------ events

    def _emit(self, task: Any) -> None:
        """An "ECS Task State Change" event, shaped as AWS sends it, to the default event bus."""
        try:
            detail = self.aws.describe_task(task)
            detail["updatedAt"] = iso_timestamp(_now())
            self.aws.put_event("aws.ecs", "ECS Task State Change", detail, [task.task_arn])
        except Exception as exc:  # the event path is a safety net; the workflow still finishes the task
            self.on_log(f"could not emit the state change of {task.task_arn}: {exc!r}")

    # ------------------------------------------------------------------ orphans and shutdown

    def detach(self) -> None:
        """Stop managing tasks without touching them, as a crashed agent would (the next agent settles them)."""
        self._detached = True
        with self._lock:
            self._running.clear()

    def settle_orphans(self, backend: Any) -> int:
        """An agent restart. First the sweep: whatever of this stack the launcher finds that this agent does not
        run (containers that outlived a crashed stack or a replaced agent) is stopped and removed, one log line
        each, and the task it names, when the emulator still shows it not stopped, is settled. Then every other
        task the emulator still shows as not stopped, with nothing of this agent behind it: what is left of it is
        killed (every process in the task's cgroup, its process group and session where it has no cgroup, its
        containers), and it is settled as stopped, so that it gets a final status and metering, once."""
        known: dict[str, Any] = {}
        for cluster_tasks in list(backend.tasks.values()):
            known.update(cluster_tasks)
        settled = 0
        try:
            strays = self.launcher.strays()
        except Exception as exc:  # the tasks are still settled below; their leftovers are looked up by task
            self.on_log(f"could not look for what a previous agent left behind: {exc!r}")
            strays = []
        for stray in strays:
            with self._lock:
                if stray.task_arn in self._running:
                    continue  # started by this agent after the listing
            task = known.get(stray.task_arn)
            orphaned = task is not None and task._status != "STOPPED"
            gone = self.launcher.remove_stray(stray)
            if orphaned:
                self._settle_orphan(task)
                settled += 1
            fate = (
                "settled as orphaned"
                if orphaned
                else "already stopped"
                if task is not None
                else "not known to this stack"
            )
            self.on_log(
                f"{'removed' if gone else 'could not remove'} {stray.what}, left behind by a previous agent "
                f"(task {stray.task_arn or 'unnamed'}: {fate})"
            )
        for arn, task in known.items():
            with self._lock:
                ours = arn in self._running
            if ours or task._status == "STOPPED":
                continue
            if not self.launcher.kill_leftovers(task):
                self.on_log(f"some processes of the orphaned task {arn} could not be killed")
            self._settle_orphan(task)
            settled += 1
        return settled

    def _settle_orphan(self, task: Any) -> None:
        """Settle a task a previous agent left behind, from its own timestamps (once: it is STOPPED after)."""
        started = getattr(task, "started_at", None) is not None
        if started:
            for container in task.containers:
                container.reason = "Task orphaned: the local agent restarted"
        self._settle(
            task,
            stop_code="EssentialContainerExited" if started else "TaskFailedToStart",
            reason="Task orphaned: the local Fargate agent restarted",
        )

    def shutdown(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for task in running:
            if task.execution is not None:
                with contextlib.suppress(Exception):
                    task.execution.kill_all()
        for task in running:
            if task.thread is not None:
                task.thread.join(timeout=5)
        self.launcher.shutdown()
