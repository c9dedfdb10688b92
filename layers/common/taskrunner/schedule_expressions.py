"""EventBridge Scheduler schedule expressions: parse `cron(...)`, `rate(...)` and `at(...)`, and compute run times.

Pure domain code (no AWS calls). AWS cron fields are matched by `aws-croniter`; this module adds what it lacks:
IANA time zones, the EventBridge Scheduler daylight-saving rules, start/end dates, rate and one-time schedules,
user-facing error messages, and work-arounds for the aws-croniter defects listed at the end of this docstring.

Semantics implemented (EventBridge Scheduler, https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html):

* cron: the fields are wall-clock times in the schedule's time zone. Across a DST change 03:00 Europe/Berlin
  stays 03:00 Berlin (02:00 UTC in winter, 01:00 UTC in summer). A wall-clock time that does not exist
  (skipped by the spring-forward change) is skipped; a wall-clock time that happens twice (fall-back) runs
  once, at its first occurrence (the earlier UTC instant). Runs are whole minutes.
* rate: a fixed duration (a day is 24 hours, not a calendar day, so DST does not change it). The runs are
  `anchor + k * interval` for k = 0, 1, 2, ..., where `anchor` is `start_date` when given (AWS: "use the
  StartDate property to set the first occurrence"), otherwise the `after` argument of `next_run_times`
  (respectively the window start of `due_between`). Because results are strictly after `after`, a rate
  schedule without a start date first runs at `after + interval`: a caller that wants AWS's "starts
  invoking immediately at creation" passes the creation time as `start_date`. Seconds are kept (no rounding).
* at: one run at that wall-clock time in the schedule's time zone. A time in the spring-forward gap runs at the
  same instant as the PEP 495 `fold=0` reading (02:30 on a day Berlin jumps 02:00 -> 03:00 runs at 03:30
  CEST); an ambiguous fall-back time runs at its first occurrence. Like AWS, start_date and end_date are
  ignored for one-time schedules.
* start_date and end_date are inclusive bounds (AWS: invocations "might occur on, or after, the StartDate" and
  "might stop on, or before, the EndDate").

aws-croniter 2.1.1 defects worked around here (each is pinned by a test in tests/unit/test_schedule_expressions.py):

* `L` alone in day-of-week (the last day of the week, Saturday) never matches; it is rewritten to `7` here.
* `LW`, `*-5` and `5-*` pass its validation but then crash with a bare ValueError in parsing; `0/0` (a zero
  increment) also raises a bare ValueError. They are rejected here with a ScheduleExpressionError.
* Its search gives up after 10 recursive steps and returns None, so a schedule whose next run is years away
  (e.g. `cron(0 0 29 2 ? 2097-2199)`, next run 2104-02-29) looks finished. `_next_wall_time` resumes the search
  from the first day of the following month; each call still answers within its month, so nothing is skipped.
* It rounds its start time to the millisecond before truncating to the minute, so a search from 10:00:59.9996
  starts at 10:01:00 and returns 10:02; cursors are truncated to the minute here first.
* It works in UTC only (and requires `tzinfo is datetime.timezone.utc`). The search is run on naive wall-clock
  times dressed as UTC, and every result is converted back through the schedule's ZoneInfo.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from aws_croniter import AwsCroniter
from aws_croniter.exceptions import (
    AwsCroniterExpressionDayOfMonthError,
    AwsCroniterExpressionDayOfWeekError,
    AwsCroniterExpressionError,
    AwsCroniterExpressionHourError,
    AwsCroniterExpressionMinuteError,
    AwsCroniterExpressionMonthError,
    AwsCroniterExpressionYearError,
)

__all__ = [
    "ScheduleExpression",
    "ScheduleExpressionError",
    "due_between",
    "next_run_times",
    "parse_schedule_expression",
    "parse_timezone",
]

ErrorField = Literal["schedule_expression", "timezone", "start_date", "end_date"]

FORMS = "cron(minutes hours day-of-month month day-of-week year), rate(value unit) or at(yyyy-mm-ddThh:mm:ss)"
AWS_CRON_FORMAT = (
    "AWS cron has six fields (minutes hours day-of-month month day-of-week year), "
    "written as cron(0/5 * * * ? *); one of day-of-month and day-of-week must be ?"
)
MAX_COUNT = 1000
"""`next_run_times` returns at most this many times, whatever `count` asks."""

_FIELD_NAMES = ("minutes", "hours", "day-of-month", "month", "day-of-week", "year")
_FIELD_RULES = {
    "minutes": "minutes must be 0-59 (wildcards , - * /)",
    "hours": "hours must be 0-23 (wildcards , - * /)",
    "day-of-month": "day-of-month must be 1-31 (wildcards , - * ? / L W, e.g. 15, L, L-3, 15W)",
    "month": "month must be 1-12 or JAN-DEC (wildcards , - * /)",
    "day-of-week": (
        "day-of-week must be 1-7 or SUN-SAT, where 1 is Sunday (wildcards , - * ? L #, e.g. MON-FRI, 6L, 6#3)"
    ),
    "year": "year must be 1970-2199 (wildcards , - * /)",
}
_EXCEPTION_FIELDS: dict[type[Exception], str] = {
    AwsCroniterExpressionMinuteError: "minutes",
    AwsCroniterExpressionHourError: "hours",
    AwsCroniterExpressionDayOfMonthError: "day-of-month",
    AwsCroniterExpressionMonthError: "month",
    AwsCroniterExpressionDayOfWeekError: "day-of-week",
    AwsCroniterExpressionYearError: "year",
}
_RATE_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_SUB_MINUTE_UNITS = {"second", "seconds", "sec", "secs", "s", "millisecond", "milliseconds", "ms"}
_AT_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_FIRST_YEAR, _LAST_YEAR = 1970, 2199  # the years AWS cron accepts
_BEFORE_FIRST_YEAR = datetime(_FIRST_YEAR - 1, 12, 30, tzinfo=UTC)
_AFTER_LAST_YEAR = datetime(_LAST_YEAR + 1, 1, 2, tzinfo=UTC)
_TICK = timedelta(microseconds=1)
_WRAPPED = re.compile(r"(?P<kind>[A-Za-z]+)\((?P<body>.*)\)", re.DOTALL)


class ScheduleExpressionError(ValueError):
    """An invalid schedule: `field` names the input at fault, `rule` says what it must be, in user terms."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable despite the two-argument constructor
        return (type(self), (self.field, self.rule))


@dataclass(frozen=True)
class ScheduleExpression:
    """A parsed schedule expression. Exactly one of `cron_fields`, `rate` and `at` is set, according to `kind`."""

    kind: Literal["cron", "rate", "at"]
    text: str
    """The expression as written (surrounding whitespace removed), e.g. "cron(0 3 * * ? *)"."""
    cron_fields: tuple[str, str, str, str, str, str] | None = None
    """minutes, hours, day-of-month, month, day-of-week, year, as written."""
    rate: timedelta | None = None
    at: datetime | None = None
    """Naive wall-clock time, read in the schedule's time zone."""


# ---------------------------------------------------------------------------------------------------------------------
# Parsing


def parse_schedule_expression(text: str) -> ScheduleExpression:
    """Parse an EventBridge Scheduler expression; raise ScheduleExpressionError(field="schedule_expression")."""
    if not isinstance(text, str) or not text.strip():
        raise _expression_error(f"a schedule expression is required: {FORMS}")
    stripped = text.strip()
    match = _WRAPPED.fullmatch(stripped)
    if match is None:
        if "(" in stripped or ")" in stripped:
            raise _expression_error(f"check the parentheses; a schedule expression is one of {FORMS}")
        fields = stripped.split()
        if len(fields) == 5:
            raise _expression_error(_unix_cron_rule(fields))
        if len(fields) == 6:
            raise _expression_error(f"write cron fields inside cron(...), e.g. cron({' '.join(fields)}); {FORMS}")
        raise _expression_error(f"a schedule expression is one of {FORMS}")
    kind, body = match.group("kind"), match.group("body")
    if kind == "cron":
        return _parse_cron(stripped, body)
    if kind == "rate":
        return ScheduleExpression(kind="rate", text=stripped, rate=_parse_rate(body))
    if kind == "at":
        return ScheduleExpression(kind="at", text=stripped, at=_parse_at(body))
    raise _expression_error(f"unknown expression type {kind!r}; a schedule expression is one of {FORMS}")


def parse_timezone(name: str) -> ZoneInfo:
    """Load an IANA time zone such as "Europe/Berlin"; raise ScheduleExpressionError(field="timezone")."""
    if not isinstance(name, str) or not name:
        raise ScheduleExpressionError(
            "timezone", "a time zone is required: an IANA name such as 'Europe/Berlin' or 'UTC'"
        )
    if name not in _known_timezones():
        close = difflib.get_close_matches(name, _known_timezones(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "use an IANA name such as 'Europe/Berlin' or 'UTC'"
        raise ScheduleExpressionError("timezone", f"unknown time zone {name!r}; {hint}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # pragma: no cover - listed but unreadable
        raise ScheduleExpressionError("timezone", f"time zone {name!r} cannot be loaded") from exc


@lru_cache(maxsize=1)
def _known_timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _expression_error(rule: str) -> ScheduleExpressionError:
    return ScheduleExpressionError("schedule_expression", rule)


def _unix_cron_rule(fields: list[str]) -> str:
    minutes, hours, day_of_month, month, day_of_week = fields
    rule = f"this looks like a five-field Unix cron; {AWS_CRON_FORMAT}"
    if day_of_week == "*":  # the only case that translates literally (Unix day-of-week numbers start at 0)
        rule += f". Yours would be cron({minutes} {hours} {day_of_month} {month} ? *)"
    return rule


def _parse_cron(text: str, body: str) -> ScheduleExpression:
    fields = body.split()
    if len(fields) == 5:
        raise _expression_error(_unix_cron_rule(fields))
    if len(fields) != 6:
        raise _expression_error(f"{AWS_CRON_FORMAT}; got {len(fields)} field(s) in {text}")
    minutes, hours, day_of_month, month, day_of_week, year = fields
    if day_of_month == "?" and day_of_week == "?":
        raise _expression_error(
            "exactly one of day-of-month or day-of-week must be '?', not both: "
            f"e.g. cron({minutes} {hours} * {month} ? {year}) runs every day"
        )
    if day_of_month != "?" and day_of_week != "?":
        raise _expression_error(
            "one of day-of-month or day-of-week must be '?' (AWS cannot combine them): "
            f"cron({minutes} {hours} {day_of_month} {month} ? {year}) uses the day of the month, "
            f"cron({minutes} {hours} ? {month} {day_of_week} {year}) the day of the week"
        )
    for name, value in zip(_FIELD_NAMES, fields, strict=True):
        _check_field_syntax(name, value)
    if not _ever_runs(" ".join(fields)):
        raise _expression_error(
            f"{text} never runs: no date between 1970 and 2199 matches it; check the day-of-month against the "
            "months (February has no 30th, April no 31st) and the years"
        )
    return ScheduleExpression(
        kind="cron", text=text, cron_fields=(minutes, hours, day_of_month, month, day_of_week, year)
    )


def _check_field_syntax(name: str, value: str) -> None:
    """The syntax aws-croniter accepts but then crashes on, or reads differently from AWS."""
    rule = _FIELD_RULES[name]
    if "*-" in value or "-*" in value:
        raise _expression_error(f"the {name} field {value!r} is invalid: a range needs two values, e.g. 1-5; {rule}")
    if re.search(r"/0*(?:[^0-9]|$)", value):
        raise _expression_error(f"the {name} field {value!r} is invalid: the increment after / must be at least 1")
    if name == "day-of-month" and value.upper() == "LW":
        raise _expression_error(
            "the day-of-month field 'LW' is not supported; use L (last day) or 15W (nearest weekday)"
        )
    if name == "day-of-week" and value.upper().startswith("L-"):
        raise _expression_error(
            f"the day-of-week field {value!r} is invalid: use 6L for the last Friday of the month; {rule}"
        )


@lru_cache(maxsize=512)
def _croniter(fields: str) -> Any:
    """A validated AwsCroniter for six space-separated fields; ScheduleExpressionError names the faulty field."""
    parts = fields.split(" ")
    if parts[4].upper() == "L":  # aws-croniter reads a lone L as "last day 0 of the week" and never matches
        parts[4] = "7"
    try:
        return AwsCroniter(" ".join(parts))
    except AwsCroniterExpressionError as exc:
        name = _EXCEPTION_FIELDS.get(type(exc))
        if name is None:  # pragma: no cover - count and ? combinations are checked before
            raise _expression_error(f"{AWS_CRON_FORMAT} ({exc})") from exc
        value = fields.split(" ")[_FIELD_NAMES.index(name)]
        raise _expression_error(f"the {name} field {value!r} is invalid: {_FIELD_RULES[name]}") from exc
    except (ValueError, IndexError) as exc:  # aws-croniter's own parser crashing on syntax its validator accepted
        raise _expression_error(f"cron({fields}) cannot be read: {exc}; {AWS_CRON_FORMAT}") from exc


@lru_cache(maxsize=512)
def _ever_runs(fields: str) -> bool:
    """Whether the expression matches any minute of 1970-2199 (at most ~0.1 s for one that never does)."""
    return _next_wall_time(_croniter(fields), datetime(1970, 1, 1, tzinfo=UTC), inclusive=True) is not None


def _parse_rate(body: str) -> timedelta:
    example = "e.g. rate(5 minutes), rate(1 hour) or rate(2 days)"
    parts = body.split()
    if len(parts) != 2:
        raise _expression_error(f"a rate is rate(value unit), {example}")
    value_text, unit = parts
    if unit.lower() in _SUB_MINUTE_UNITS:
        raise _expression_error(f"the minimum rate is 1 minute; {example}")
    if not re.fullmatch(r"-?\d+", value_text):
        raise _expression_error(f"the rate value must be a whole number of minutes, hours or days, {example}")
    value = int(value_text)
    if value <= 0:
        raise _expression_error(f"the minimum rate is 1 minute; the value must be a positive whole number, {example}")
    singular = unit.removesuffix("s")
    if singular not in _RATE_UNITS:
        raise _expression_error(f"the rate unit must be minute(s), hour(s) or day(s), not {unit!r}; {example}")
    if value == 1 and unit != singular:
        raise _expression_error(f"use the singular unit with 1: rate(1 {singular})")
    if value != 1 and unit == singular:
        raise _expression_error(f"use the plural unit with {value}: rate({value} {singular}s)")
    try:
        return value * _RATE_UNITS[singular]
    except OverflowError as exc:
        raise _expression_error(f"rate({body}) is too long; {example}") from exc


def _parse_at(body: str) -> datetime:
    if not _AT_PATTERN.fullmatch(body):
        raise _expression_error(
            f"a one-time schedule is at(yyyy-mm-ddThh:mm:ss), e.g. at(2027-03-28T09:30:00); got at({body})"
        )
    try:
        moment = datetime.fromisoformat(body)
    except ValueError as exc:
        raise _expression_error(f"at({body}) is not a real date and time: {exc}") from exc
    if not _FIRST_YEAR <= moment.year <= _LAST_YEAR:
        raise _expression_error(f"the year of at({body}) must be {_FIRST_YEAR}-{_LAST_YEAR}")
    return moment


# ---------------------------------------------------------------------------------------------------------------------
# Run times


def next_run_times(  # noqa: PLR0917 - the agreed API takes the bounds positionally
    expression: ScheduleExpression,
    timezone: str,
    after: datetime,
    count: int = 5,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
) -> list[datetime]:
    """The first `count` (at most MAX_COUNT) run times strictly after `after`, as aware UTC datetimes.

    Computed in the schedule's time zone (see the module docstring for DST, rate anchoring and date bounds).
    """
    zone = parse_timezone(timezone)
    after_utc = _aware_utc(after, "after")
    start_utc, end_utc = _bounds(start_date, end_date)
    limit = max(0, min(count, MAX_COUNT))
    runs: list[datetime] = []
    if limit == 0:
        return runs
    for run in _runs_after(expression, zone, after_utc, start_utc, end_utc):
        runs.append(run)
        if len(runs) >= limit:
            break
    return runs


def due_between(  # noqa: PLR0917 - mirrors next_run_times
    expression: ScheduleExpression,
    timezone: str,
    start: datetime,
    end: datetime,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
) -> list[datetime]:
    """The run times t with start < t <= end, as aware UTC datetimes (what a ticker fires for the window).

    Equal to the runs of `next_run_times(expression, timezone, after=start, ...)` up to `end`. The cost is one
    search step per result plus the skipped DST wall-clock minutes; runs are at least a minute apart, so a window
    holds at most one run per minute it spans. A rate schedule without `start_date` is anchored at `start`, so
    a ticker must pass the schedule's creation time (or start date) as `start_date` for rate schedules.
    """
    zone = parse_timezone(timezone)
    start_utc = _aware_utc(start, "start")
    end_utc = _aware_utc(end, "end")
    bound_start, bound_end = _bounds(start_date, end_date)
    if end_utc <= start_utc:
        return []
    runs: list[datetime] = []
    for run in _runs_after(expression, zone, start_utc, bound_start, bound_end):
        if run > end_utc:
            break
        runs.append(run)
    return runs


def _aware_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _bounds(start_date: datetime | None, end_date: datetime | None) -> tuple[datetime | None, datetime | None]:
    start = _aware_bound(start_date, "start_date")
    end = _aware_bound(end_date, "end_date")
    if start is not None and end is not None and end < start:
        raise ScheduleExpressionError("end_date", "end_date must not be before start_date")
    return start, end


def _aware_bound(value: datetime | None, field: ErrorField) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleExpressionError(
            field, f"{field} must be a date and time with a UTC offset, e.g. 2027-03-28T09:30:00Z"
        )
    return value.astimezone(UTC)


def _runs_after(
    expression: ScheduleExpression,
    zone: ZoneInfo,
    after: datetime,
    start_date: datetime | None,
    end_date: datetime | None,
) -> Iterator[datetime]:
    """All runs strictly after `after` (aware UTC), ascending, within [start_date, end_date] (at() ignores both)."""
    if expression.kind == "at":
        yield from _at_runs(expression, zone, after)
        return
    if expression.kind == "rate":
        runs = _rate_runs(expression, after, start_date)
    else:
        runs = _cron_runs(expression, zone, after if start_date is None else max(after, start_date - _TICK))
    for run in runs:
        if end_date is not None and run > end_date:
            return
        yield run


def _at_runs(expression: ScheduleExpression, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    assert expression.at is not None
    run = expression.at.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the first of two, or shifted out of a gap
    if run > after:
        yield run


def _rate_runs(expression: ScheduleExpression, after: datetime, start_date: datetime | None) -> Iterator[datetime]:
    interval = expression.rate
    assert interval is not None
    anchor = start_date if start_date is not None else after
    k = 0 if after < anchor else (after - anchor) // interval + 1
    try:
        run = anchor + k * interval
        while True:
            yield run
            run += interval
    except OverflowError:  # past datetime.max: no more runs
        return


def _cron_runs(expression: ScheduleExpression, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Cron runs strictly after `after`, evaluated on the wall clock of `zone`."""
    assert expression.cron_fields is not None
    croniter = _croniter(" ".join(expression.cron_fields))
    if after >= _AFTER_LAST_YEAR:
        return
    # aws-croniter knows nothing before 1970; clamping also keeps astimezone() clear of datetime.min.
    after = max(after, _BEFORE_FIRST_YEAR)
    # aws-croniter only takes UTC; give it the wall-clock reading of `after`, dressed as UTC.
    # Truncated to the minute here: aws-croniter rounds to the millisecond first, so 10:00:59.9996 would become
    # 10:01:00.000 and its "next minute" would skip 10:01.
    cursor = after.astimezone(zone).replace(tzinfo=UTC, fold=0, second=0, microsecond=0)
    while True:
        wall = _next_wall_time(croniter, cursor)
        if wall is None:
            return
        cursor = wall
        local = wall.replace(tzinfo=zone)  # fold=0: the first of two identical wall-clock times
        run = local.astimezone(UTC)
        if run.astimezone(zone).replace(tzinfo=None) != wall.replace(tzinfo=None):
            continue  # this wall-clock time does not exist (spring forward): AWS skips the run
        if run <= after:
            continue  # `after` lies in the repeated hour and this time already ran in its first pass
        yield run


def _next_wall_time(croniter: Any, cursor: datetime, *, inclusive: bool = False) -> datetime | None:
    """The first matching wall-clock minute after `cursor` (or at it, if inclusive); both as fake-UTC datetimes.

    aws-croniter gives up (returns None) after 10 recursive steps even when a later run exists. A search from
    inside a month needs at most 3 steps to find a run in that month, so None proves that month has no run
    after the cursor: the search resumes from the first day of the next month the expression allows.
    """
    found: datetime | None = croniter.occurrence(cursor).next(inclusive=inclusive)
    while found is None:
        following = _next_allowed_month(croniter, cursor.year, cursor.month)
        if following is None:
            return None
        cursor = datetime(*following, 1, tzinfo=UTC)
        found = croniter.occurrence(cursor).next(inclusive=True)
    return found


def _next_allowed_month(croniter: Any, year: int, month: int) -> tuple[int, int] | None:
    """The first (year, month) after the given one that the month and year fields allow, or None."""
    years: list[int] = croniter.years
    months: list[int] = croniter.months
    if year in years:
        later = [m for m in months if m > month]
        if later:
            return year, later[0]
    index = bisect.bisect_right(years, year)
    return (years[index], months[0]) if index < len(years) else None
