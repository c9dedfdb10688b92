"""The task runner's domain: submission, status, cancellation, finalization, metering and usage.

Every entry point (HTTP, the state machine, ECS events, schedules) calls into `TaskService`; it talks to
the outside world only through the ports in `taskrunner.ports`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from taskrunner import fargate
from taskrunner.errors import (
    InvalidParameter,
    OrchestrationUnavailable,
    StaleStatus,
    TaskAlreadyExists,
    TaskAlreadyTerminal,
    TaskNotFound,
    TenantDisabled,
)
from taskrunner.fair_queue import TenantLoad, larger_than_whole_quota, queue_timeout_reason
from taskrunner.models import (
    CONTAINER_NAME,
    Capacity,
    LogPage,
    Metering,
    Slot,
    Task,
    TaskPage,
    TaskSpec,
    TaskStatus,
    Usage,
    UsageDay,
    UsageRow,
    run_task_overrides,
)
from taskrunner.observability import logger
from taskrunner.observation import TaskObservation
from taskrunner.ports import Compute, LogReader, Orchestrator, TaskDefinitionCache, TaskStore
from taskrunner.settings import Settings
from taskrunner.task_definitions import launch_image, names_an_unusable_task_definition, task_definition_family

CANCEL_REASON = "Cancelled by user"
MAX_USAGE_DAYS = 366
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_LENGTH = 26
_MAX_RACE_RETRIES = 8
#: queued tasks one dispatch looks at in a page, and grants at most (a release frees one slot; the rest is left to
#: the next dispatch, the queued tasks' own, or the reconciler's)
DISPATCH_PAGE_SIZE = 25
MAX_GRANTS_PER_DISPATCH = 100


class Outcome(StrEnum):
    """How the state machine saw the ECS task end."""

    COMPLETED = "COMPLETED"  # runTask.sync returned: the task stopped and its essential container exited 0
    TASK_FAILED = "TASK_FAILED"  # States.TaskFailed: non-zero exit or failed to start
    TIMED_OUT = "TIMED_OUT"  # States.Timeout on the runTask.sync state
    ERROR = "ERROR"  # anything else (RunTask failures after retries, runtime errors)
    NOT_STARTED = "NOT_STARTED"  # the workflow decided not to run the task (it was cancelled first)
    QUEUE_TIMED_OUT = "QUEUE_TIMED_OUT"  # States.Timeout while it waited in the queue for its tenant's quota
    EVENT = "EVENT"  # an ECS "Task State Change" event saw the task stop


class _Grant(StrEnum):
    GRANTED = "GRANTED"
    DOES_NOT_FIT = "DOES_NOT_FIT"  # the head of the queue does not fit: the dispatch stops (first in, first out)
    GONE = "GONE"  # no longer queued without a slot (granted by another dispatch, or ended): the next one's turn


def utcnow() -> datetime:
    return datetime.now(UTC)


class _MonotonicIds:
    """26-character, time-ordered ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).
    Within one millisecond the random part is incremented, so ids from one process always sort in creation
    order; newest-first listing relies on that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def __call__(self, now: Callable[[], float] = time.time) -> str:
        with self._lock:
            ms = int(now() * 1000)
            if ms <= self._last_ms and self._last_random < (1 << 80) - 1:
                ms, random = self._last_ms, self._last_random + 1
            else:
                random = secrets.randbits(80)
            self._last_ms, self._last_random = ms, random
        return _encode_id(ms, random)


def _encode_id(ms: int, random: int) -> str:
    value = (ms << 80) | (random & ((1 << 80) - 1))
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def is_task_id(value: str) -> bool:
    """Whether `value` has the shape of the ids this service issues (anything else names no task)."""
    return len(value) == _ID_LENGTH and all(char in _CROCKFORD for char in value)


def task_id_at(moment: datetime, random: int) -> str:
    """A task id for `moment` with the given 80 random bits (deterministic ids for scheduled runs)."""
    return _encode_id(int(moment.timestamp() * 1000), random)


new_task_id = _MonotonicIds()


ECS_GROUP_PREFIX = "taskrunner:"
#: how many of a family's ECS tasks a group search may describe: one ListTasks page and one DescribeTasks call on
#: the request path; ten of each for the reconciler, which runs off the request path
REQUEST_PATH_SCAN_TASKS = 100
THOROUGH_SCAN_TASKS = 1000


def ecs_group(task_id: str) -> str:
    """The ECS task group that ties an ECS task to its task. ECS events carry the group; Step Functions'
    `.sync` integration may set `startedBy` itself, so the group is what identifies the task."""
    return f"{ECS_GROUP_PREFIX}{task_id}"


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"


class TaskService:
    def __init__(
        self,
        *,
        store: TaskStore,
        orchestrator: Orchestrator,
        compute: Compute,
        logs: LogReader,
        settings: Settings,
        task_definitions: TaskDefinitionCache | None = None,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], str] = new_task_id,
    ) -> None:
        """`task_definitions`: where the workflow records the task definitions it registered; without it every
        execution starts without one, and the workflow finds (or registers) it itself."""
        self.store = store
        self.task_definitions = task_definitions
        self.orchestrator = orchestrator
        self.compute = compute
        self.logs = logs
        self.settings = settings
        self.clock = clock
        self.new_id = new_id
        self.prices = fargate.region_prices(settings.region, settings.price_table())

    # ------------------------------------------------------------------ submission

    def submit(
        self,
        tenant: str,
        spec: TaskSpec,
        *,
        task_id: str | None = None,
        schedule: str | None = None,
        scheduled_time: datetime | None = None,
    ) -> Task:
        """The one submission path (HTTP, schedules, tests). A caller-chosen `task_id` makes it idempotent:
        submitting the same id again returns the task that exists.

        The task is admitted (SUBMITTED, holding a slot of its tenant's quota) when it fits and nobody waits, else
        queued (QUEUED): its workflow then waits for a dispatch to grant it a slot (taskrunner.fair_queue)."""
        now = self.clock()
        task_id = task_id or self.new_id()
        load = self.check_quota(tenant, spec)
        task = Task(
            task_id=task_id,
            tenant=tenant,
            name=spec.name or schedule,
            status=TaskStatus.SUBMITTED,
            spec=spec,
            created_at=now,
            updated_at=now,
            execution_arn=execution_arn_for(self.settings.state_machine_arn, task_id),
            schedule=schedule,
            scheduled_time=scheduled_time,
        )
        try:
            task = self._admit_or_queue(task, load)
        except TaskAlreadyExists:
            task = self._reload(task_id)
            if task.status not in (TaskStatus.SUBMITTED, TaskStatus.QUEUED):
                return task
            # A repeated submission whose first attempt may have stopped before starting the workflow: start it
            # (an execution of that name that exists already counts as started).
        try:
            self.orchestrator.start(task_id, self.execution_input(task))
        except OrchestrationUnavailable as exc:
            self.finalize(task_id, Outcome.ERROR, None, reason=f"Could not start the workflow: {exc}")
            raise
        return task

    def _admit_or_queue(self, task: Task, load: TenantLoad) -> Task:
        """Store the new task admitted, holding its slot, or queued. Admission is conditioned on the load it read;
        when the tenant changed meanwhile it reads again, and after losing too many races it queues the task,
        which a dispatch then admits in its turn."""
        slot = Slot.of(task.spec)
        for _ in range(_MAX_RACE_RETRIES):
            if not load.admits(slot):
                break
            admitted = task.model_copy(update={"slot_held": slot})
            if self.store.admit(admitted, load):
                return admitted
            load = self.store.tenant_load(task.tenant)
        queued = task.model_copy(update={"status": TaskStatus.QUEUED})
        self.store.enqueue(queued)
        return queued

    def check_quota(self, tenant: str, spec: TaskSpec, field: str | None = None) -> TenantLoad:
        """The tenant's load, after checking that it may run `spec` at all: TenantDisabled for a disabled tenant, the
        422 naming the quota for a task larger than its whole quota (`field` prefixes the field, e.g. `task` for a
        schedule's task, which is checked when the schedule is written rather than left to fail at each run)."""
        load = self.store.tenant_load(tenant)
        if not load.enabled:
            raise TenantDisabled(tenant)
        too_large = larger_than_whole_quota(tenant, load.quotas, spec)
        if too_large is not None:
            raise InvalidParameter(f"{field}.{too_large.field}", too_large.rule) if field else too_large
        return load

    def execution_input(self, task: Task, *, queue_timeout_seconds: int | None = None) -> dict[str, Any]:
        """What the task's workflow execution starts with. A QUEUED task's (`queued`) first waits for a slot, at
        most `queue_timeout_seconds` (the spec's, unless given)."""
        spec = task.spec
        tags = [
            {"Key": "taskrunner:task-id", "Value": task.task_id},
            {"Key": "taskrunner:tenant", "Value": task.tenant},
        ]
        if task.schedule:
            tags.append({"Key": "taskrunner:schedule", "Value": task.schedule})
        if task.scheduled_time:
            scheduled = task.scheduled_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
            tags.append({"Key": "taskrunner:scheduled-time", "Value": scheduled})
        tags += [{"Key": k, "Value": v} for k, v in (spec.tags or {}).items()]
        family = task_definition_family(self.settings, spec)
        execution_input: dict[str, Any] = {
            "task_id": task.task_id,
            "tenant": task.tenant,
            "task_definition": {
                "family": family,
                "image": launch_image(self.settings, spec.image),
                "cpu": str(spec.cpu),
                "memory": str(spec.memory),
                "cpu_architecture": spec.architecture.value,
                "ephemeral_storage_gib": spec.ephemeral_storage_gib,
            },
            "overrides": run_task_overrides(spec),
            "capacity_provider": "FARGATE_SPOT" if spec.capacity is Capacity.SPOT else "FARGATE",
            "ecs_group": ecs_group(task.task_id),
            "timeout_seconds": spec.timeout_seconds,
            "queued": task.status is TaskStatus.QUEUED,
            "queue_timeout_seconds": queue_timeout_seconds or spec.queue_timeout_seconds,
            "tags": tags,
            # MarkProvisioning writes the status index key the store would write (the store decides its layout)
            "status_keys": {"PROVISIONING": self.store.status_key(task, TaskStatus.PROVISIONING)},
        }
        # A recorded task definition takes the workflow straight to RunTask (no ECS call, no registration).
        task_definition_arn = self.task_definitions.lookup(family) if self.task_definitions else None
        if task_definition_arn:
            execution_input["prepared"] = {"task_definition_arn": task_definition_arn}
        return execution_input

    # ------------------------------------------------------------------ reads

    def exists(self, task_id: str) -> bool:
        return self.store.get(task_id) is not None

    def get(self, tenant: str, task_id: str) -> Task:
        task = self.store.get(task_id) if is_task_id(task_id) else None
        if task is None or task.tenant != tenant:
            raise TaskNotFound(task_id)
        return task

    def list_tasks(
        self, tenant: str, status: TaskStatus | None, limit: int, next_token: str | None, schedule: str | None = None
    ) -> TaskPage:
        items, token = self.store.list_tasks(tenant, status, limit, next_token, schedule)
        return TaskPage(items=items, next_token=token)

    def active_runs(self, tenant: str, schedule: str, look_back: int = 100) -> list[Task]:
        """The schedule's runs that have not finished (newest first, among its last `look_back` runs)."""
        items, _ = self.store.list_tasks(tenant, None, look_back, None, schedule)
        return [task for task in items if not task.status.terminal]

    def logs_of(self, tenant: str, task_id: str, limit: int, next_token: str | None) -> LogPage:
        task = self.get(tenant, task_id)
        if not task.ecs_task_arn:
            return LogPage(events=[], next_token=None)
        events, token = self.logs.read(self.log_stream(task.ecs_task_arn), limit, next_token)
        return LogPage(events=events, next_token=token)

    def log_stream(self, ecs_task_arn: str) -> str:
        ecs_task_id = ecs_task_arn.rsplit("/", 1)[-1]
        return f"{self.settings.task_log_stream_prefix}/{CONTAINER_NAME}/{ecs_task_id}"

    def usage(self, tenant: str, start: date, end: date) -> Usage:
        if end < start:
            raise InvalidParameter("to", f"must not be before from ({start.isoformat()})")
        if (end - start).days + 1 > MAX_USAGE_DAYS:
            raise InvalidParameter("to", f"the range may span at most {MAX_USAGE_DAYS} days")
        days: dict[date, UsageDay] = {}
        totals = UsageRow()
        for day, m in self.store.usage(tenant, start, end):
            row = days.setdefault(day, UsageDay(date=day))
            for acc in (row, totals):
                acc.tasks += 1
                acc.billed_seconds += m.billed_seconds
                acc.vcpu_seconds += m.vcpu_seconds
                acc.gib_seconds += m.gib_seconds
                acc.ephemeral_storage_gib_seconds += m.ephemeral_storage_gib_seconds
                acc.cost_usd = round(acc.cost_usd + m.cost_usd, 10)
        return Usage(tenant=tenant, from_date=start, to_date=end, totals=totals, days=[days[d] for d in sorted(days)])

    # ------------------------------------------------------------------ cancellation and timeout

    def cancel(self, tenant: str, task_id: str, reason: str = CANCEL_REASON) -> Task:
        task = self.get(tenant, task_id)
        if task.status is TaskStatus.QUEUED:
            cancelled = self._end_waiting(task, TaskStatus.CANCELLED, reason)
            if cancelled is not None:
                return cancelled
            task = self._reload(task_id)  # its workflow moved it on meanwhile: cancel it as one that may run
        task = self._move_to(task, TaskStatus.CANCELLED, reason, raise_if_terminal=True)
        if task.execution_arn:
            self.orchestrator.stop(task.execution_arn, reason)
        ecs_task_arn = self.find_ecs_task(task)
        if ecs_task_arn:
            # The ECS task's STOPPED event finalizes and meters it (the execution no longer will).
            self.compute.stop_task(ecs_task_arn, reason)
            return self._remember_arn(task, ecs_task_arn)
        return self.finalize(task_id, Outcome.NOT_STARTED, None, reason=reason)

    def _end_waiting(self, task: Task, status: TaskStatus, reason: str, *, dispatch: bool = True) -> Task | None:
        """End a task that waits in the queue (cancelled, or one that can never start): it never ran, so it is
        finalized at once (billed 0), giving back its place in the queue or the slot a dispatch granted it; then its
        workflow is stopped. None when the task left QUEUED meanwhile."""
        for _ in range(_MAX_RACE_RETRIES):
            if task.status is not TaskStatus.QUEUED:
                return None
            changes = self._final_fields(task, status, None, reason)
            try:
                ended = self.store.finalize(task, status, changes, f"task/{task.task_id}", self.meter(task, None))
            except StaleStatus:
                task = self._reload(task.task_id)
                continue
            if task.execution_arn:
                self.orchestrator.stop(task.execution_arn, reason)
            if dispatch:
                self._dispatch_quietly(task.tenant)
            return ended
        raise StaleStatus(f"task {task.task_id} kept changing while its wait was ended")

    def stop_for_timeout(self, task_id: str) -> str | None:
        """Mark the task TIMED_OUT and stop its ECS task. Returns the ECS task ARN, if there is one."""
        task = self.store.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        reason = f"Timed out after {task.spec.timeout_seconds} s"
        task = self._move_to(task, TaskStatus.TIMED_OUT, reason, raise_if_terminal=False)
        ecs_task_arn = self.find_ecs_task(task)
        if ecs_task_arn:
            self.compute.stop_task(ecs_task_arn, reason)
            self._remember_arn(task, ecs_task_arn)
        return ecs_task_arn

    def find_ecs_task(self, task: Task, *, thorough: bool = False) -> str | None:
        """The ECS task started for `task`: the one on its record, else the one its startedBy or group finds.

        The group is only found by describing the family's tasks, so the search is bounded: on the request path
        (cancel, timeout, finalize) to one page of the family's running tasks, for the reconciler (`thorough`)
        to ten pages of running and stopped ones. A task it misses is still finished by its ECS events, which
        carry the group."""
        if task.ecs_task_arn:
            return task.ecs_task_arn
        return self.compute.find_task(
            task.task_id,
            ecs_group(task.task_id),
            task_definition_family(self.settings, task.spec),
            max_scanned=THOROUGH_SCAN_TASKS if thorough else REQUEST_PATH_SCAN_TASKS,
        )

    def _move_to(self, task: Task, status: TaskStatus, reason: str, *, raise_if_terminal: bool) -> Task:
        for _ in range(_MAX_RACE_RETRIES):
            if not task.status.can_become(status):
                if raise_if_terminal and task.status.terminal:
                    raise TaskAlreadyTerminal(task.task_id, task.status.value)
                return task
            try:
                return self.store.transition(task, status, {"status_reason": reason, "updated_at": self.clock()})
            except StaleStatus:
                task = self._reload(task.task_id)
        raise StaleStatus(f"task {task.task_id} kept changing while moving to {status}")

    def _remember_arn(self, task: Task, ecs_task_arn: str) -> Task:
        for _ in range(_MAX_RACE_RETRIES):
            if task.ecs_task_arn == ecs_task_arn:
                return task
            try:
                return self.store.update(task, {"ecs_task_arn": ecs_task_arn, "updated_at": self.clock()})
            except StaleStatus:
                task = self._reload(task.task_id)
        return task

    def _reload(self, task_id: str) -> Task:
        task = self.store.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    # ------------------------------------------------------------------ ECS task state changes

    def on_ecs_task_state_change(self, observation: TaskObservation) -> Task | None:
        """Live status from ECS events, and the safety net that finalizes tasks nobody else did."""
        task_id = observation.task_id(ECS_GROUP_PREFIX)
        task = self.store.get(task_id) if task_id else None
        if task is None or observation.ecs_task_arn is None:
            return None
        if observation.stopped:
            return self.finalize(task.task_id, Outcome.EVENT, observation)
        if task.status in (TaskStatus.CANCELLED, TaskStatus.TIMED_OUT):
            self.compute.stop_task(observation.ecs_task_arn, task.status_reason or CANCEL_REASON)
            return self._remember_arn(task, observation.ecs_task_arn)
        if observation.last_status == "RUNNING":
            return self._mark_running(task, observation)
        return self._remember_arn(task, observation.ecs_task_arn)

    def _mark_running(self, task: Task, observation: TaskObservation) -> Task:
        changes = {
            "started_at": observation.started_at or self.clock(),
            "ecs_task_arn": observation.ecs_task_arn,
            "updated_at": self.clock(),
        }
        for _ in range(_MAX_RACE_RETRIES):
            if not task.status.can_become(TaskStatus.RUNNING):
                return task
            try:
                return self.store.transition(task, TaskStatus.RUNNING, changes)
            except StaleStatus:
                task = self._reload(task.task_id)
        return task

    # ------------------------------------------------------------------ finalization and metering

    def finalize(
        self,
        task_id: str,
        outcome: Outcome,
        observation: TaskObservation | None,
        *,
        reason: str | None = None,
        launched: bool | None = None,
    ) -> Task:
        """Give the task its final status and its one metering record. Safe to call any number of
        times, from the state machine and the event path alike: the first complete call wins.

        A task whose ECS task is still running is only given its final status here; it is metered when
        its ECS task reports STOPPED. So is a task that may have an ECS task nobody has observed (RunTask was
        called, but the workflow ended without the task's description): metering it 0 now would block the
        real record, so its ECS task's STOPPED event meters it, or the reconciler does after asking ECS.
        `launched=False` is the caller's word (the reconciler's, after looking) that no ECS task exists.

        An error saying ECS will not run the task's recorded task definition (someone deregistered it) drops that
        record, so that the family's next task registers a new revision instead of failing the same way."""
        if outcome is Outcome.ERROR and self.task_definitions and names_an_unusable_task_definition(reason):
            self.task_definitions.forget(task_definition_family(self.settings, self._reload(task_id).spec))
        for _ in range(_MAX_RACE_RETRIES):
            task = self._reload(task_id)
            if task.metering is not None:
                return task
            unobserved = (observation is None or observation.ecs_task_arn is None) and launched is not False
            may_have_launched = self.may_have_launched(task)
            ecs_task_arn = None
            if unobserved and (may_have_launched or outcome is Outcome.ERROR):
                ecs_task_arn = self.find_ecs_task(task)
            # its ECS task's STOPPED event meters it (or the reconciler, which asks ECS)
            awaiting_stop = unobserved and (may_have_launched or ecs_task_arn is not None)
            if ecs_task_arn and outcome is Outcome.ERROR and not task.status.terminal:
                # The workflow lost track of a task that ECS is running or ran: its ECS events finish it.
                return self._remember_arn(task, ecs_task_arn)
            status = self._final_status(task, outcome, observation)
            if outcome is Outcome.QUEUE_TIMED_OUT and not task.status.terminal:
                reason = queue_timeout_reason(task.spec.queue_timeout_seconds, self.store.tenant_load(task.tenant))
            changes = self._final_fields(task, status, observation, reason)
            ecs_running = observation is not None and observation.ecs_task_arn and not observation.stopped
            try:
                if ecs_running or awaiting_stop:
                    if ecs_task_arn:
                        changes["ecs_task_arn"] = ecs_task_arn
                    if task.status.terminal:
                        return self._remember_arn(task, ecs_task_arn) if ecs_task_arn else task
                    return self.store.transition(task, status, changes)
                metering_key = (observation.ecs_task_arn if observation else None) or f"task/{task_id}"
                done = self.store.finalize(task, status, changes, metering_key, self.meter(task, observation))
            except StaleStatus:
                continue
            if task.slot_held is not None or task.status is TaskStatus.QUEUED:
                self._dispatch_quietly(task.tenant)  # its slot, or its place in the queue, was given back
            return done
        raise StaleStatus(f"task {task_id} kept changing while being finalized")

    @staticmethod
    def may_have_launched(task: Task) -> bool:
        """Whether an ECS task may exist for `task`: the workflow reached RunTask (it marks the task
        PROVISIONING first), or an ECS task was seen."""
        return (
            task.provisioning_at is not None
            or task.ecs_task_arn is not None
            or task.status in (TaskStatus.PROVISIONING, TaskStatus.RUNNING)
        )

    @staticmethod
    def _final_status(task: Task, outcome: Outcome, observation: TaskObservation | None) -> TaskStatus:
        if task.status.terminal:
            return task.status
        if outcome in (Outcome.TIMED_OUT, Outcome.QUEUE_TIMED_OUT):
            return TaskStatus.TIMED_OUT
        if outcome is Outcome.NOT_STARTED:
            return TaskStatus.CANCELLED
        if observation is None or observation.ecs_task_arn is None:
            return TaskStatus.FAILED
        if observation.stop_code == "UserInitiated":
            return TaskStatus.CANCELLED
        if observation.exit_code == 0 and observation.stop_code in (None, "EssentialContainerExited"):
            return TaskStatus.SUCCEEDED
        return TaskStatus.FAILED

    def _final_fields(
        self, task: Task, status: TaskStatus, observation: TaskObservation | None, reason: str | None
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {"updated_at": self.clock()}
        if observation is not None:
            if observation.ecs_task_arn:
                changes["ecs_task_arn"] = observation.ecs_task_arn
            for key, value in (
                ("started_at", observation.started_at or task.started_at),
                ("stopped_at", observation.stopped_at),
                ("exit_code", observation.exit_code),
                ("stop_code", observation.stop_code),
            ):
                if value is not None:
                    changes[key] = value
        if not task.status.terminal or task.status_reason is None:
            detail = None
            if observation is not None and status is not TaskStatus.SUCCEEDED:
                detail = observation.container_reason or observation.stopped_reason
            changes["status_reason"] = reason or detail or (observation.stopped_reason if observation else None)
        if changes.get("status_reason") is None:
            changes.pop("status_reason", None)
        return changes

    # ------------------------------------------------------------------ the fair queue

    def wait_for_slot(self, task_id: str, token: str) -> Task:
        """The workflow of a QUEUED task waits for a slot (its WaitForSlot state): remember the task token that
        the task's grant completes, then dispatch its tenant. A task that holds a slot already (granted before its
        workflow got here), or that waits no more (cancelled, say), is resumed at once: its workflow moves on, and
        MarkProvisioning lets only a task that holds a slot through."""
        task = self._reload(task_id)
        for _ in range(_MAX_RACE_RETRIES):
            if task.status is not TaskStatus.QUEUED:
                break
            try:
                task = self.store.update(task, {"queue_token": token, "updated_at": self.clock()})
                break
            except StaleStatus:
                task = self._reload(task_id)
        if task.status is not TaskStatus.QUEUED or task.slot_held is not None:
            self.orchestrator.resume(token, False)
            return task
        self.dispatch(task.tenant)
        return task

    def dispatch(self, tenant: str) -> int:
        """Grant slots to the tenant's queued tasks, oldest first, while the oldest still waiting fits: first in,
        first out, so a task that does not fit stops the dispatch and none behind it starts before it. A granted
        task keeps QUEUED, holding its slot, until its workflow (resumed here with its task token) marks it
        PROVISIONING. Returns how many were granted."""
        load = self.store.tenant_load(tenant)
        granted = 0
        token: str | None = None
        while load.queued_tasks > 0 and granted < MAX_GRANTS_PER_DISPATCH:
            page, token = self.store.list_in_status(tenant, TaskStatus.QUEUED, DISPATCH_PAGE_SIZE, token)
            for task in page:
                if task.slot_held is not None:
                    continue  # granted already, on its way to PROVISIONING
                load, outcome = self._grant(task, load)
                if outcome is _Grant.DOES_NOT_FIT and self._can_never_start(task, load):
                    load = self.store.tenant_load(tenant)
                    continue
                if outcome is _Grant.DOES_NOT_FIT:
                    return granted
                granted += outcome is _Grant.GRANTED
            if not token:
                break
        return granted

    def _can_never_start(self, task: Task, load: TenantLoad) -> bool:
        """End a queued task that its tenant's quota, lowered while it waited, can no longer hold even with nothing
        else in flight (FAILED, billed 0), so that it does not hold up the queue behind it until its queue timeout.
        Whether it was ended."""
        too_large = larger_than_whole_quota(task.tenant, load.quotas, task.spec)
        if too_large is None:
            return False
        reason = f"Can never start: {too_large} (the quota was lowered while it waited in the queue)"
        return self._end_waiting(task, TaskStatus.FAILED, reason, dispatch=False) is not None

    def _grant(self, task: Task, load: TenantLoad) -> tuple[TenantLoad, _Grant]:
        slot = Slot.of(task.spec)
        for _ in range(_MAX_RACE_RETRIES):
            if not load.fits(slot):
                return load, _Grant.DOES_NOT_FIT
            try:
                if self.store.grant(task, slot, load, {"updated_at": self.clock()}):
                    self._resume_granted(task.task_id)
                    return load.with_slot(slot, from_queue=True), _Grant.GRANTED
            except StaleStatus:
                return load, _Grant.GONE  # granted by another dispatch, or it ended
            load = self.store.tenant_load(task.tenant)
        return load, _Grant.DOES_NOT_FIT  # the tenant keeps changing: the next dispatch goes on

    def _resume_granted(self, task_id: str) -> None:
        """Resume the workflow of a task just granted its slot, if it has given its token yet (read after the grant:
        a workflow that gives it later finds the slot itself, see wait_for_slot)."""
        task = self.store.get(task_id)
        if task is not None and task.queue_token and not self.orchestrator.resume(task.queue_token, False):
            logger.warning("a granted task's workflow no longer waits; the reconciler starts it again", task_id=task_id)

    def _dispatch_quietly(self, tenant: str) -> None:
        """Dispatch after a slot (or a place in the queue) was given back. Its failure must not fail what freed the
        slot, which is done: the queue's own dispatches and the reconciler's, every few minutes, make up for it."""
        try:
            self.dispatch(tenant)
        except Exception:
            logger.exception("could not dispatch the tenant's queue", tenant=tenant)

    # ------------------------------------------------------------------ metering

    def meter(self, task: Task, observation: TaskObservation | None) -> Metering:
        spec = task.spec
        pull_started = observation.pull_started_at if observation else None
        stopped = observation.stopped_at if observation else None
        billed = fargate.billed_seconds(pull_started, stopped)
        capacity = spec.capacity
        if observation and observation.capacity_provider:
            capacity = Capacity.SPOT if observation.capacity_provider == "FARGATE_SPOT" else Capacity.ON_DEMAND
        c = fargate.charge(
            billed=billed,
            cpu_units=spec.cpu,
            memory_mib=spec.memory,
            ephemeral_storage_gib=spec.ephemeral_storage_gib,
            architecture=spec.architecture.value,
            spot=capacity is Capacity.SPOT,
            prices=self.prices,
        )
        return Metering(
            billed_seconds=c.billed_seconds,
            vcpu=float(c.vcpu),
            memory_gib=float(c.memory_gib),
            vcpu_seconds=float(c.vcpu_seconds),
            gib_seconds=float(c.gib_seconds),
            ephemeral_storage_gib_seconds=float(c.ephemeral_storage_gib_seconds),
            architecture=spec.architecture,
            capacity=capacity,
            cost_usd=float(c.cost_usd),
            window_start=pull_started if billed else None,
            window_end=(stopped or pull_started) if billed else None,
            ecs_task_arn=observation.ecs_task_arn if observation else None,
            region=self.settings.region,
            price_source=c.price_source,
            price_as_of=c.price_as_of,
        )


def default_usage_range(today: date) -> tuple[date, date]:
    return today.replace(day=1), today


def usage_day(metering: Metering, finalized_at: datetime) -> date:
    return (metering.window_end or finalized_at).astimezone(UTC).date()


__all__ = [
    "Outcome",
    "TaskService",
    "default_usage_range",
    "execution_arn_for",
    "new_task_id",
    "task_definition_family",
    "usage_day",
]
