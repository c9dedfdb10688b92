"""Schedules: validation, next runs, and scheduled submission with its overlap policies (in-memory fakes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError
from taskrunner.errors import InvalidParameter, ScheduleAlreadyExists, ScheduleNotFound
from taskrunner.models import TaskSpec, TaskStatus
from taskrunner.schedules import (
    OverlapPolicy,
    RunOutcome,
    ScheduledRunRequest,
    ScheduleService,
    ScheduleSpec,
    scheduled_task_id,
)
from taskrunner.service import TaskService

from tests.support.fakes import (
    FakeCompute,
    FakeLogs,
    InMemoryScheduleStore,
    InMemoryTaskStore,
    RecordingOrchestrator,
    RecordingScheduler,
)
from tests.support.stack import Stack

NOW = datetime(2027, 3, 25, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def world():
    tasks = TaskService(
        store=InMemoryTaskStore(),
        orchestrator=RecordingOrchestrator(),
        compute=FakeCompute(),
        logs=FakeLogs(),
        settings=Stack().settings(),
        clock=lambda: NOW,
    )
    store, scheduler = InMemoryScheduleStore(), RecordingScheduler()
    return ScheduleService(store=store, scheduler=scheduler, tasks=tasks, clock=lambda: NOW), store, scheduler, tasks


def spec(**fields) -> ScheduleSpec:
    return ScheduleSpec(
        **{
            "name": "nightly",
            "schedule_expression": "cron(0 3 * * ? *)",
            "timezone": "Europe/Berlin",
            "task": {"image": "busybox", "command": ["true"]},
            **fields,
        }
    )


def errors(**fields):
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    return info.value.errors()


def test_nightly_in_berlin_runs_at_three_oclock_berlin_time_across_the_dst_change(world):
    service, _, scheduler, _ = world
    created = service.create("default", spec())
    assert ("default", "nightly") in scheduler.schedules
    local = [t.astimezone(BERLIN) for t in created.next_run_times]
    assert [t.hour for t in local] == [3] * 5 and [t.minute for t in local] == [0] * 5
    assert [t.date().isoformat() for t in local] == [
        "2027-03-26",
        "2027-03-27",
        "2027-03-28",
        "2027-03-29",
        "2027-03-30",
    ]
    assert {t.utcoffset() for t in local} == {timedelta(hours=1), timedelta(hours=2)}  # both sides of the change


@pytest.mark.parametrize(
    ("fields", "field", "phrase"),
    [
        ({"schedule_expression": "*/5 * * * *"}, "schedule_expression", "six fields"),
        ({"schedule_expression": "cron(0 3 1 * MON *)"}, "schedule_expression", "?"),
        ({"schedule_expression": "cron(61 3 * * ? *)"}, "schedule_expression", "minute"),
        ({"schedule_expression": "rate(30 seconds)"}, "schedule_expression", "1 minute"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Mars/Olympus"),
        ({"task": {"image": "x", "cpu": 256, "memory": 4096}}, "memory", "512, 1024, 2048"),
        ({"name": "has space"}, "name", ""),
        ({"name": ".."}, "name", "dot segment"),
        ({"name": "."}, "name", "dot segment"),
        ({"start_date": "2027-01-02T00:00:00Z", "end_date": "2027-01-01T00:00:00Z"}, "end_date", "after"),
        ({"start_date": 0}, "start_date", "ISO-8601"),
        ({"end_date": "0001-01-01T00:00:00+01:00"}, "end_date", "between 0001-01-01 and 9999-12-31"),
    ],
)
def test_each_rule_names_its_field(fields, field, phrase):
    [error] = errors(**fields)
    located = ".".join(str(p) for p in error["loc"]) or error.get("ctx", {}).get("field", "")
    assert field in located or field == error.get("ctx", {}).get("field")
    assert phrase in error["msg"]


def test_a_schedule_name_is_unique(world):
    service, *_ = world
    service.create("default", spec())
    with pytest.raises(ScheduleAlreadyExists):
        service.create("default", spec())


def test_a_run_fired_twice_for_the_same_time_creates_one_task(world):
    service, store, _, tasks = world
    service.create("default", spec())
    request = ScheduledRunRequest(schedule_name="nightly", scheduled_time=datetime(2027, 3, 26, 2, tzinfo=UTC))
    first, again = service.fire(request), service.fire(request)
    assert first.task_id == again.task_id == scheduled_task_id("default", "nightly", request.scheduled_time)
    assert len(tasks.store.tasks) == 1
    task = tasks.store.get(first.task_id)
    assert task.schedule == "nightly" and task.scheduled_time == request.scheduled_time and task.name == "nightly"
    assert tasks.orchestrator.started[task.task_id]["tags"][2:4] == [
        {"Key": "taskrunner:schedule", "Value": "nightly"},
        {"Key": "taskrunner:scheduled-time", "Value": "2027-03-26T02:00:00Z"},
    ]
    assert store.get("default", "nightly").last_run.task_id == first.task_id


def fire_at(service, hour: int, name: str = "nightly"):
    return service.fire(ScheduledRunRequest(schedule_name=name, scheduled_time=datetime(2027, 3, 26, hour, tzinfo=UTC)))


def test_forbid_skips_while_a_run_is_still_going_and_records_the_skip(world):
    service, store, _, tasks = world
    service.create("default", spec(overlap_policy="FORBID"))
    first = fire_at(service, 1)
    skipped = fire_at(service, 2)
    assert skipped.outcome is RunOutcome.SKIPPED and skipped.task_id is None
    assert store.get("default", "nightly").last_run.outcome is RunOutcome.SKIPPED
    tasks.cancel("default", first.task_id)  # the first run ends
    assert fire_at(service, 3).outcome is RunOutcome.STARTED


def test_replace_cancels_the_running_run_and_starts_the_new_one(world):
    service, _, _, tasks = world
    service.create("default", spec(overlap_policy="REPLACE"))
    first = fire_at(service, 1)
    second = fire_at(service, 2)
    assert second.outcome is RunOutcome.REPLACED and second.cancelled == [first.task_id]
    assert tasks.store.get(first.task_id).status is TaskStatus.CANCELLED
    assert tasks.store.get(first.task_id).status_reason == "Replaced by a newer run of nightly"


def test_allow_starts_runs_side_by_side(world):
    service, _, _, tasks = world
    service.create("default", spec(overlap_policy=OverlapPolicy.ALLOW))
    fire_at(service, 1), fire_at(service, 2)
    assert len(tasks.active_runs("default", "nightly")) == 2


def test_run_now_starts_a_task_at_once_and_lists_with_the_schedule(world):
    service, _, _, tasks = world
    service.create("default", spec(overlap_policy="FORBID"))
    fire_at(service, 1)
    task = service.run_now("default", "nightly")  # a manual run ignores the overlap policy
    assert task.schedule == "nightly" and task.scheduled_time == NOW
    runs = tasks.list_tasks("default", None, 10, None, schedule="nightly").items
    assert task.task_id in [t.task_id for t in runs] and len(runs) == 2


def test_a_template_schedule_carries_its_task_in_its_input(world):
    service, _, _, tasks = world
    request = ScheduledRunRequest.model_validate(
        {
            "schedule_name": "example-nightly",
            "scheduled_time": "<aws.scheduler.scheduled-time>",
            "overlap_policy": "FORBID",
            "task": {"image": "python:3.12-slim", "command": ["true"]},
        }
    )
    assert request.scheduled_time is None  # an unsubstituted placeholder means "now"
    result = service.fire(request)
    assert result.outcome is RunOutcome.STARTED and tasks.store.get(result.task_id).schedule == "example-nightly"


def test_an_unknown_schedule_is_not_found_and_deleted_ones_are_gone(world):
    service, _, scheduler, _ = world
    with pytest.raises(ScheduleNotFound):
        fire_at(service, 1, name="nope")
    service.create("default", spec())
    service.delete("default", "nightly")
    assert scheduler.schedules == {}
    with pytest.raises(ScheduleNotFound):
        service.get("default", "nightly")


def test_update_keeps_the_creation_time_and_last_run_and_pausing_clears_next_runs(world):
    service, _, scheduler, _ = world
    created = service.create("default", spec())
    fire_at(service, 1)
    paused = service.update("default", "nightly", spec(enabled=False))
    assert paused.created_at == created.created_at and paused.last_run is not None
    assert paused.next_run_times == [] and scheduler.schedules[("default", "nightly")].enabled is False


def test_rate_runs_count_from_when_the_schedule_was_written(world):
    service, *_ = world
    created = service.create("default", spec(name="often", schedule_expression="rate(15 minutes)"))
    assert created.next_run_times[:2] == [NOW + timedelta(minutes=15), NOW + timedelta(minutes=30)]


def test_task_spec_in_a_schedule_is_the_same_model_as_post_tasks():
    assert ScheduleSpec.model_fields["task"].annotation is TaskSpec


def test_a_recurring_schedule_cannot_start_in_the_past_but_an_update_may_keep_its_start(world):
    service, _, scheduler, _ = world
    # Given a schedule that starts now
    service.create("default", spec(start_date=NOW))
    # When it is written again with its start date kept, then with one moved an hour into the past
    later = ScheduleService(
        store=service.store, scheduler=scheduler, tasks=service.tasks, clock=lambda: NOW + timedelta(days=1)
    )
    kept = later.update("default", "nightly", spec(start_date=NOW, enabled=False))
    # Then keeping it is fine (the schedule has started), moving it into the past is what EventBridge refuses
    assert kept.enabled is False
    with pytest.raises(InvalidParameter) as refused:
        later.update("default", "nightly", spec(start_date=NOW + timedelta(days=1, hours=-1)))
    assert refused.value.field == "start_date"
    with pytest.raises(InvalidParameter):
        later.create("default", spec(name="late", start_date=NOW))
    assert later.create("default", spec(name="once", schedule_expression="at(2027-03-20T00:00:00)", start_date=NOW))


def test_a_schedule_that_ended_before_it_began_has_no_next_runs(world):
    service, *_ = world
    ended = service.create("default", spec(end_date=NOW - timedelta(days=1)))
    assert ended.next_run_times == [] and service.list_schedules("default", 10, None).items[0].next_run_times == []


def test_two_long_schedule_names_never_share_an_eventbridge_schedule():
    from taskrunner.adapters import SCHEDULER_NAME_MAX, EventBridgeScheduler

    tenant = "t" * 32
    first, second = "s" * 40 + "a" * 16, "s" * 40 + "b" * 16
    names = {EventBridgeScheduler.schedule_name(tenant, n) for n in (first, second)}
    assert len(names) == 2
    assert all(len(n) <= SCHEDULER_NAME_MAX for n in names)
    assert EventBridgeScheduler.schedule_name("default", "nightly") == "default.nightly"  # short names as before
