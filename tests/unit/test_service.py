"""The domain service with in-memory fakes for its ports (Given / When / Then)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from taskrunner.errors import InvalidParameter, OrchestrationUnavailable, TaskAlreadyTerminal, TaskNotFound
from taskrunner.models import LogEvent, TaskSpec, TaskStatus
from taskrunner.observation import TaskObservation
from taskrunner.service import Outcome, TaskService, new_task_id
from taskrunner.task_definitions import task_definition_family

from tests.support.fakes import FakeCompute, FakeLogs, InMemoryTaskStore, RecordingOrchestrator
from tests.support.stack import Stack

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
ARN = "arn:aws:ecs:us-east-1:123456789012:task/taskrunner/0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world():
    store, orchestrator, compute, logs, clock = (
        InMemoryTaskStore(),
        RecordingOrchestrator(),
        FakeCompute(),
        FakeLogs(),
        Clock(),
    )
    service = TaskService(
        store=store, orchestrator=orchestrator, compute=compute, logs=logs, settings=Stack().settings(), clock=clock
    )
    return service, store, orchestrator, compute, logs, clock


def stopped(task_id, *, exit_code=0, stop_code="EssentialContainerExited", seconds=0.5, pulled=True, arn=ARN, **extra):
    return TaskObservation(
        ecs_task_arn=arn,
        last_status="STOPPED",
        started_by=task_id,
        stop_code=stop_code,
        exit_code=exit_code,
        pull_started_at=T0 if pulled else None,
        started_at=T0 + timedelta(seconds=0.1),
        stopped_at=T0 + timedelta(seconds=seconds),
        stopped_reason="Essential container in task exited",
        **extra,
    )


def test_submission_stores_the_task_and_starts_an_execution_named_by_its_id(world):
    service, store, orchestrator, *_ = world
    task = service.submit("default", TaskSpec(image="busybox", command=["true"], tags={"team": "a"}))
    assert task.status is TaskStatus.SUBMITTED
    assert store.get(task.task_id) == task
    execution_input = orchestrator.started[task.task_id]
    assert execution_input["task_definition"]["family"] == task_definition_family(Stack().settings(), task.spec)
    assert {"Key": "taskrunner:task-id", "Value": task.task_id} in execution_input["tags"]
    assert {"Key": "team", "Value": "a"} in execution_input["tags"]
    assert task.execution_arn.endswith(f":execution:run-task:{task.task_id}")


def test_a_refused_execution_fails_the_task_without_losing_it(world):
    service, store, orchestrator, *_ = world
    orchestrator.fail_with = OrchestrationUnavailable("ThrottlingException")
    with pytest.raises(OrchestrationUnavailable):
        service.submit("default", TaskSpec(image="busybox"))
    [task] = store.tasks.values()
    assert task.status is TaskStatus.FAILED and "ThrottlingException" in task.status_reason
    assert task.metering.billed_seconds == 0


def test_task_ids_sort_by_creation_time():
    ids = [new_task_id(lambda t=t: t) for t in (1.0, 2.0, 1000.0, 1_900_000_000.0)]
    assert ids == sorted(ids) and all(len(i) == 26 for i in ids)


def test_task_definition_family_depends_on_image_architecture_and_storage_not_on_overrides():
    # (and on the roles, log group and region the revisions embed: tests/unit/test_task_definitions.py)
    settings = Stack().settings()
    base = TaskSpec(image="busybox")
    same = TaskSpec(image="busybox", cpu=1024, memory=2048, command=["x"])
    assert task_definition_family(settings, base) == task_definition_family(settings, same)
    for other in (
        TaskSpec(image="alpine"),
        TaskSpec(image="busybox", architecture="ARM64"),
        TaskSpec(image="busybox", ephemeral_storage_gib=21),
    ):
        assert task_definition_family(settings, other) != task_definition_family(settings, base)


def test_events_move_the_task_to_running_and_stopped_finalizes_it(world):
    service, store, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    running = TaskObservation(ecs_task_arn=ARN, last_status="RUNNING", started_by=task.task_id, started_at=T0)
    assert service.on_ecs_task_state_change(running).status is TaskStatus.RUNNING
    done = service.on_ecs_task_state_change(stopped(task.task_id))
    assert done.status is TaskStatus.SUCCEEDED and done.exit_code == 0 and done.ecs_task_arn == ARN
    assert done.metering.billed_seconds == 60


def test_finalizing_twice_from_both_paths_leaves_one_metering_record(world):
    service, store, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    first = service.finalize(task.task_id, Outcome.COMPLETED, stopped(task.task_id, seconds=60.2))
    again = service.finalize(task.task_id, Outcome.COMPLETED, stopped(task.task_id, seconds=60.2))
    late_event = service.on_ecs_task_state_change(stopped(task.task_id, exit_code=1, seconds=99))
    assert first == again == late_event
    assert first.metering.billed_seconds == 61
    assert len(store.metering) == 1


@pytest.mark.parametrize(
    ("observation", "status", "reason"),
    [
        (dict(exit_code=3), TaskStatus.FAILED, "Essential container in task exited"),
        (
            dict(exit_code=137, container_reason="OutOfMemoryError: Container killed due to memory usage"),
            TaskStatus.FAILED,
            "OutOfMemoryError: Container killed due to memory usage",
        ),
        (dict(exit_code=None, stop_code="TaskFailedToStart", pulled=False), TaskStatus.FAILED, None),
        (dict(exit_code=143, stop_code="UserInitiated"), TaskStatus.CANCELLED, None),
        (dict(exit_code=0, stop_code="SpotInterruption"), TaskStatus.FAILED, None),
    ],
)
def test_final_status_follows_exit_code_and_stop_code(world, observation, status, reason):
    service, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    done = service.finalize(task.task_id, Outcome.TASK_FAILED, stopped(task.task_id, **observation))
    assert done.status is status
    if reason:
        assert done.status_reason == reason


def test_a_task_that_never_pulled_its_image_is_billed_zero(world):
    service, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    done = service.finalize(
        task.task_id,
        Outcome.TASK_FAILED,
        stopped(task.task_id, exit_code=None, stop_code="TaskFailedToStart", pulled=False),
    )
    assert done.metering.billed_seconds == 0 and done.metering.cost_usd == 0
    assert done.metering.window_start is None


def test_cancel_of_a_running_task_stops_execution_and_ecs_task_then_the_event_meters_it(world):
    service, store, orchestrator, compute, _, _ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    service.on_ecs_task_state_change(
        TaskObservation(ecs_task_arn=ARN, last_status="RUNNING", started_by=task.task_id, started_at=T0)
    )
    cancelled = service.cancel("default", task.task_id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.metering is None
    assert orchestrator.stopped == [task.execution_arn]
    assert compute.stopped == [(ARN, "Cancelled by user")]
    done = service.on_ecs_task_state_change(stopped(task.task_id, exit_code=143, stop_code="UserInitiated", seconds=5))
    assert done.status is TaskStatus.CANCELLED and done.stop_code == "UserInitiated"
    assert done.metering.billed_seconds == 60 and done.exit_code == 143


def test_cancel_before_any_ecs_task_finalizes_at_once_with_zero_billing(world):
    service, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    done = service.cancel("default", task.task_id)
    assert done.status is TaskStatus.CANCELLED and done.metering.billed_seconds == 0


def test_cancel_finds_an_ecs_task_not_yet_recorded(world):
    service, _, _, compute, _, _ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    compute.tasks_by_started_by[task.task_id] = ARN
    assert service.cancel("default", task.task_id).ecs_task_arn == ARN
    assert compute.stopped == [(ARN, "Cancelled by user")]


def test_cancelling_a_terminal_task_is_refused_and_changes_nothing(world):
    service, store, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    service.finalize(task.task_id, Outcome.COMPLETED, stopped(task.task_id))
    with pytest.raises(TaskAlreadyTerminal):
        service.cancel("default", task.task_id)
    assert store.get(task.task_id).status is TaskStatus.SUCCEEDED


def test_an_ecs_task_that_starts_after_cancel_is_stopped(world):
    service, _, _, compute, _, _ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    service.cancel("default", task.task_id)
    late = service.on_ecs_task_state_change(
        TaskObservation(ecs_task_arn=ARN, last_status="RUNNING", started_by=task.task_id)
    )
    assert late.status is TaskStatus.CANCELLED
    assert compute.stopped == [(ARN, "Cancelled by user")]


def test_timeout_marks_timed_out_stops_the_task_and_is_metered_once_stopped(world):
    service, _, _, compute, _, _ = world
    task = service.submit("default", TaskSpec(image="busybox", timeout_seconds=5))
    compute.tasks_by_started_by[task.task_id] = ARN
    assert service.stop_for_timeout(task.task_id) == ARN
    assert compute.stopped == [(ARN, "Timed out after 5 s")]
    # The ECS task's STOPPED event may arrive before the state machine finalizes: status stays TIMED_OUT.
    by_event = service.on_ecs_task_state_change(stopped(task.task_id, exit_code=143, stop_code="UserInitiated"))
    by_machine = service.finalize(task.task_id, Outcome.TIMED_OUT, stopped(task.task_id, exit_code=143))
    assert by_event == by_machine
    assert by_event.status is TaskStatus.TIMED_OUT and by_event.status_reason == "Timed out after 5 s"


def test_finalize_with_a_still_running_ecs_task_sets_status_but_waits_for_stop_to_meter(world):
    service, *_ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    running = TaskObservation(ecs_task_arn=ARN, last_status="RUNNING", started_by=task.task_id)
    half = service.finalize(task.task_id, Outcome.ERROR, running, reason="States.Runtime")
    assert half.status is TaskStatus.FAILED and half.metering is None
    done = service.on_ecs_task_state_change(stopped(task.task_id))
    assert done.status is TaskStatus.FAILED and done.metering.billed_seconds == 60


def test_events_for_unknown_tasks_are_ignored(world):
    service, *_ = world
    assert service.on_ecs_task_state_change(stopped("not-ours")) is None
    assert service.on_ecs_task_state_change(TaskObservation(ecs_task_arn=ARN, started_by=None)) is None


def test_reads_are_scoped_to_the_tenant(world):
    service, *_ = world
    task = service.submit("alpha", TaskSpec(image="busybox"))
    with pytest.raises(TaskNotFound):
        service.get("beta", task.task_id)
    assert service.list_tasks("beta", None, 10, None).items == []


def test_listing_is_newest_first_with_a_status_filter_and_paging(world):
    service, *_ = world
    ids = [service.submit("default", TaskSpec(image="busybox")).task_id for _ in range(5)]
    service.cancel("default", ids[1])
    page = service.list_tasks("default", None, 3, None)
    assert [t.task_id for t in page.items] == ids[::-1][:3]
    rest = service.list_tasks("default", None, 3, page.next_token)
    assert [t.task_id for t in rest.items] == ids[::-1][3:] and rest.next_token is None
    assert [t.task_id for t in service.list_tasks("default", TaskStatus.CANCELLED, 10, None).items] == [ids[1]]


def test_logs_come_from_the_awslogs_stream_of_the_ecs_task(world):
    service, _, _, _, logs, _ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    assert service.logs_of("default", task.task_id, 10, None).events == []
    service.on_ecs_task_state_change(TaskObservation(ecs_task_arn=ARN, last_status="RUNNING", started_by=task.task_id))
    logs.streams["task/main/0123456789abcdef"] = [LogEvent(timestamp=T0, message="hi")]
    page = service.logs_of("default", task.task_id, 10, None)
    assert [e.message for e in page.events] == ["hi"]


def test_usage_sums_per_day_and_in_total(world):
    service, _, _, _, _, clock = world
    for seconds in (0.5, 120.2):
        task = service.submit("default", TaskSpec(image="busybox"))
        service.finalize(task.task_id, Outcome.COMPLETED, stopped(task.task_id, seconds=seconds, arn=f"{ARN}{seconds}"))
    usage = service.usage("default", date(2026, 11, 1), date(2026, 11, 30))
    assert usage.totals.tasks == 2 and usage.totals.billed_seconds == 60 + 121
    assert [d.date for d in usage.days] == [date(2026, 11, 27)]
    assert usage.totals.vcpu_seconds == 0.25 * 181


def test_usage_range_rules(world):
    service, *_ = world
    with pytest.raises(InvalidParameter) as info:
        service.usage("default", date(2026, 2, 1), date(2026, 1, 1))
    assert info.value.field == "to"
    with pytest.raises(InvalidParameter):
        service.usage("default", date(2025, 1, 1), date(2026, 12, 31))


def test_a_workflow_error_leaves_a_task_that_ecs_runs_to_its_ecs_events(world):
    service, _, _, compute, _, _ = world
    task = service.submit("default", TaskSpec(image="busybox"))
    compute.tasks_by_started_by[task.task_id] = ARN
    lost = service.finalize(task.task_id, Outcome.ERROR, None, reason="States.Runtime: DescribeTasks failed")
    assert lost.status is TaskStatus.SUBMITTED and lost.ecs_task_arn == ARN and lost.metering is None
    done = service.on_ecs_task_state_change(stopped(task.task_id))
    assert done.status is TaskStatus.SUCCEEDED and done.metering.billed_seconds == 60


def test_a_repeated_submission_starts_a_task_whose_first_attempt_stopped_before_the_workflow(world):
    service, store, orchestrator, *_ = world
    first = service.submit("default", TaskSpec(image="busybox"), task_id="01JDQ5ZC8W0000000000000001")
    orchestrator.started.clear()  # as if the first attempt had died before StartExecution
    again = service.submit("default", TaskSpec(image="busybox"), task_id=first.task_id)
    assert again.task_id == first.task_id and list(orchestrator.started) == [first.task_id]
    service.finalize(first.task_id, Outcome.COMPLETED, stopped(first.task_id))
    orchestrator.started.clear()
    assert service.submit("default", TaskSpec(image="busybox"), task_id=first.task_id).status is TaskStatus.SUCCEEDED
    assert orchestrator.started == {}  # a finished task is never started again
