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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from taskrunner.models import DEFAULT_TENANT, Task, TaskStatus
from taskrunner.observability import logger
from taskrunner.observation import TaskObservation
from taskrunner.ports import Executions
from taskrunner.service import Outcome, TaskService, task_id_at
from taskrunner.settings import Settings

#: the statuses of tasks that are not finished
ACTIVE_STATUSES = (TaskStatus.SUBMITTED, TaskStatus.PROVISIONING, TaskStatus.RUNNING)
#: final statuses given while the ECS task may still run, or may exist unobserved (the workflow ended after RunTask
#: without the task's description): metered once it reports STOPPED
AWAITING_STOP_STATUSES = (TaskStatus.TIMED_OUT, TaskStatus.CANCELLED, TaskStatus.FAILED)
#: execution statuses of a workflow that is still going (PENDING_REDRIVE: a redrive is starting it again)
EXECUTION_GOING = frozenset({"RUNNING", "PENDING_REDRIVE"})
REASON_PREFIX = "Settled by the reconciler"
PAGE_SIZE = 100
MAX_TIMEOUT_SECONDS = 1_209_600  # TaskSpec.timeout_seconds' upper bound (14 days)


@dataclass(frozen=True)
class ReconcilePolicy:
    #: how long past its timeout a task may still be running before the reconciler stops it, and how long a
    #: terminal task may wait for its ECS task's STOPPED event before the reconciler meters it
    grace_seconds: int = 300
    #: how long a SUBMITTED or PROVISIONING task may go without an ECS task while its workflow runs
    launch_grace_seconds: int = 900
    #: tasks examined per run at most (each costs a DescribeExecution, and ECS calls when it is not progressing)
    max_tasks: int = 500
    #: how far back (by creation) to look for terminal tasks (AWAITING_STOP_STATUSES) still waiting for their metering
    lookback_seconds: int = MAX_TIMEOUT_SECONDS + 86_400
    #: the tenants whose tasks are reconciled (the status index is partitioned by tenant)
    tenants: tuple[str, ...] = (DEFAULT_TENANT,)

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

    def add(self, task: Task, action: Action) -> None:
        self.examined += 1
        self.counts[action.value] += 1
        if action in (Action.SETTLED, Action.STOPPING, Action.UNSTOPPABLE):
            self.changed.append((task.task_id, action, task.status))

    def as_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            **{action.value: self.counts[action.value] for action in Action},
            "truncated": self.truncated,
            "tasks": [{"task_id": i, "action": a.value, "status": s.value} for i, a, s in self.changed],
        }


class Reconciler:
    def __init__(self, service: TaskService, executions: Executions, policy: ReconcilePolicy) -> None:
        self.service = service
        self.store = service.store
        self.compute = service.compute
        self.executions = executions
        self.policy = policy

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.service.clock

    # ------------------------------------------------------------------ one run

    def run(self, out_of_time: Callable[[], bool] = lambda: False) -> ReconcileReport:
        report = ReconcileReport()
        seen: set[str] = set()
        for listed in self._candidates():
            if listed.task_id in seen:  # it moved on to a status listed later in this run
                continue
            seen.add(listed.task_id)
            if report.examined >= self.policy.max_tasks or out_of_time():
                report.truncated = True
                break
            try:
                task, action = self.reconcile(listed)
            except Exception:  # one task must not keep the others from being reconciled
                logger.exception("could not reconcile a task", task_id=listed.task_id, status=listed.status)
                task, action = listed, Action.ERROR
            report.add(task, action)
        logger.info("reconciliation done", **{k: v for k, v in report.as_dict().items() if k != "tasks"})
        return report

    def _candidates(self) -> Iterator[Task]:
        since = task_id_at(self.clock() - timedelta(seconds=self.policy.lookback_seconds), 0)
        for tenant in self.policy.tenants:
            for status in ACTIVE_STATUSES:
                yield from self._listed(tenant, status)
            for status in AWAITING_STOP_STATUSES:
                yield from self._listed(tenant, status, created_since=since, unmetered_only=True)

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

    def reconcile(self, listed: Task) -> tuple[Task, Action]:
        """Look at one task and settle, stop or leave it. Returns the task as it is now and what was done."""
        task = self.store.get(listed.task_id)  # the index is eventually consistent; the table is not
        if task is None or task.metering is not None:
            return task or listed, Action.UNTOUCHED
        if task.status.terminal:
            action = self._awaiting_stop(task) if task.status in AWAITING_STOP_STATUSES else Action.UNTOUCHED
        else:
            action = self._active(task)
        if action in (Action.UNTOUCHED, Action.WAITING):
            return task, action
        return self.store.get(task.task_id) or task, action

    def _active(self, task: Task) -> Action:
        now = self.clock()
        timeout = timedelta(seconds=task.spec.timeout_seconds)
        grace = timedelta(seconds=self.policy.grace_seconds)
        timed_out = now >= task.created_at + timeout
        past_timeout = now >= task.created_at + timeout + grace
        launching = task.status in (TaskStatus.SUBMITTED, TaskStatus.PROVISIONING)
        past_launch = launching and now >= task.created_at + timedelta(seconds=self.policy.launch_grace_seconds)
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


__all__ = ["Action", "ReconcilePolicy", "ReconcileReport", "Reconciler"]
