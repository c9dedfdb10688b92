"""The local scheduler ticker against moto's EventBridge Scheduler (in process): what fires, when, with what."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from taskrunner_local.scheduler import SchedulerTicker

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:scheduled-submit"
INPUT = json.dumps({"schedule_name": "s", "scheduled_time": "<aws.scheduler.scheduled-time>"})


@pytest.fixture
def scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("scheduler")


def create(client: Any, name: str, expression: str, **extra: Any) -> None:
    client.create_schedule(
        Name=name,
        ScheduleExpression=expression,
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": extra.pop("arn", FUNCTION), "RoleArn": "arn:aws:iam::123456789012:role/r", "Input": INPUT},
        **extra,
    )


def ticker_at(start: datetime) -> tuple[SchedulerTicker, list[tuple[str, Any]], list[str]]:
    calls: list[tuple[str, Any]] = []
    logs: list[str] = []
    ticker = SchedulerTicker(
        "123456789012",
        "us-east-1",
        lambda arn, event: calls.append((arn, event)),
        clock=lambda: start,
        on_log=logs.append,
    )
    return ticker, calls, logs


def test_a_cron_schedule_fires_once_at_its_wall_clock_time_with_the_scheduled_time_in_its_input(scheduler) -> None:
    create(scheduler, "nightly", "cron(0 3 * * ? *)", ScheduleExpressionTimezone="Europe/Berlin")
    ticker, calls, _ = ticker_at(datetime(2027, 3, 28, 0, 59, 30, tzinfo=UTC))
    assert ticker.tick(datetime(2027, 3, 28, 0, 59, 59, tzinfo=UTC)) == []
    fired = ticker.tick(datetime(2027, 3, 28, 1, 0, 1, tzinfo=UTC))  # 03:00 in Berlin, summer time
    assert [t for _, t in fired] == [datetime(2027, 3, 28, 1, 0, tzinfo=UTC)]
    assert calls == [(FUNCTION, {"schedule_name": "s", "scheduled_time": "2027-03-28T01:00:00Z"})]
    assert ticker.tick(datetime(2027, 3, 28, 1, 0, 2, tzinfo=UTC)) == []


def test_disabled_schedules_do_not_fire(scheduler) -> None:
    create(scheduler, "paused", "rate(1 minute)", State="DISABLED", StartDate=datetime(2027, 1, 1, tzinfo=UTC))
    ticker, calls, _ = ticker_at(datetime(2027, 1, 1, tzinfo=UTC))
    assert ticker.tick(datetime(2027, 1, 1, 0, 10, tzinfo=UTC)) == [] and calls == []


def test_a_rate_schedule_counts_from_its_start_date(scheduler) -> None:
    create(scheduler, "often", "rate(5 minutes)", StartDate=datetime(2027, 1, 1, tzinfo=UTC))
    ticker, calls, _ = ticker_at(datetime(2027, 1, 1, 0, 1, tzinfo=UTC))
    fired = ticker.tick(datetime(2027, 1, 1, 0, 12, tzinfo=UTC))
    assert [t.minute for _, t in fired] == [5, 10]


def test_a_rate_schedule_without_start_date_first_fires_one_period_after_it_was_written(scheduler) -> None:
    create(scheduler, "fresh", "rate(1 minute)")
    written = datetime.now(UTC)
    ticker, calls, _ = ticker_at(written - timedelta(seconds=5))
    assert ticker.tick(written + timedelta(seconds=50)) == []
    assert len(ticker.tick(written + timedelta(seconds=70))) == 1


def test_only_lambda_targets_run_locally(scheduler) -> None:
    create(
        scheduler,
        "queue",
        "rate(1 minute)",
        arn="arn:aws:sqs:us-east-1:123456789012:q",
        StartDate=datetime(2027, 1, 1, tzinfo=UTC),
    )
    ticker, calls, logs = ticker_at(datetime(2027, 1, 1, tzinfo=UTC))
    ticker.tick(datetime(2027, 1, 1, 0, 1, 30, tzinfo=UTC))
    assert calls == [] and "only Lambda targets" in logs[0]


def test_template_rate_schedules_sped_up_fire_at_the_local_period_and_others_keep_their_rate(scheduler) -> None:
    # Given the template's every-5-minutes schedule (the reconciler's) and a user's schedule of the same rate
    create(scheduler, "taskrunner-reconcile", "rate(5 minutes)", StartDate=datetime(2027, 1, 1, tzinfo=UTC))
    create(scheduler, "user", "rate(5 minutes)", StartDate=datetime(2027, 1, 1, tzinfo=UTC))
    ticker, calls, _ = ticker_at(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    reconcile_arn = scheduler.get_schedule(Name="taskrunner-reconcile")["Arn"]
    # When the local stack speeds up the template's schedules to 30 s (and a 10-minute cap changes nothing)
    assert ticker.speed_up([reconcile_arn], 600) == {}
    assert ticker.speed_up([reconcile_arn], 30) == {reconcile_arn: 30}
    fired = ticker.tick(datetime(2027, 1, 1, 0, 1, 5, tzinfo=UTC))
    # Then the template's fires every 30 s from the ticker's start, the user's not before its own 5 minutes
    assert [(arn, t.second) for arn, t in fired] == [(reconcile_arn, 31), (reconcile_arn, 1)]
    assert [event["scheduled_time"] for _, event in calls] == ["2027-01-01T00:00:31Z", "2027-01-01T00:01:01Z"]


def test_a_schedule_the_ticker_cannot_place_does_not_stop_the_others(scheduler) -> None:
    # Given a schedule that ended before it could start, beside a good one
    create(scheduler, "over", "rate(1 minute)", EndDate=datetime(2026, 1, 1, tzinfo=UTC))
    create(scheduler, "good", "rate(5 minutes)", StartDate=datetime(2027, 1, 1, tzinfo=UTC))
    ticker, calls, logs = ticker_at(datetime(2027, 1, 1, 0, 1, tzinfo=UTC))
    # When the ticker ticks
    fired = ticker.tick(datetime(2027, 1, 1, 0, 6, tzinfo=UTC))
    # Then the good one fires all the same
    assert [t.minute for _, t in fired] == [5]
