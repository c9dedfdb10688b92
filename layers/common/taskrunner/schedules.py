"""Scheduled tasks: schedules of the API, and scheduled submission through the one submission path.

On AWS every schedule is an EventBridge Scheduler schedule whose target is the scheduled-submission function;
that function calls `ScheduleService.fire`, which submits through `TaskService.submit` like POST /tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from taskrunner.errors import InvalidParameter, ScheduleNotFound, TaskAlreadyTerminal
from taskrunner.models import DEFAULT_TENANT, Task, TaskSpec
from taskrunner.schedule_expressions import (
    ScheduleExpressionError,
    next_run_times,
    parse_schedule_expression,
    parse_timezone,
)
from taskrunner.service import TaskService, task_id_at, utcnow

#: names a URL path cannot carry: clients resolve `.` and `..` away as dot segments (RFC 3986 §5.2.4), so GET
#: /schedules/.. reaches `/`, and such a schedule could be created but never read, changed or deleted
UNADDRESSABLE_NAMES = frozenset({".", ".."})


def _addressable(name: str) -> str:
    if name in UNADDRESSABLE_NAMES:
        raise PydanticCustomError(
            "dot_segment_name",
            "must not be {name}: clients resolve it away as a URL dot segment, so /schedules/{name} would not reach it",
            {"name": name},
        )
    return name


ScheduleName = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9A-Za-z_.-]{1,56}$"),
    AfterValidator(_addressable),
    Field(
        description="1 to 56 letters, digits, '.', '_' or '-'; not `.` or `..`",
        examples=["nightly"],
        json_schema_extra={"pattern": r"^(?!\.\.?$)[0-9A-Za-z_.-]{1,56}$"},
    ),
]


class OverlapPolicy(StrEnum):
    """What a run does when the previous one is still going (Kubernetes `concurrencyPolicy`)."""

    ALLOW = "ALLOW"  # start it anyway
    FORBID = "FORBID"  # skip this run
    REPLACE = "REPLACE"  # cancel the running one(s), then start


class RunOutcome(StrEnum):
    STARTED = "STARTED"
    SKIPPED = "SKIPPED"
    REPLACED = "REPLACED"


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


class ScheduleSpec(BaseModel):
    """A schedule, as clients write it (POST /schedules, PUT /schedules/{name})."""

    model_config = ConfigDict(extra="forbid")

    name: ScheduleName
    schedule_expression: Annotated[
        str,
        StringConstraints(min_length=1, max_length=256),
        Field(
            description="cron(minutes hours day-of-month month day-of-week year), rate(value unit) or "
            "at(yyyy-mm-ddThh:mm:ss), as EventBridge Scheduler writes them",
            examples=["cron(0 3 * * ? *)", "rate(15 minutes)"],
        ),
    ]
    timezone: Annotated[
        str, Field(description="IANA time zone the expression is read in", examples=["Europe/Berlin"])
    ] = "UTC"
    task: TaskSpec
    overlap_policy: OverlapPolicy = OverlapPolicy.ALLOW
    enabled: bool = True
    description: Annotated[str | None, StringConstraints(max_length=512)] = None
    start_date: datetime | None = None
    end_date: datetime | None = None

    @field_validator("schedule_expression", "timezone")
    @classmethod
    def _readable_by_the_scheduler(cls, value: str, info: ValidationInfo) -> str:
        parse = parse_schedule_expression if info.field_name == "schedule_expression" else parse_timezone
        try:
            parse(value)
        except ScheduleExpressionError as exc:
            raise PydanticCustomError(info.field_name or "value", exc.rule) from exc
        return value

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _a_date_is_written_as_a_date(cls, value: Any) -> Any:
        # pydantic would read a number as seconds since 1970; the contract says ISO-8601.
        if isinstance(value, int | float):
            raise PydanticCustomError("datetime_type", "must be an ISO-8601 date-time such as 2027-01-01T09:00:00Z")
        return value

    @field_validator("start_date", "end_date")
    @classmethod
    def _utc_when_naive(cls, value: datetime | None) -> datetime | None:
        value = _aware(value)
        if value is not None:
            try:  # 0001-01-01T00:00:00+01:00 is a valid datetime, but no instant in UTC (nor a timestamp)
                value.astimezone(UTC)
            except OverflowError:
                raise PydanticCustomError(
                    "datetime_range", "must be a date-time between 0001-01-01 and 9999-12-31 in UTC"
                ) from None
        return value

    @model_validator(mode="after")
    def _dates_in_order(self) -> ScheduleSpec:
        if self.start_date and self.end_date and self.end_date <= self.start_date:
            raise PydanticCustomError("date_order", "end_date must be after start_date", {"field": "end_date"})
        return self


class ScheduleRun(BaseModel):
    scheduled_time: datetime
    outcome: RunOutcome
    task_id: str | None = None
    at: datetime


class Schedule(ScheduleSpec):
    model_config = ConfigDict(extra="ignore")

    tenant: str
    created_at: datetime
    updated_at: datetime
    last_run: ScheduleRun | None = None
    next_run_times: list[datetime] = []


class SchedulePage(BaseModel):
    items: list[Schedule]
    next_token: str | None = None


class FireResult(BaseModel):
    schedule: str
    scheduled_time: datetime
    outcome: RunOutcome
    task_id: str | None = None
    cancelled: list[str] = []


class ScheduledRunRequest(BaseModel):
    """What EventBridge Scheduler passes to the scheduled-submission function (the schedule's target Input).

    Schedules made through the API are looked up by name; a schedule declared in the template carries its
    `task` (and `overlap_policy`) in its Input instead."""

    model_config = ConfigDict(extra="ignore")

    tenant: str = DEFAULT_TENANT
    schedule_name: ScheduleName
    scheduled_time: datetime | None = None
    task: TaskSpec | None = None
    overlap_policy: OverlapPolicy = OverlapPolicy.ALLOW

    @field_validator("scheduled_time", mode="before")
    @classmethod
    def _placeholder_means_now(cls, value: object) -> object:
        return None if isinstance(value, str) and value.startswith("<aws.scheduler") else value

    @field_validator("scheduled_time")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class ScheduleStore(Protocol):
    def create(self, schedule: Schedule) -> None:
        """Raises ScheduleAlreadyExists."""

    def get(self, tenant: str, name: str) -> Schedule | None: ...

    def list_schedules(self, tenant: str, limit: int, next_token: str | None) -> tuple[list[Schedule], str | None]: ...

    def replace(self, schedule: Schedule) -> None:
        """Raises ScheduleNotFound."""

    def delete(self, tenant: str, name: str) -> bool: ...

    def record_run(self, tenant: str, name: str, run: ScheduleRun) -> None:
        """Set the schedule's last run, unless a later scheduled time is already recorded."""


class Scheduler(Protocol):
    def put(self, schedule: Schedule) -> None:
        """Create or update the EventBridge Scheduler schedule behind `schedule`."""

    def delete(self, tenant: str, name: str) -> None: ...


#: EventBridge Scheduler refuses a cron or rate schedule whose start date is further in the past than this.
START_DATE_PAST_LIMIT = timedelta(minutes=5)


def check_start_date(spec: ScheduleSpec, now: datetime) -> None:
    """Raise InvalidParameter (422) for what EventBridge Scheduler would refuse with a ValidationException (a 500
    once it got that far): a recurring schedule starting more than 5 minutes ago. One-time schedules ignore it."""
    if spec.start_date is None or spec.start_date >= now - START_DATE_PAST_LIMIT:
        return
    if parse_schedule_expression(spec.schedule_expression).kind == "at":
        return
    raise InvalidParameter(
        "start_date",
        "a cron or rate schedule cannot start more than 5 minutes in the past (EventBridge Scheduler's rule); "
        "omit start_date to start now",
    )


def scheduled_task_id(tenant: str, name: str, scheduled_time: datetime) -> str:
    """The task id of a schedule's run at `scheduled_time`: the same for every delivery of that run, so a
    schedule that fires twice for one time creates one task, and still sorted by time like every task id."""
    seed = hashlib.sha256(f"{tenant}/{name}/{scheduled_time.astimezone(UTC).isoformat()}".encode()).digest()
    return task_id_at(scheduled_time, int.from_bytes(seed[:10], "big"))


class ScheduleService:
    def __init__(
        self,
        *,
        store: ScheduleStore,
        scheduler: Scheduler,
        tasks: TaskService,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.tasks = tasks
        self.clock = clock

    def _with_next_runs(self, schedule: Schedule, count: int = 5) -> Schedule:
        if not schedule.enabled:
            return schedule.model_copy(update={"next_run_times": []})
        expression = parse_schedule_expression(schedule.schedule_expression)
        # A rate schedule counts from its start date, or from when it was last written (as EventBridge Scheduler
        # restarts it then).
        anchor = schedule.start_date or schedule.updated_at
        if schedule.end_date is not None and schedule.end_date < anchor:
            # Written without a start date and with an end date already past: it has ended before it began.
            return schedule.model_copy(update={"next_run_times": []})
        runs = next_run_times(expression, schedule.timezone, self.clock(), count, anchor, schedule.end_date)
        return schedule.model_copy(update={"next_run_times": runs})

    def create(self, tenant: str, spec: ScheduleSpec) -> Schedule:
        now = self.clock()
        check_start_date(spec, now)
        schedule = Schedule(**spec.model_dump(), tenant=tenant, created_at=now, updated_at=now)
        self.store.create(schedule)
        try:
            self.scheduler.put(schedule)
        except Exception:
            self.store.delete(tenant, spec.name)  # nothing half-made stays behind
            raise
        return self._with_next_runs(schedule)

    def get(self, tenant: str, name: str) -> Schedule:
        schedule = self.store.get(tenant, name)
        if schedule is None:
            raise ScheduleNotFound(name)
        return self._with_next_runs(schedule)

    def list_schedules(self, tenant: str, limit: int, next_token: str | None) -> SchedulePage:
        items, token = self.store.list_schedules(tenant, limit, next_token)
        return SchedulePage(items=[self._with_next_runs(s) for s in items], next_token=token)

    def update(self, tenant: str, name: str, spec: ScheduleSpec) -> Schedule:
        current = self.store.get(tenant, name)
        if current is None:
            raise ScheduleNotFound(name)
        if spec.start_date != current.start_date:  # one kept as it was has simply started
            check_start_date(spec, self.clock())
        schedule = Schedule(
            **spec.model_dump(),
            tenant=tenant,
            created_at=current.created_at,
            updated_at=self.clock(),
            last_run=current.last_run,
        )
        self.store.replace(schedule)
        self.scheduler.put(schedule)
        return self._with_next_runs(schedule)

    def delete(self, tenant: str, name: str) -> None:
        if self.store.get(tenant, name) is None:
            raise ScheduleNotFound(name)
        self.scheduler.delete(tenant, name)
        self.store.delete(tenant, name)

    def run_now(self, tenant: str, name: str) -> Task:
        """A manual run: starts at once whatever the overlap policy (like `kubectl create job --from`)."""
        schedule = self.get(tenant, name)
        now = self.clock()
        task = self._submit(tenant, schedule.name, schedule.task, now)
        self.store.record_run(
            tenant, name, ScheduleRun(scheduled_time=now, outcome=RunOutcome.STARTED, task_id=task.task_id, at=now)
        )
        return task

    def fire(self, request: ScheduledRunRequest) -> FireResult:
        """One scheduled run, as EventBridge Scheduler delivers it (at least once, so: idempotent)."""
        tenant, name = request.tenant, request.schedule_name
        scheduled_time = request.scheduled_time or self.clock()
        stored = self.store.get(tenant, name)
        if stored is not None:
            task_spec, policy = stored.task, stored.overlap_policy
        elif request.task is not None:
            task_spec, policy = request.task, request.overlap_policy
        else:
            raise ScheduleNotFound(name)
        task_id = scheduled_task_id(tenant, name, scheduled_time)
        if self.tasks.exists(task_id):  # the same run delivered again: make sure it was started, once
            task = self._submit(tenant, name, task_spec, scheduled_time, task_id=task_id)
            return FireResult(
                schedule=name, scheduled_time=scheduled_time, outcome=RunOutcome.STARTED, task_id=task.task_id
            )
        active = [t for t in self.tasks.active_runs(tenant, name) if t.task_id != task_id]
        cancelled: list[str] = []
        if active and policy is OverlapPolicy.FORBID:
            if stored is not None:
                self.store.record_run(
                    tenant,
                    name,
                    ScheduleRun(scheduled_time=scheduled_time, outcome=RunOutcome.SKIPPED, at=self.clock()),
                )
            return FireResult(schedule=name, scheduled_time=scheduled_time, outcome=RunOutcome.SKIPPED)
        if active and policy is OverlapPolicy.REPLACE:
            for running in active:
                try:
                    self.tasks.cancel(tenant, running.task_id, reason=f"Replaced by a newer run of {name}")
                    cancelled.append(running.task_id)
                except TaskAlreadyTerminal:
                    pass
        task = self._submit(tenant, name, task_spec, scheduled_time, task_id=task_id)
        outcome = RunOutcome.REPLACED if cancelled else RunOutcome.STARTED
        if stored is not None:
            self.store.record_run(
                tenant,
                name,
                ScheduleRun(scheduled_time=scheduled_time, outcome=outcome, task_id=task.task_id, at=self.clock()),
            )
        return FireResult(
            schedule=name, scheduled_time=scheduled_time, outcome=outcome, task_id=task.task_id, cancelled=cancelled
        )

    def _submit(
        self, tenant: str, name: str, spec: TaskSpec, scheduled_time: datetime, *, task_id: str | None = None
    ) -> Task:
        return self.tasks.submit(tenant, spec, task_id=task_id, schedule=name, scheduled_time=scheduled_time)
