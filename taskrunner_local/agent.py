"""The local Fargate agent: runs every ECS task started in the emulator as a local process.

It behaves like Fargate where a user can see it (DESIGN §3): the lifecycle timestamps, `lastStatus`,
`stopCode`, `stoppedReason` and container `exitCode`/`reason`; the memory limit (exit 137, reason
`OutOfMemoryError…`); StopTask as SIGTERM, then SIGKILL after the stop timeout; a command that cannot start
as `TaskFailedToStart`; stdout and stderr line by line into the task's awslogs stream; "ECS Task State
Change" events to EventBridge; and no process left behind. The image is recorded, not pulled: the command
runs on the host, in a fresh working directory.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskrunner_local.aws_inside import AwsInside, iso_timestamp
from taskrunner_local.limits import LimitsFactory

LOG_FLUSH_SECONDS = 0.2
LOG_BATCH_EVENTS = 1000
OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
PASSED_HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


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
class _Launch:
    """What the agent needs to run one ECS task, resolved from its task definition and overrides."""

    command: list[str] | None
    environment: dict[str, str]
    cpu_units: int
    memory_mib: int
    ephemeral_storage_gib: int
    log_group: str | None
    log_stream: str | None
    stop_timeout: float
    container_name: str


@dataclass
class _RunningTask:
    task: Any
    backend: Any
    stop_requested: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None
    stop_requested_at: datetime | None = None
    process: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    stop_timeout: float = 30.0


class _LogShipper:
    """Ships one task's output to its awslogs stream, line by line, in order, in batches."""

    def __init__(self, aws: AwsInside, group: str | None, stream: str | None) -> None:
        self.aws = aws
        self.group = group
        self.stream = stream
        self.lines: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._last_ms = 0
        self._lock = threading.Lock()
        self.lost = 0
        if group and stream:
            aws.create_log_stream(group, stream)
        self._thread = threading.Thread(target=self._ship, daemon=True, name=f"logs-{stream}")
        self._thread.start()

    def line(self, text: str) -> None:
        with self._lock:
            stamp = max(self._last_ms, int(time.time() * 1000))
            self._last_ms = stamp
            self.lines.put((stamp, text))

    def close(self) -> None:
        self.lines.put(None)
        self._thread.join()

    def _ship(self) -> None:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + LOG_FLUSH_SECONDS
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self.lines.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                if item is None:
                    self._put(batch)
                    return
                stamp, text = item
                batch.append({"timestamp": stamp, "message": text})
            if len(batch) >= LOG_BATCH_EVENTS or time.monotonic() >= deadline:
                self._put(batch)
                batch = []
                deadline = time.monotonic() + LOG_FLUSH_SECONDS

    def _put(self, batch: list[dict[str, Any]]) -> None:
        if not batch or not (self.group and self.stream):
            return
        for attempt in range(5):
            try:
                self.aws.put_log_events(self.group, self.stream, batch)
                return
            except Exception:  # keep the lines; the endpoint may be busy
                time.sleep(0.1 * (attempt + 1))
        self.lost += len(batch)


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
    ) -> None:
        self.aws = aws
        self.work_dir = work_dir
        self.default_stop_timeout = stop_timeout_seconds
        self.region = region
        self.limits = LimitsFactory()
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
        if running.process is not None and running.process.poll() is None:
            self._terminate(running)

    # ------------------------------------------------------------------ lifecycle

    def _resolve(self, running: _RunningTask) -> _Launch:
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
        return _Launch(
            command=[*entry_point, *command] if command or entry_point else None,
            environment=environment,
            cpu_units=int(overrides.get("cpu") or definition.cpu or 256),
            memory_mib=int(overrides.get("memory") or definition.memory or 512),
            ephemeral_storage_gib=int(storage),
            log_group=log_group,
            log_stream=f"{prefix}/{container['name']}/{task.id}" if log_group and prefix else None,
            stop_timeout=float(container.get("stopTimeout") or self.default_stop_timeout),
            container_name=container["name"],
        )

    def _run(self, running: _RunningTask) -> None:
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

    def _start_and_wait(self, running: _RunningTask, launch: _Launch) -> None:
        task = running.task
        task.pull_started_at = _now()  # process mode: the image is recorded, not pulled
        task.pull_stopped_at = _now()
        if not launch.command:
            self._finish(
                running,
                stop_code="TaskFailedToStart",
                reason="CannotStartContainerError: the task has no command; local process mode runs only "
                "tasks with a command",
            )
            return
        workdir = Path(tempfile.mkdtemp(prefix=f"task-{task.id}-", dir=self.work_dir))
        limits = self.limits.for_task(task.id, launch.memory_mib * 1024 * 1024, launch.cpu_units / 1024)
        shipper = _LogShipper(self.aws, launch.log_group, launch.log_stream)
        environment = {k: os.environ[k] for k in PASSED_HOST_VARIABLES if k in os.environ}
        environment.update(
            HOME=str(workdir),
            AWS_REGION=self.region,
            AWS_DEFAULT_REGION=self.region,
            AWS_EXECUTION_ENV="AWS_ECS_FARGATE",
            ECS_CONTAINER_NAME=launch.container_name,
        )
        environment.update(launch.environment)
        try:
            try:
                process = subprocess.Popen(
                    launch.command,
                    cwd=workdir,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=limits.enter,  # noqa: PLW1509 - only writes our pid into the task's cgroup
                )
            except (OSError, subprocess.SubprocessError) as exc:
                shipper.line(f"CannotStartContainerError: {exc}")
                self._finish(running, stop_code="TaskFailedToStart", reason=f"CannotStartContainerError: {exc}")
                return
            running.process = process
            task.local_process_group = process.pid  # lets a restarted agent find what this one left running
            limits.started(process.pid)
            task.started_at = _now()
            task._status = "RUNNING"
            for container in task.containers:
                container.last_status = "RUNNING"
            self._emit(task)
            if running.stop_requested.is_set():
                self._terminate(running)
            readers = [
                threading.Thread(target=self._pump, args=(stream, shipper), daemon=True)
                for stream in (process.stdout, process.stderr)
            ]
            for reader in readers:
                reader.start()
            returncode = process.wait()
            if self._detached:
                return
            task.execution_stopped_at = _now()
            self._kill_group(process.pid)  # leave no process behind
            for reader in readers:
                reader.join()
            exit_code = 128 - returncode if returncode < 0 else returncode
            oom = limits.oom_killed()
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
        finally:
            limits.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def _pump(self, stream: Any, shipper: _LogShipper) -> None:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            shipper.line(text)
        stream.close()

    def _terminate(self, running: _RunningTask) -> None:
        process = running.process
        assert process is not None
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        timeout = running.stop_timeout

        def escalate() -> None:
            if process.poll() is None:
                self._kill_group(process.pid)

        timer = threading.Timer(timeout, escalate)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

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
        """Tasks the emulator still shows as not stopped, with no process of this agent behind them (an agent
        restart): settle them as stopped, so their tasks get a final status and metering."""
        settled = 0
        for cluster_tasks in list(backend.tasks.values()):
            for arn, task in list(cluster_tasks.items()):
                with self._lock:
                    ours = arn in self._running
                if ours or task._status == "STOPPED":
                    continue
                group = getattr(task, "local_process_group", None)
                if group:
                    self._kill_group(group)
                started = getattr(task, "started_at", None) is not None
                if started:
                    for container in task.containers:
                        container.reason = "Task orphaned: the local agent restarted"
                self._settle(
                    task,
                    stop_code="EssentialContainerExited" if started else "TaskFailedToStart",
                    reason="Task orphaned: the local Fargate agent restarted",
                )
                settled += 1
        return settled

    def shutdown(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for task in running:
            if task.process is not None:
                self._kill_group(task.process.pid)
        for task in running:
            if task.thread is not None:
                task.thread.join(timeout=5)
