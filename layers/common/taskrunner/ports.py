"""What the domain needs from the outside world. Adapters implement these with boto3; tests with fakes."""

from __future__ import annotations

from datetime import date
from typing import Any, Protocol

from taskrunner.fair_queue import TenantLoad
from taskrunner.models import LogEvent, Metering, Slot, Task, TaskStatus
from taskrunner.observation import TaskObservation


class TaskStore(Protocol):
    def create(self, task: Task) -> None:
        """Store a new task as it is, leaving its tenant's counters alone; never overwrites an existing one (raises
        TaskAlreadyExists). Submissions go through `admit` or `enqueue`, which count the task in its tenant's quota."""

    def get(self, task_id: str) -> Task | None: ...

    def list_tasks(
        self, tenant: str, status: TaskStatus | None, limit: int, next_token: str | None, schedule: str | None = None
    ) -> tuple[list[Task], str | None]:
        """Newest first, optionally only one schedule's runs. Raises InvalidParameter for a token it did not
        issue."""

    def transition(self, task: Task, new_status: TaskStatus, changes: dict[str, Any]) -> Task:
        """Move `task` from its current (stored) status to `new_status`, applying `changes`.
        Raises StaleStatus when the stored status is no longer `task.status`."""

    def update(self, task: Task, changes: dict[str, Any]) -> Task:
        """Change fields other than status, provided the status is still `task.status` (else StaleStatus)."""

    def finalize(
        self, task: Task, new_status: TaskStatus, changes: dict[str, Any], metering_key: str, metering: Metering
    ) -> Task:
        """Atomically write the task's one metering record (keyed by `metering_key`, never overwritten)
        and its final fields, and give back what it took of its tenant's quota: the slot it holds
        (`task.slot_held`), or its place in the queue (a QUEUED task without a slot). Raises StaleStatus when the
        stored task is not `task` any more (its status or whether it holds a slot) or already carries a metering
        record."""

    # -- the fair queue (taskrunner.fair_queue)

    def tenant_load(self, tenant: str) -> TenantLoad:
        """The tenant's quotas, whether it is enabled and its counters, read consistently. A tenant without an item
        (the admin tenant, before its first task) is enabled, has no quotas and nothing in flight."""

    def admit(self, task: Task, load: TenantLoad) -> bool:
        """Store a new task that holds a slot (`task.slot_held`) and add the slot to its tenant's counters, in one
        transaction, provided the tenant's quotas are still `load`'s, the slot fits them and nobody is queued.
        False when that condition failed (read the load again and decide anew); TaskAlreadyExists when the task
        exists."""

    def enqueue(self, task: Task) -> None:
        """Store a new QUEUED task without a slot and count it in its tenant's queued_tasks, in one transaction.
        TaskAlreadyExists when the task exists."""

    def grant(self, task: Task, slot: Slot, load: TenantLoad, changes: dict[str, Any]) -> bool:
        """Give a QUEUED task without a slot its slot (it stays QUEUED, holding it, with `changes`): the tenant's
        counters gain the slot and its queue loses the task, in one transaction, provided the tenant's quotas are
        still `load`'s and the slot fits them. False when the tenant's condition failed (read the load again);
        StaleStatus when the task is no longer a QUEUED task without a slot."""

    def adjust_counters(self, tenant: str, expected: TenantLoad, delta: dict[str, int]) -> bool:
        """Add `delta` to the tenant's counters (by TenantLoad field name) provided they are still `expected`'s.
        False when they changed meanwhile (the reconciler's repair of counters that drifted)."""

    def tenants(self) -> list[str]:
        """The tenants that have an item (those the tenant administration created), by name, through an index."""

    def usage(self, tenant: str, start: date, end: date) -> list[tuple[date, Metering]]:
        """The tenant's metering records whose day falls in [start, end]."""

    def list_in_status(
        self,
        tenant: str,
        status: TaskStatus,
        limit: int,
        next_token: str | None,
        *,
        created_since: str | None = None,
        unmetered_only: bool = False,
    ) -> tuple[list[Task], str | None]:
        """The tenant's tasks in `status`, oldest first, through the status index (never a table scan):
        only those whose id is `created_since` or later (ids sort by creation time), and with `unmetered_only`
        only those without a metering record. A page may hold fewer than `limit` tasks while a token follows."""

    def status_key(self, task: Task, status: TaskStatus) -> str:
        """The status index partition key (gsi2pk) of `task` once it is in `status`. The state machine writes it
        for PROVISIONING (MarkProvisioning), from the execution input."""


class TaskDefinitionCache(Protocol):
    def lookup(self, family: str) -> str | None:
        """The ARN of the task definition the workflow registered for `family` and recorded, if there is one."""

    def forget(self, family: str) -> None:
        """Drop `family`'s recorded task definition: ECS will not run it any more (deregistered or deleted)."""


class Orchestrator(Protocol):
    def start(self, name: str, execution_input: dict[str, Any]) -> str:
        """Start the workflow execution called `name`; an existing one of that name counts as started.
        Returns its ARN."""

    def stop(self, execution_arn: str, cause: str) -> None:
        """Stop the execution if it is still running."""

    def resume(self, token: str, output: Any) -> bool:
        """Complete the waiting Task state of `token` with `output` (SendTaskSuccess). False when the token is no
        longer waited on (it was delivered already, or its execution ended or timed out)."""


class Compute(Protocol):
    def find_task(self, task_id: str, group: str, family: str, *, max_scanned: int) -> str | None:
        """The ARN of the ECS task started for this task, if one exists: started by `task_id`, or in
        `group` among at most `max_scanned` tasks of the task definition `family` (a bounded number of calls)."""

    def stop_task(self, ecs_task_arn: str, reason: str) -> None: ...

    def describe_task(self, ecs_task_arn: str) -> TaskObservation | None:
        """What ECS says about the task now, or None when ECS does not know it (any more)."""


class Executions(Protocol):
    """Workflow executions by ARN (the reconciler's view; it neither knows nor needs the state machine)."""

    def status(self, execution_arn: str) -> str | None:
        """RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED (or PENDING_REDRIVE); None when there is no such
        execution."""

    def stop(self, execution_arn: str, cause: str) -> None:
        """Stop the execution if it is still running."""


class LogReader(Protocol):
    def read(self, stream: str, limit: int, next_token: str | None) -> tuple[list[LogEvent], str | None]: ...
