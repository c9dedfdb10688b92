"""In-memory implementations of the domain's ports, with the same conditional semantics as DynamoDB."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any

from taskrunner.adapters import status_partition
from taskrunner.errors import (
    InvalidParameter,
    ScheduleAlreadyExists,
    ScheduleNotFound,
    StaleStatus,
    TaskAlreadyExists,
)
from taskrunner.fair_queue import COUNTERS, TenantLoad
from taskrunner.models import LogEvent, Metering, Slot, Task, TaskStatus
from taskrunner.observation import TaskObservation
from taskrunner.schedules import Schedule, ScheduleRun
from taskrunner.service import usage_day
from taskrunner.tenants import Quotas


class InMemoryTaskStore:
    """Tasks, metering records and tenant items (quotas, enabled, the fair queue's counters) in memory."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.metering: dict[str, tuple[str, date, Metering]] = {}
        self.status_queries = 0
        #: tenant items by name: {"quotas": Quotas | None, "enabled": bool, <counter>: int}
        self.tenant_items: dict[str, dict[str, Any]] = {}
        #: how many admissions and grants to fail as if the tenant changed in between (then reads agree again)
        self.lose_tenant_races = 0

    # -- tenants, as the tenant administration writes them

    def put_tenant(self, name: str, quotas: Quotas | None = None, *, enabled: bool = True) -> None:
        item = self.tenant_items.setdefault(name, dict.fromkeys(COUNTERS, 0))
        item.update(quotas=quotas, enabled=enabled)

    def counters(self, tenant: str) -> dict[str, int]:
        item = self.tenant_items.get(tenant, {})
        return {name: item.get(name, 0) for name in COUNTERS}

    def create(self, task: Task) -> None:
        if task.task_id in self.tasks:
            raise TaskAlreadyExists(task.task_id)
        self.tasks[task.task_id] = copy.deepcopy(task)

    def get(self, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        return copy.deepcopy(task) if task else None

    def list_tasks(self, tenant: str, status: TaskStatus | None, limit: int, next_token: str | None, schedule=None):
        items = sorted(
            (
                t
                for t in self.tasks.values()
                if t.tenant == tenant
                and (status is None or t.status == status)
                and (schedule is None or t.schedule == schedule)
            ),
            key=lambda t: t.task_id,
            reverse=True,
        )
        if next_token:
            if not next_token.startswith("after:"):
                raise InvalidParameter("next_token", "is not a token this listing issued")
            items = [t for t in items if t.task_id < next_token.removeprefix("after:")]
        page = items[:limit]
        more = len(items) > limit
        return [copy.deepcopy(t) for t in page], (f"after:{page[-1].task_id}" if more else None)

    def list_in_status(
        self, tenant, status, limit, next_token, *, created_since=None, unmetered_only=False
    ) -> tuple[list[Task], str | None]:
        """Oldest first, like the status index read forwards; tokens are "from:<last task id>"."""
        items = sorted(
            (
                t
                for t in self.tasks.values()
                if t.tenant == tenant
                and t.status == status
                and (created_since is None or t.task_id >= created_since)
                and not (unmetered_only and t.metering is not None)
            ),
            key=lambda t: t.task_id,
        )
        if next_token:
            if not next_token.startswith("from:"):
                raise InvalidParameter("next_token", "is not a token this listing issued")
            items = [t for t in items if t.task_id > next_token.removeprefix("from:")]
        page = items[:limit]
        more = len(items) > limit
        self.status_queries += 1
        return [copy.deepcopy(t) for t in page], (f"from:{page[-1].task_id}" if more else None)

    def _apply(self, task: Task, new_status: TaskStatus | None, changes: dict[str, Any]) -> Task:
        stored = self.tasks.get(task.task_id)
        if stored is None or stored.status != task.status:
            raise StaleStatus("stale")
        data = stored.model_dump()
        data.update(changes)
        if new_status is not None:
            data["status"] = new_status
        bookkeeping = {name: changes.get(name, getattr(stored, name)) for name in ("slot_held", "queue_token")}
        self.tasks[task.task_id] = Task.model_validate(data).model_copy(update=bookkeeping)
        return copy.deepcopy(self.tasks[task.task_id])

    def transition(self, task: Task, new_status: TaskStatus, changes: dict[str, Any]) -> Task:
        return self._apply(task, new_status, changes)

    def update(self, task: Task, changes: dict[str, Any]) -> Task:
        return self._apply(task, None, changes)

    def finalize(self, task, new_status, changes, metering_key, metering) -> Task:
        stored = self.tasks.get(task.task_id)
        if metering_key in self.metering or stored is None or stored.metering is not None:
            raise StaleStatus("already metered")
        if (stored.slot_held is None) != (task.slot_held is None):
            raise StaleStatus("granted a slot meanwhile")
        result = self._apply(task, new_status, {**changes, "metering": metering})
        self.metering[metering_key] = (task.tenant, usage_day(metering, datetime.now(UTC)), metering)
        if task.slot_held is not None:
            self._add(
                task.tenant, running_tasks=-1, running_cpu=-task.slot_held.cpu, running_memory=-task.slot_held.memory
            )
        elif task.status is TaskStatus.QUEUED:
            self._add(task.tenant, queued_tasks=-1)
        return result

    # -- the fair queue, with the conditions of DynamoTaskStore's transactions

    def tenant_load(self, tenant: str) -> TenantLoad:
        item = self.tenant_items.get(tenant, {})
        quotas = item.get("quotas")
        return TenantLoad(
            tenant=tenant,
            enabled=item.get("enabled", True),
            quotas=quotas or Quotas(),
            quotas_as_read=quotas.model_dump() if quotas else None,
            **self.counters(tenant),
        )

    def _add(self, tenant: str, **delta: int) -> None:
        item = self.tenant_items.setdefault(tenant, dict.fromkeys(COUNTERS, 0))
        for name, amount in delta.items():
            item[name] = item.get(name, 0) + amount

    def _still(self, load: TenantLoad, slot: Slot, *, nobody_queued: bool) -> bool:
        if self.lose_tenant_races > 0:
            self.lose_tenant_races -= 1
            return False
        now = self.tenant_load(load.tenant)
        same_quotas = now.quotas_as_read == load.quotas_as_read
        return same_quotas and now.fits(slot) and not (nobody_queued and now.queued_tasks > 0)

    def admit(self, task: Task, load: TenantLoad) -> bool:
        if task.task_id in self.tasks:
            raise TaskAlreadyExists(task.task_id)
        if not self._still(load, task.slot_held, nobody_queued=True):
            return False
        self.tasks[task.task_id] = copy.deepcopy(task)
        slot = task.slot_held
        self._add(task.tenant, running_tasks=1, running_cpu=slot.cpu, running_memory=slot.memory)
        return True

    def enqueue(self, task: Task) -> None:
        if task.task_id in self.tasks:
            raise TaskAlreadyExists(task.task_id)
        self.tasks[task.task_id] = copy.deepcopy(task)
        self._add(task.tenant, queued_tasks=1)

    def grant(self, task: Task, slot: Slot, load: TenantLoad, changes: dict[str, Any]) -> bool:
        stored = self.tasks.get(task.task_id)
        if stored is None or stored.status is not TaskStatus.QUEUED or stored.slot_held is not None:
            raise StaleStatus("no longer queued without a slot")
        if not self._still(load, slot, nobody_queued=False):
            return False
        self._apply(stored, None, {**changes, "slot_held": slot})
        self._add(task.tenant, running_tasks=1, running_cpu=slot.cpu, running_memory=slot.memory, queued_tasks=-1)
        return True

    def adjust_counters(self, tenant: str, expected: TenantLoad, delta: dict[str, int]) -> bool:
        if self.counters(tenant) != expected.counters():
            return False
        self._add(tenant, **delta)
        return True

    def tenants(self) -> list[str]:
        return sorted(self.tenant_items)

    def usage(self, tenant: str, start: date, end: date):
        return [(d, m) for t, d, m in self.metering.values() if t == tenant and start <= d <= end]

    def status_key(self, task: Task, status: TaskStatus) -> str:
        return status_partition(task.tenant, status)


class InMemoryTaskDefinitionCache:
    """Task definition ARNs by family, as the workflow records them once it has registered one."""

    def __init__(self, registered: dict[str, str] | None = None) -> None:
        self.registered = dict(registered or {})
        self.lookups: list[str] = []

    def lookup(self, family: str) -> str | None:
        self.lookups.append(family)
        return self.registered.get(family)

    def forget(self, family: str) -> None:
        self.registered.pop(family, None)


class RecordingOrchestrator:
    def __init__(self, fail_with: Exception | None = None) -> None:
        self.started: dict[str, dict[str, Any]] = {}
        self.stopped: list[str] = []
        self.resumed: list[tuple[str, Any]] = []
        self.gone: set[str] = set()
        self.fail_with = fail_with

    def start(self, name: str, execution_input: dict[str, Any]) -> str:
        if self.fail_with:
            raise self.fail_with
        self.started.setdefault(name, execution_input)
        return f"arn:aws:states:us-east-1:123456789012:execution:run-task:{name}"

    def stop(self, execution_arn: str, cause: str) -> None:
        self.stopped.append(execution_arn)

    def resume(self, token: str, output: Any) -> bool:
        """Records the resume; a token in `gone` is not waited on any more."""
        self.resumed.append((token, output))
        return token not in self.gone


class RecordingExecutions:
    """Executions by ARN: a status each (None: no such execution); stopping one makes it ABORTED."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        self.stopped: list[tuple[str, str]] = []
        self.described: list[str] = []

    def status(self, execution_arn: str) -> str | None:
        self.described.append(execution_arn)
        return self.statuses.get(execution_arn)

    def stop(self, execution_arn: str, cause: str) -> None:
        self.stopped.append((execution_arn, cause))
        if self.statuses.get(execution_arn) == "RUNNING":
            self.statuses[execution_arn] = "ABORTED"


class FakeCompute:
    def __init__(self) -> None:
        self.tasks_by_started_by: dict[str, str] = {}
        self.stopped: list[tuple[str, str]] = []
        #: what DescribeTasks answers, by ECS task ARN (absent: ECS does not know the task)
        self.descriptions: dict[str, TaskObservation] = {}
        self.described: list[str] = []

    def find_task(self, task_id: str, group: str, family: str, *, max_scanned: int) -> str | None:
        assert group == f"taskrunner:{task_id}" and family.startswith("taskrunner-")
        return self.tasks_by_started_by.get(task_id)

    def stop_task(self, ecs_task_arn: str, reason: str) -> None:
        self.stopped.append((ecs_task_arn, reason))

    def describe_task(self, ecs_task_arn: str) -> TaskObservation | None:
        self.described.append(ecs_task_arn)
        return self.descriptions.get(ecs_task_arn)


class FakeLogs:
    def __init__(self) -> None:
        self.streams: dict[str, list[LogEvent]] = {}

    def read(self, stream: str, limit: int, next_token: str | None):
        events = self.streams.get(stream, [])
        start = int(next_token) if next_token else 0
        page = events[start : start + limit]
        return page, (str(start + len(page)) if page else None)


class InMemoryScheduleStore:
    def __init__(self) -> None:
        self.schedules: dict[tuple[str, str], Schedule] = {}

    def create(self, schedule: Schedule) -> None:
        key = (schedule.tenant, schedule.name)
        if key in self.schedules:
            raise ScheduleAlreadyExists(schedule.name)
        self.schedules[key] = copy.deepcopy(schedule)

    def get(self, tenant: str, name: str) -> Schedule | None:
        schedule = self.schedules.get((tenant, name))
        return copy.deepcopy(schedule) if schedule else None

    def list_schedules(self, tenant: str, limit: int, next_token: str | None):
        names = sorted(n for t, n in self.schedules if t == tenant and (not next_token or n > next_token))
        page = names[:limit]
        return [self.schedules[(tenant, n)] for n in page], (page[-1] if len(names) > limit else None)

    def replace(self, schedule: Schedule) -> None:
        if (schedule.tenant, schedule.name) not in self.schedules:
            raise ScheduleNotFound(schedule.name)
        self.schedules[(schedule.tenant, schedule.name)] = copy.deepcopy(schedule)

    def delete(self, tenant: str, name: str) -> bool:
        return self.schedules.pop((tenant, name), None) is not None

    def record_run(self, tenant: str, name: str, run: ScheduleRun) -> None:
        schedule = self.schedules.get((tenant, name))
        if schedule and (schedule.last_run is None or schedule.last_run.scheduled_time <= run.scheduled_time):
            schedule.last_run = run


class RecordingScheduler:
    def __init__(self) -> None:
        self.schedules: dict[tuple[str, str], Schedule] = {}

    def put(self, schedule: Schedule) -> None:
        self.schedules[(schedule.tenant, schedule.name)] = schedule

    def delete(self, tenant: str, name: str) -> None:
        self.schedules.pop((tenant, name), None)
