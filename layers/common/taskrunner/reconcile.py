"""The reconciler: settles the tasks that nothing else will.

A task is finished by its workflow (the Finalize states) or by its ECS task's STOPPED event. When both are lost (the
execution was stopped or failed before Finalize, the event never arrived), the task would stay SUBMITTED,
PROVISIONING or RUNNING for ever, unbilled. The reconciler runs on a schedule, looks at those tasks through the
status index (a Query per tenant and status, never a Scan, oldest first, at most `max_tasks` a run) and decides
from what it can observe:

- the workflow execution is RUNNING and the task is within its timeout (and, before it runs, within the launch
  grace): it is progressing; nothing is touched and ECS is not even asked;
- otherwise its ECS task (recorded, or found by startedBy / group as the other paths find it) is described:
  - STOPPED: the task is finalized from that description (exit code, stop code, timestamps, metering), exactly as
    the STOPPED event would have finalized it;
  - still running and past its timeout plus the grace period: it is stopped the way the timeout path stops it
    (TIMED_OUT, then StopTask); the STOPPED event or a later pass meters it;
  - still running within its timeout: it is left to run (its events, or a later pass, finish it);
  - unknown to ECS (ECS forgets stopped tasks after about an hour): finalized FAILED (TIMED_OUT past the timeout)
    and metered 0, since nothing is left to meter;
- no ECS task at all, and the execution ended (or does not exist) or the launch grace passed: the execution is
  stopped if it still runs, and the task is finalized FAILED (TIMED_OUT past its timeout) with a status reason
  that names the reconciler, metered 0 (no image pull started).

Tasks that were given a final status while their ECS task still ran, or may have had one that nobody observed
(TIMED_OUT, CANCELLED, FAILED after RunTask was called), are metered when the ECS task's STOPPED event comes. When
that event is lost too, they stay unmetered, so the reconciler also looks at those tasks without a metering
record, created within `lookback_seconds` (a task may time out up to 14 days after it was created): once a grace
period has passed since they became terminal, a STOPPED ECS task meters them, a missing one meters them 0, and one
that still runs is sent StopTask again and reported as unstoppable (logged as an error and counted, which a metric
alarm can watch).

Every settlement goes through `TaskService.finalize`, the one finalize path of the workflow and the event path:
the final status and the one metering record are written in one conditional transaction, so a reconciler racing
with the workflow or an event ends with one record.

The fair queue (taskrunner.fair_queue) gets the same net. The tenants are every tenant that has an item (listed by
name through an index) and the configured ones, visited in turn (each run starts with the next tenant). For each:

- a QUEUED task past its queue_timeout_seconds (and the grace) is finalized TIMED_OUT, billed 0 (its workflow's
  WaitForSlot timeout is the plan; this is the net);
- a QUEUED task that holds a slot but has not moved on for the grace period, or one of the oldest waiting ones
  unchanged for the launch grace, has its execution looked at: a running one holding a slot is resumed again with
  its task token; one that ended (the local stack restarted, say) is replaced by a new execution,
  `<task_id>-<n>`, or, if none can be started, the task is finalized FAILED saying why;
- the counters on the tenant item are compared with the tasks that hold slots (and the tasks that wait); counters
  that drifted are corrected, only after a second count agrees and only if they did not change meanwhile (a
  conditional update), and the repair is logged;
- the tenant's queue is dispatched.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from taskrunner.errors import OrchestrationUnavailable, StaleStatus
from taskrunner.fair_queue import COUNTERS
from taskrunner.models import DEFAULT_TENANT, MAX_TIMEOUT_SECONDS, Task, TaskStatus
from taskrunner.observability import logger
from taskrunner.observation import TaskObservation
from taskrunner.ports import Executions
from taskrunner.service import Outcome, TaskService, task_id_at
from taskrunner.settings import MissingSettings, Settings

#: the statuses of tasks that are not finished (in the order a task goes through them: one that moves on during a run
#: is listed again in its new status, and looked at once)
ACTIVE_STATUSES = (TaskStatus.SUBMITTED, TaskStatus.QUEUED, TaskStatus.PROVISIONING, TaskStatus.RUNNING)
#: final statuses given while the ECS task may still run, or may exist unobserved (the workflow ended after RunTask
#: without the task's description): metered once it reports STOPPED
AWAITING_STOP_STATUSES = (TaskStatus.TIMED_OUT, TaskStatus.CANCELLED, TaskStatus.FAILED)
#: execution statuses of a workflow that is still going (PENDING_REDRIVE: a redrive is starting it again)
EXECUTION_GOING = frozenset({"RUNNING", "PENDING_REDRIVE"})
REASON_PREFIX = "Settled by the reconciler"
PAGE_SIZE = 100


@dataclass(frozen=True)
class ReconcilePolicy:
    #: how long past its timeout a task may still be running before the reconciler stops it, and how long a
    #: terminal task may wait for its ECS task's STOPPED event before the reconciler meters it
    grace_seconds: int = 300
    #: how long a SUBMITTED or PROVISIONING task may go without an ECS task while its workflow runs
    launch_grace_seconds: int = 900
    #: tasks examined per run at most (each costs a DescribeExecution, and ECS calls when it is not progressing)
    max_tasks: int = 500
    #: how far back (by creation) to look for terminal tasks (AWAITING_STOP_STATUSES) still waiting for their metering:
    #: a task may wait 14 days in the queue, then run 14 days
    lookback_seconds: int = 2 * MAX_TIMEOUT_SECONDS + 86_400
    #: tenants reconciled besides those that have an item (the status index is partitioned by tenant)
    tenants: tuple[str, ...] = (DEFAULT_TENANT,)
    #: the oldest tasks of a tenant's queue, waiting without a slot, whose executions are looked at (those behind
    #: them are looked at once they get near the head: their grant resumes them, or finds their execution gone)
    queue_head: int = 25
    #: how long to wait before counting a tenant's slots a second time, when the first count disagrees with its
    #: counters (a task admitted just before the count may not be in the status index yet)
    recount_after_seconds: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ReconcilePolicy:
        tenants = tuple(t.strip() for t in settings.reconcile_tenants.split(",") if t.strip())
        return cls(
            grace_seconds=settings.reconcile_grace_seconds,
            launch_grace_seconds=settings.reconcile_launch_grace_seconds,
            max_tasks=settings.reconcile_max_tasks,
            lookback_seconds=settings.reconcile_lookback_seconds,
            tenants=tenants or (DEFAULT_TENANT,),
        )


class Action(StrEnum):
    UNTOUCHED = "untouched"  # progressing normally (or already finished): nothing done
    QUEUED = "queued"  # waiting in its tenant's queue, nothing to do: costs no call, and not counted in max_tasks
    RESUMED = "resumed"  # holds a slot, its workflow still waited: resumed again with its task token
    RESTARTED = "restarted"  # queued, its workflow execution had ended: a new execution waits for its slot
    WAITING = "waiting"  # its ECS task runs within its timeout: its events (or a later pass) finish it
    SETTLED = "settled"  # finalized: final status and its one metering record
    STOPPING = "stopping"  # past its timeout: marked TIMED_OUT and StopTask sent; metered once ECS reports STOPPED
    UNSTOPPABLE = "unstoppable"  # StopTask was sent more than the grace period ago and ECS still runs it
    ERROR = "error"  # the reconciler could not look at it this time (logged); the next run tries again


@dataclass
class ReconcileReport:
    examined: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    #: the tasks this run settled or stopped: (task id, action, status)
    changed: list[tuple[str, Action, TaskStatus]] = field(default_factory=list)
    #: True when tasks were left for the next run (max_tasks reached or out of time)
    truncated: bool = False
    #: counters corrected, by tenant: {counter: (was, now)}
    repaired: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    #: queued tasks granted a slot by the reconciler's dispatches
    granted: int = 0

    @property
    def spent(self) -> int:
        """Tasks that cost calls to look at (those waiting in a queue cost none)."""
        return self.examined - self.counts[Action.QUEUED.value]

    def add(self, task: Task, action: Action) -> None:
        self.examined += 1
        self.counts[action.value] += 1
        if action in (Action.SETTLED, Action.STOPPING, Action.UNSTOPPABLE, Action.RESUMED, Action.RESTARTED):
            self.changed.append((task.task_id, action, task.status))

    def as_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            **{action.value: self.counts[action.value] for action in Action},
            "truncated": self.truncated,
            "granted": self.granted,
            "repaired": {
                tenant: {k: list(v) for k, v in counters.items()} for tenant, counters in self.repaired.items()
            },
            "tasks": [{"task_id": i, "action": a.value, "status": s.value} for i, a, s in self.changed],
        }


class Reconciler:
    def __init__(
        self,
        service: TaskService,
        executions: Executions,
        policy: ReconcilePolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.service = service
        self.store = service.store
        self.compute = service.compute
        self.executions = executions
        self.policy = policy
        self.sleep = sleep

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.service.clock

    # ------------------------------------------------------------------ one run

    def run(self, out_of_time: Callable[[], bool] = lambda: False) -> ReconcileReport:
        report = ReconcileReport()
        tenants = self._tenants()
        for tenant in tenants:
            if not self._reconcile_tenant(tenant, report, out_of_time):
                report.truncated = True
                break
        for tenant in tenants:  # cheap, and what unblocks queues: every tenant, every run
            if out_of_time():
                report.truncated = True
                break
            try:
                self._repair_counters(tenant, report)
                report.granted += self.service.dispatch(tenant)
            except Exception:  # one tenant must not keep the others' queues from moving
                logger.exception("could not repair or dispatch a tenant's queue", tenant=tenant)
        logger.info("reconciliation done", **{k: v for k, v in report.as_dict().items() if k != "tasks"})
        return report

    def _tenants(self) -> list[str]:
        """Every tenant that has an item and the configured ones, starting with the next one each minute, so that
        a run cut short by max_tasks does not leave the same tenants out every time."""
        tenants = sorted({*self.policy.tenants, *self.store.tenants()})
        start = int(self.clock().timestamp() // 60) % len(tenants) if tenants else 0
        return tenants[start:] + tenants[:start]

    def _reconcile_tenant(self, tenant: str, report: ReconcileReport, out_of_time: Callable[[], bool]) -> bool:
        """Look at the tenant's unfinished and unmetered tasks. False when the run is out of budget or time."""
        seen: set[str] = set()
        waiting = 0
        for listed in self._candidates(tenant):
            if listed.task_id in seen:  # it moved on to a status listed later in this run
                continue
            seen.add(listed.task_id)
            if report.spent >= self.policy.max_tasks or out_of_time():
                return False
            at_head = (
                listed.status is TaskStatus.QUEUED and listed.slot_held is None and waiting < self.policy.queue_head
            )
            waiting += listed.status is TaskStatus.QUEUED and listed.slot_held is None
            try:
                task, action = self.reconcile(listed, at_head=at_head)
            except Exception:  # one task must not keep the others from being reconciled
                logger.exception("could not reconcile a task", task_id=listed.task_id, status=listed.status)
                task, action = listed, Action.ERROR
            report.add(task, action)
        return True

    def _candidates(self, tenant: str) -> Iterator[Task]:
        for status in ACTIVE_STATUSES:
            yield from self._listed(tenant, status)
        for status in AWAITING_STOP_STATUSES:
            yield from self._listed(tenant, status, created_since=self._since(), unmetered_only=True)

    def _since(self) -> str:
        return task_id_at(self.clock() - timedelta(seconds=self.policy.lookback_seconds), 0)

    def _listed(self, tenant: str, status: TaskStatus, **criteria: Any) -> Iterator[Task]:
        token: str | None = None
        while True:
            items, token = self.store.list_in_status(
                tenant, status, min(PAGE_SIZE, self.policy.max_tasks + 1), token, **criteria
            )
            yield from items
            if not token:
                return

    # ------------------------------------------------------------------ one task

    def reconcile(self, listed: Task, *, at_head: bool = True) -> tuple[Task, Action]:
        """Look at one task and settle, stop or leave it. Returns the task as it is now and what was done.
        `at_head`: a queued task among the oldest of its tenant's queue (whose execution is worth a look)."""
        task = self.store.get(listed.task_id)  # the index is eventually consistent; the table is not
        if task is None or task.metering is not None:
            return task or listed, Action.UNTOUCHED
        if task.status.terminal:
            action = self._awaiting_stop(task) if task.status in AWAITING_STOP_STATUSES else Action.UNTOUCHED
        elif task.status is TaskStatus.QUEUED:
            action = self._queued(task, at_head=at_head)
        else:
            action = self._active(task)
        if action in (Action.UNTOUCHED, Action.WAITING, Action.QUEUED):
            return task, action
        return self.store.get(task.task_id) or task, action

    def _active(self, task: Task) -> Action:
        now = self.clock()
        timeout = timedelta(seconds=task.spec.timeout_seconds)
        grace = timedelta(seconds=self.policy.grace_seconds)
        # a task that waited in the queue starts its run (and its launch) when its workflow marks it PROVISIONING
        started = task.provisioning_at or task.created_at
        timed_out = now >= started + timeout
        past_timeout = now >= started + timeout + grace
        launching = task.status in (TaskStatus.SUBMITTED, TaskStatus.PROVISIONING)
        past_launch = launching and now >= started + timedelta(seconds=self.policy.launch_grace_seconds)
        execution = self.executions.status(task.execution_arn) if task.execution_arn else None
        going = execution in EXECUTION_GOING
        if execution is None and launching and not (past_launch or past_timeout):
            return Action.UNTOUCHED  # its submission may be starting the execution right now
        if going and not (past_timeout or past_launch):
            return Action.UNTOUCHED  # progressing normally

        ecs_task_arn = self.service.find_ecs_task(task, thorough=True)
        observation = self.compute.describe_task(ecs_task_arn) if ecs_task_arn else None
        if ecs_task_arn and observation is None:
            gone = TaskObservation(ecs_task_arn=ecs_task_arn, last_status="STOPPED")
            reason = f"{REASON_PREFIX}: ECS no longer describes its task {ecs_task_arn}, so its run cannot be metered"
            return self._settle(task, Outcome.TIMED_OUT if timed_out else Outcome.EVENT, gone, reason)
        if observation is not None and observation.stopped:
            return self._settle(task, Outcome.EVENT, observation, None)
        if observation is not None:
            if not past_timeout:
                return Action.WAITING
            self.service.stop_for_timeout(task.task_id)
            logger.warning("stopped a task past its timeout", task_id=task.task_id, ecs_task_arn=ecs_task_arn)
            return Action.STOPPING

        # No ECS task: it never launched.
        if execution is None:
            why = "its workflow execution does not exist"
        elif not going:
            why = f"its workflow execution ended {execution}"
        else:
            why = (
                f"it timed out after {task.spec.timeout_seconds} s"
                if timed_out
                else f"no ECS task started within {self.policy.launch_grace_seconds} s"
            )
            assert task.execution_arn is not None
            self.executions.stop(task.execution_arn, f"{REASON_PREFIX}: {why}")
            if self.service.find_ecs_task(task, thorough=True):  # launched after all, just before the execution stopped
                return Action.WAITING
            why += "; its workflow execution was stopped"
        outcome = Outcome.TIMED_OUT if timed_out else Outcome.ERROR
        return self._settle(task, outcome, None, f"{REASON_PREFIX}: {why}, and no ECS task was started", launched=False)

    def _queued(self, task: Task, *, at_head: bool) -> Action:
        """A task in its tenant's queue: timed out there, or its workflow lost (or its resume lost), or waiting."""
        now = self.clock()
        grace = timedelta(seconds=self.policy.grace_seconds)
        if now >= task.created_at + timedelta(seconds=task.spec.queue_timeout_seconds) + grace:
            if task.execution_arn:
                self.executions.stop(task.execution_arn, f"{REASON_PREFIX}: it timed out in the queue")
            return self._settle(task, Outcome.QUEUE_TIMED_OUT, None, None, launched=False)
        if task.slot_held is not None:
            look = now >= task.updated_at + grace  # granted, but its workflow has not marked it PROVISIONING
        else:
            look = at_head and now >= task.updated_at + timedelta(seconds=self.policy.launch_grace_seconds)
        if not look:
            return Action.QUEUED
        execution = self.executions.status(task.execution_arn) if task.execution_arn else None
        if execution in EXECUTION_GOING:
            if (
                task.slot_held is not None
                and task.queue_token
                and self.service.orchestrator.resume(task.queue_token, False)
            ):
                logger.warning("resumed a granted task's workflow again", task_id=task.task_id)
                return Action.RESUMED
            return Action.QUEUED
        return self._start_again(task, f"its workflow execution {'ended ' + execution if execution else 'is gone'}")

    def _start_again(self, task: Task, why: str) -> Action:
        """Give a queued task whose execution ended a new one, `<task_id>-<n>`, waiting for the rest of its queue
        timeout; the task is finalized FAILED, saying why, when none can be started."""
        now = self.clock()
        left = task.created_at + timedelta(seconds=task.spec.queue_timeout_seconds) - now
        name = next_execution_name(task)
        execution_input = self.service.execution_input(task, queue_timeout_seconds=max(1, int(left.total_seconds())))
        try:
            execution_arn = self.service.orchestrator.start(name, execution_input)
        except (OrchestrationUnavailable, MissingSettings) as exc:
            reason = f"{REASON_PREFIX}: {why} while it waited in the queue, and no new one could be started ({exc})"
            return self._settle(task, Outcome.ERROR, None, reason, launched=False)
        with contextlib.suppress(
            StaleStatus
        ):  # it moved on meanwhile (the new execution finds out at MarkProvisioning)
            self.store.update(task, {"execution_arn": execution_arn, "updated_at": now})
        logger.warning("started a queued task's workflow again", task_id=task.task_id, why=why, execution=name)
        return Action.RESTARTED

    # ------------------------------------------------------------------ a tenant's counters

    def _repair_counters(self, tenant: str, report: ReconcileReport) -> None:
        """Correct the tenant's counters when they disagree with the tasks that hold slots (and those that wait):
        counted twice, `recount_after_seconds` apart, and written only if both counts agree and the counters did not
        change meanwhile (a conditional update), so that work in flight is never mistaken for a leak."""
        before = self.store.tenant_load(tenant)
        counted = self._count(tenant)
        if counted == before.counters():
            return
        self.sleep(self.policy.recount_after_seconds)
        before = self.store.tenant_load(tenant)
        again = self._count(tenant)
        if again != counted or again == before.counters():
            return  # work in flight, or it settled by itself: the next run looks again
        delta = {name: again[name] - value for name, value in before.counters().items() if again[name] != value}
        if not self.store.adjust_counters(tenant, before, delta):
            return
        repaired = {name: (before.counters()[name], again[name]) for name in delta}
        report.repaired[tenant] = repaired
        logger.warning("repaired a tenant's counters that drifted from its tasks", tenant=tenant, counters=repaired)

    def _count(self, tenant: str) -> dict[str, int]:
        """What the tenant's counters should be: the slots of its unmetered tasks that hold one, and its queued
        tasks that wait without one."""
        counts = dict.fromkeys(COUNTERS, 0)
        listings = [self._listed(tenant, status) for status in ACTIVE_STATUSES]
        listings += [
            self._listed(tenant, status, created_since=self._since(), unmetered_only=True)
            for status in AWAITING_STOP_STATUSES
        ]
        seen: set[str] = set()
        for task in (task for listing in listings for task in listing):
            if task.task_id in seen or task.metering is not None:
                continue
            seen.add(task.task_id)
            if task.slot_held is not None:
                counts["running_tasks"] += 1
                counts["running_cpu"] += task.slot_held.cpu
                counts["running_memory"] += task.slot_held.memory
            elif task.status is TaskStatus.QUEUED:
                counts["queued_tasks"] += 1
        return counts

    # ------------------------------------------------------------------ terminal tasks

    def _awaiting_stop(self, task: Task) -> Action:
        """A terminal task without metering: its ECS task was being stopped, or may exist unobserved."""
        if self.clock() < task.updated_at + timedelta(seconds=self.policy.grace_seconds):
            return Action.UNTOUCHED  # its STOPPED event is still expected
        ecs_task_arn = self.service.find_ecs_task(task, thorough=True)
        if ecs_task_arn is None:
            outcome = Outcome.TIMED_OUT if task.status is TaskStatus.TIMED_OUT else Outcome.NOT_STARTED
            return self._settle(task, outcome, None, None, launched=False)
        observation = self.compute.describe_task(ecs_task_arn)
        if observation is None:
            return self._settle(task, Outcome.EVENT, TaskObservation(ecs_task_arn, last_status="STOPPED"), None)
        if observation.stopped:
            return self._settle(task, Outcome.EVENT, observation, None)
        self.compute.stop_task(ecs_task_arn, task.status_reason or f"{REASON_PREFIX}: {task.status.value}")
        logger.error(
            "ECS task does not stop",
            task_id=task.task_id,
            ecs_task_arn=ecs_task_arn,
            ecs_status=observation.last_status,
            status=task.status,
            waiting_seconds=int((self.clock() - task.updated_at).total_seconds()),
        )
        return Action.UNSTOPPABLE

    def _settle(
        self,
        task: Task,
        outcome: Outcome,
        observation: TaskObservation | None,
        reason: str | None,
        *,
        launched: bool | None = None,
    ) -> Action:
        """Finalize through the one finalize path. `launched=False`: the reconciler looked, and no ECS task exists
        (so the task is metered 0 rather than left waiting for a STOPPED event that cannot come)."""
        done = self.service.finalize(task.task_id, outcome, observation, reason=reason, launched=launched)
        if done.metering is None:
            return Action.WAITING  # finalize found an ECS task to leave it to
        logger.info(
            "task settled by the reconciler",
            task_id=task.task_id,
            was=task.status,
            status=done.status,
            billed_seconds=done.metering.billed_seconds,
            ecs_task_arn=done.ecs_task_arn,
        )
        return Action.SETTLED


def next_execution_name(task: Task) -> str:
    """The name of a task's next workflow execution: `<task_id>-2` after `<task_id>`, then `-3`, ..."""
    current = (task.execution_arn or "").rsplit(":", 1)[-1]
    suffix = current.removeprefix(f"{task.task_id}-")
    number = int(suffix) + 1 if current != suffix and suffix.isdigit() else 2
    return f"{task.task_id}-{number}"


__all__ = ["Action", "ReconcilePolicy", "ReconcileReport", "Reconciler", "next_execution_name"]
