"""The scheduler ticker: EventBridge Scheduler locally. Once a second it fires every enabled schedule whose run
time has come, by invoking the schedule's Lambda target with its Input, as EventBridge Scheduler does. It reads
the schedules from the emulator's Scheduler API, so schedules made through the task runner's API and those
declared in template.yaml fire alike."""

from __future__ import annotations

import json
import math
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from taskrunner_local.config import ROOT

if str(ROOT / "layers" / "common") not in sys.path:  # the layer's pure schedule-expression module
    sys.path.append(str(ROOT / "layers" / "common"))

from taskrunner.schedule_expressions import (
    ScheduleExpressionError,
    due_between,
    parse_schedule_expression,
)

TICK_SECONDS = 1.0


def _aware(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SchedulerTicker:
    def __init__(
        self,
        account: str,
        region: str,
        invoke_async: Callable[[str, Any], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.account = account
        self.region = region
        self.invoke_async = invoke_async
        self.clock = clock
        self.on_log = on_log or (lambda line: None)
        self.last_tick = clock()
        self.fired: list[tuple[str, datetime]] = []  # (schedule ARN, scheduled time), for inspection
        #: schedule ARN -> seconds: schedules fired at this local period instead of their expression (speed_up)
        self.local_periods: dict[str, float] = {}
        self._anchor = self.last_tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scheduler-ticker")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick(self.clock())
            except Exception as exc:  # a bad schedule must not stop the others
                self.on_log(f"scheduler tick failed: {exc!r}")

    def schedules(self) -> list[Any]:
        from moto.scheduler.models import scheduler_backends

        backend = scheduler_backends[self.account][self.region]
        return [s for group in list(backend.schedule_groups.values()) for s in list(group.schedules.values())]

    def due(self, start: datetime, end: datetime) -> list[tuple[Any, datetime]]:
        """The runs of enabled schedules due in (start, end], without firing them."""
        return [
            (schedule, scheduled_time)
            for schedule in self.schedules()
            if schedule.state == "ENABLED"
            for scheduled_time in self._due(schedule, start, end)
        ]

    def tick(self, now: datetime) -> list[tuple[str, datetime]]:
        """Fire every run due in (last tick, now]; returns what it fired."""
        start, self.last_tick = self.last_tick, now
        fired = []
        for schedule, scheduled_time in self.due(start, now):
            self._fire(schedule, scheduled_time)
            fired.append((schedule.arn, scheduled_time))
        self.fired += fired
        return fired

    def speed_up(self, arns: Iterable[str], max_period_seconds: float) -> dict[str, float]:
        """Fire those of the schedules `arns` whose expression is a rate() slower than `max_period_seconds` every
        `max_period_seconds` instead, counted from the ticker's start: template.yaml's periodic jobs (the
        reconciler, every 5 minutes on AWS) run often enough locally to be seen working. Returns the periods set."""
        wanted = set(arns)
        if max_period_seconds <= 0:
            return {}
        for schedule in self.schedules():
            if schedule.arn not in wanted:
                continue
            try:
                expression = parse_schedule_expression(schedule.schedule_expression)
            except ScheduleExpressionError:
                continue
            if expression.rate is not None and expression.rate.total_seconds() > max_period_seconds:
                self.local_periods[schedule.arn] = max_period_seconds
        return dict(self.local_periods)

    def _every(self, period: float, start: datetime, end: datetime) -> list[datetime]:
        """anchor + k * period (k >= 1) in (start, end]."""
        k = max(1, math.floor((start - self._anchor).total_seconds() / period))
        runs = []
        while (moment := self._anchor + timedelta(seconds=k * period)) <= end:
            if moment > start:
                runs.append(moment)
            k += 1
        return runs

    def _due(self, schedule: Any, start: datetime, end: datetime) -> list[datetime]:
        if schedule.arn in self.local_periods:
            return self._every(self.local_periods[schedule.arn], start, end)
        try:
            return self._due_by_expression(schedule, start, end)
        except ScheduleExpressionError as exc:  # one schedule this ticker cannot read must not stop the others
            self.on_log(f"schedule {schedule.arn} cannot be scheduled here: {exc.rule}")
            return []

    def _due_by_expression(self, schedule: Any, start: datetime, end: datetime) -> list[datetime]:
        expression = parse_schedule_expression(schedule.schedule_expression)
        # Rate schedules count from their start date, or else from when they were created or last updated: the
        # first run is one period after that, never at the moment of writing (as the API's next_run_times says).
        start_date = _aware(schedule.start_date)
        anchor = start_date or _aware(schedule.last_modified_date)
        if start_date is None and anchor is not None:
            start = max(start, anchor)
        return due_between(
            expression, schedule.schedule_expression_timezone or "UTC", start, end, anchor, _aware(schedule.end_date)
        )

    def _fire(self, schedule: Any, scheduled_time: datetime) -> None:
        target = schedule.target
        if ":lambda:" not in target["Arn"]:
            self.on_log(f"schedule {schedule.arn}: only Lambda targets run locally ({target['Arn']})")
            return
        text = target.get("Input") or "{}"
        for placeholder, value in {
            "<aws.scheduler.scheduled-time>": scheduled_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "<aws.scheduler.execution-id>": str(uuid.uuid4()),
            "<aws.scheduler.schedule-arn>": schedule.arn,
            "<aws.scheduler.attempt-number>": "1",
        }.items():
            text = text.replace(placeholder, value)
        self.invoke_async(target["Arn"], json.loads(text))
