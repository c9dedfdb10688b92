"""The reconciler's rules with in-memory fakes (Given / When / Then)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from taskrunner.errors import StaleStatus
from taskrunner.models import TaskSpec, TaskStatus
from taskrunner.observation import TaskObservation
from taskrunner.reconcile import Action, ReconcilePolicy, Reconciler
from taskrunner.service import Outcome, TaskService
from taskrunner.settings import Settings

from tests.support.fakes import FakeCompute, FakeLogs, InMemoryTaskStore, RecordingExecutions, RecordingOrchestrator
from tests.support.stack import Stack

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
ARN = "arn:aws:ecs:us-east-1:123456789012:task/taskrunner/0123456789abcdef"
POLICY = ReconcilePolicy(grace_seconds=300, launch_grace_seconds=900, max_tasks=500)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class World:
    def __init__(self, policy: ReconcilePolicy = POLICY) -> None:
        self.store = InMemoryTaskStore()
        self.compute = FakeCompute()
        self.executions = RecordingExecutions()
        self.clock = Clock()
        self.service = TaskService(
            store=self.store,
            orchestrator=RecordingOrchestrator(),
            compute=self.compute,
            logs=FakeLogs(),
            settings=Stack().settings(),
            clock=self.clock,
        )
        self.reconciler = Reconciler(self.service, self.executions, policy)

    def submitted(self, *, timeout_seconds: int = 3600) -> str:
        task = self.service.submit("default", TaskSpec(image="busybox", timeout_seconds=timeout_seconds))
        self.executions.statuses[task.execution_arn] = "RUNNING"
        return task.task_id

    def running(self, *, timeout_seconds: int = 3600, arn: str = ARN) -> str:
        task_id = self.submitted(timeout_seconds=timeout_seconds)
        observation = TaskObservation(
            ecs_task_arn=arn, last_status="RUNNING", started_by=task_id, pull_started_at=T0, started_at=T0
        )
        self.service.on_ecs_task_state_change(observation)
        self.compute.descriptions[arn] = observation
        return task_id

    def execution_ends(self, task_id: str, status: str) -> None:
        self.executions.statuses[self.store.get(task_id).execution_arn] = status

    def ecs_stops(self, task_id: str, *, arn: str = ARN, seconds: float = 75.3, exit_code: int = 0, **extra) -> None:
        self.compute.descriptions[arn] = TaskObservation(
            ecs_task_arn=arn,
            last_status="STOPPED",
            started_by=task_id,
            group=f"taskrunner:{task_id}",
            stop_code=extra.pop("stop_code", "EssentialContainerExited"),
            stopped_reason="Essential container in task exited",
            exit_code=exit_code,
            pull_started_at=T0,
            started_at=T0 + timedelta(seconds=2),
            stopped_at=T0 + timedelta(seconds=seconds),
            **extra,
        )

    def task(self, task_id: str):
        return self.store.get(task_id)


@pytest.fixture
def world() -> World:
    return World()


def test_a_running_task_whose_execution_ended_and_whose_ecs_task_stopped_is_finalized_from_ecs(world):
    # Given a RUNNING task whose execution was aborted and whose ECS task then stopped, the STOPPED event lost
    task_id = world.running()
    world.execution_ends(task_id, "ABORTED")
    world.ecs_stops(task_id, seconds=75.3)
    world.clock.advance(120)
    # When the reconciler runs
    report = world.reconciler.run()
    # Then the task is finalized from what ECS says, with its one metering record per the Fargate formula
    task = world.task(task_id)
    assert task.status is TaskStatus.SUCCEEDED and task.exit_code == 0 and task.stop_code == "EssentialContainerExited"
    assert task.metering.billed_seconds == 76 and task.metering.ecs_task_arn == ARN
    assert list(world.store.metering) == [ARN]
    assert report.counts["settled"] == 1
    assert report.as_dict()["tasks"] == [{"task_id": task_id, "action": "settled", "status": "SUCCEEDED"}]


def test_a_task_that_never_launched_and_whose_execution_failed_is_failed_with_zero_metering(world):
    # Given a PROVISIONING task without any ECS task, whose execution failed before Finalize
    task_id = world.submitted()
    world.service.store.transition(world.task(task_id), TaskStatus.PROVISIONING, {})
    world.execution_ends(task_id, "FAILED")
    # When the reconciler runs
    world.reconciler.run()
    # Then it is FAILED, says the reconciler settled it, and is metered 0 (no pull started)
    task = world.task(task_id)
    assert task.status is TaskStatus.FAILED
    assert task.status_reason.startswith("Settled by the reconciler: its workflow execution ended FAILED")
    assert task.metering.billed_seconds == 0 and task.metering.cost_usd == 0
    assert list(world.store.metering) == [f"task/{task_id}"]
    assert world.executions.stopped == []  # an ended execution is not stopped again


def test_a_task_past_its_timeout_whose_ecs_task_still_runs_is_stopped_as_the_timeout_path_does(world):
    # Given a RUNNING task with a 60 s timeout, its execution gone, its ECS task still running well past it
    task_id = world.running(timeout_seconds=60)
    world.execution_ends(task_id, "ABORTED")
    world.clock.advance(60 + 300 + 1)
    # When the reconciler runs
    report = world.reconciler.run()
    # Then StopTask is called the way the timeout path calls it, and the task is TIMED_OUT, not metered yet
    assert world.compute.stopped == [(ARN, "Timed out after 60 s")]
    task = world.task(task_id)
    assert task.status is TaskStatus.TIMED_OUT and task.metering is None
    assert report.counts["stopping"] == 1 and report.examined == 1  # not examined again under TIMED_OUT
    # When ECS reports it STOPPED but the event is lost, and a later run comes after the grace period
    world.ecs_stops(task_id, seconds=400, exit_code=143, stop_code="UserInitiated")
    world.clock.advance(301)
    world.reconciler.run()
    # Then that run meters it, keeping TIMED_OUT and its reason
    task = world.task(task_id)
    assert task.status is TaskStatus.TIMED_OUT and task.status_reason == "Timed out after 60 s"
    assert task.metering.billed_seconds == 400 and task.exit_code == 143
    assert list(world.store.metering) == [ARN]


def test_an_ecs_task_that_does_not_stop_is_stopped_again_and_reported_unstoppable(world):
    # Given a task the reconciler stopped for its timeout, whose ECS task keeps running
    task_id = world.running(timeout_seconds=60)
    world.execution_ends(task_id, "ABORTED")
    world.clock.advance(361)
    world.reconciler.run()
    # When a run comes while the stop is still young, and another one after the grace period
    world.clock.advance(10)
    young = world.reconciler.run()
    stops_after_young = len(world.compute.stopped)
    world.clock.advance(300)
    late = world.reconciler.run()
    # Then the first leaves it alone, the second sends StopTask again and reports it unstoppable
    assert young.counts["untouched"] == 1 and stops_after_young == 1
    assert late.counts["unstoppable"] == 1
    assert late.as_dict()["tasks"] == [{"task_id": task_id, "action": "unstoppable", "status": "TIMED_OUT"}]
    assert world.compute.stopped == [(ARN, "Timed out after 60 s")] * 2
    assert world.task(task_id).metering is None


def test_a_task_progressing_normally_is_not_touched(world):
    # Given a RUNNING task whose execution runs, within its timeout (and a SUBMITTED one just started)
    running = world.running(timeout_seconds=3600)
    world.clock.advance(3600 + 299)
    submitted = world.submitted()
    before = {i: world.task(i) for i in (running, submitted)}
    # When the reconciler runs
    report = world.reconciler.run()
    # Then neither is changed and ECS is not even asked
    assert {i: world.task(i) for i in (running, submitted)} == before
    assert world.compute.described == [] and world.compute.stopped == [] and world.executions.stopped == []
    assert report.counts["untouched"] == 2 and report.examined == 2


def test_reconciling_a_task_already_finalized_writes_no_second_record(world):
    # Given a task the workflow finalized, and a stale listing that still shows it RUNNING
    task_id = world.running()
    stale = world.task(task_id)
    world.ecs_stops(task_id)
    world.service.finalize(task_id, Outcome.COMPLETED, world.compute.descriptions[ARN])
    world.execution_ends(task_id, "SUCCEEDED")
    # When the reconciler looks at the stale copy, and runs in full
    task, action = world.reconciler.reconcile(stale)
    world.reconciler.run()
    # Then nothing changes: one metering record
    assert action is Action.UNTOUCHED and task.status is TaskStatus.SUCCEEDED
    assert len(world.store.metering) == 1


def test_a_reconciler_racing_with_the_event_path_ends_with_one_record(world):
    # Given a RUNNING task whose execution ended and whose ECS task stopped
    task_id = world.running()
    world.execution_ends(task_id, "ABORTED")
    world.ecs_stops(task_id)
    # When the STOPPED event finalizes it between the reconciler's read and its write
    finalize = world.store.finalize
    calls = []

    def racing_finalize(task, *args):
        if not calls:
            calls.append(task.task_id)
            world.service.on_ecs_task_state_change(world.compute.descriptions[ARN])  # the event path wins
            raise StaleStatus("the event path metered it meanwhile")
        return finalize(task, *args)

    world.store.finalize = racing_finalize
    world.reconciler.run()
    # Then there is one metering record, the event path's
    assert calls == [task_id]
    assert list(world.store.metering) == [ARN]
    assert world.task(task_id).status is TaskStatus.SUCCEEDED


def test_an_ecs_task_that_runs_within_its_timeout_after_the_execution_ended_is_left_to_run(world):
    # Given a RUNNING task whose execution ended but whose ECS task still runs, within its timeout
    task_id = world.running(timeout_seconds=3600)
    world.execution_ends(task_id, "FAILED")
    world.clock.advance(600)
    # When the reconciler runs
    report = world.reconciler.run()
    # Then it waits: no stop, no final status
    assert report.counts["waiting"] == 1
    assert world.task(task_id).status is TaskStatus.RUNNING and world.compute.stopped == []


def test_an_ecs_task_found_by_started_by_is_used_when_the_task_never_recorded_it(world):
    # Given a PROVISIONING task whose RUNNING event was lost (no ARN recorded); its execution ended; ECS stopped it
    task_id = world.submitted()
    world.service.store.transition(world.task(task_id), TaskStatus.PROVISIONING, {})
    world.compute.tasks_by_started_by[task_id] = ARN
    world.execution_ends(task_id, "ABORTED")
    world.ecs_stops(task_id, exit_code=3)
    # When the reconciler runs
    world.reconciler.run()
    # Then the ECS task is found as the other paths find it, and the task is finalized from it
    task = world.task(task_id)
    assert task.status is TaskStatus.FAILED and task.exit_code == 3 and task.ecs_task_arn == ARN
    assert list(world.store.metering) == [ARN]


def test_a_submitted_task_without_an_execution_waits_for_the_launch_grace_then_fails(world):
    # Given a SUBMITTED task whose submission died before StartExecution
    task = world.service.submit("default", TaskSpec(image="busybox"))
    # When the reconciler runs within the launch grace, and after it
    world.clock.advance(899)
    early = world.reconciler.run()
    world.clock.advance(2)
    late = world.reconciler.run()
    # Then it is left alone first, then FAILED and metered 0
    assert early.counts["untouched"] == 1 and late.counts["settled"] == 1
    done = world.task(task.task_id)
    assert done.status is TaskStatus.FAILED and "workflow execution does not exist" in done.status_reason
    assert done.metering.billed_seconds == 0


def test_a_workflow_stuck_before_run_task_past_the_launch_grace_is_stopped_and_the_task_failed(world):
    # Given a PROVISIONING task whose execution still runs but never started an ECS task in 15 minutes
    task_id = world.submitted()
    world.service.store.transition(world.task(task_id), TaskStatus.PROVISIONING, {})
    world.clock.advance(901)
    # When the reconciler runs
    world.reconciler.run()
    # Then the execution is stopped first and the task is FAILED, metered 0
    execution_arn = world.task(task_id).execution_arn
    assert [arn for arn, _ in world.executions.stopped] == [execution_arn]
    task = world.task(task_id)
    assert task.status is TaskStatus.FAILED and task.metering.billed_seconds == 0
    assert "no ECS task started within 900 s; its workflow execution was stopped" in task.status_reason


def test_a_task_that_never_launched_past_its_timeout_is_timed_out(world):
    # Given a SUBMITTED task with a 60 s timeout whose execution ended without an ECS task, long ago
    task_id = world.submitted(timeout_seconds=60)
    world.execution_ends(task_id, "TIMED_OUT")
    world.clock.advance(61)
    # When the reconciler runs
    world.reconciler.run()
    # Then it is TIMED_OUT, metered 0
    task = world.task(task_id)
    assert task.status is TaskStatus.TIMED_OUT and task.metering.billed_seconds == 0
    assert task.status_reason.startswith("Settled by the reconciler: its workflow execution ended TIMED_OUT")


def test_an_ecs_task_that_ecs_no_longer_knows_is_failed_with_zero_metering_keyed_by_its_arn(world):
    # Given a RUNNING task whose execution ended and whose ECS task ECS has forgotten
    task_id = world.running()
    world.execution_ends(task_id, "ABORTED")
    del world.compute.descriptions[ARN]
    # When the reconciler runs
    world.reconciler.run()
    # Then it is FAILED, metered 0 under the ECS task's ARN (so no later record can be added)
    task = world.task(task_id)
    assert task.status is TaskStatus.FAILED and "ECS no longer describes" in task.status_reason
    assert task.metering.billed_seconds == 0 and list(world.store.metering) == [ARN]


def test_a_cancelled_task_whose_stopped_event_was_lost_is_metered_after_the_grace_period(world):
    # Given a RUNNING task cancelled by its user; the ECS task stopped but its event was lost
    task_id = world.running()
    world.service.cancel("default", task_id)
    world.ecs_stops(task_id, exit_code=143, stop_code="UserInitiated", seconds=30)
    # When the reconciler runs before the grace period has passed, and after
    early = world.reconciler.run()
    world.clock.advance(301)
    world.reconciler.run()
    # Then it meters the task only the second time, keeping CANCELLED
    assert early.counts["untouched"] == 1
    task = world.task(task_id)
    assert task.status is TaskStatus.CANCELLED and task.status_reason == "Cancelled by user"
    assert task.metering.billed_seconds == 60 and list(world.store.metering) == [ARN]


def test_a_run_examines_at_most_max_tasks_and_says_it_left_some(world):
    # Given five running tasks and a reconciler allowed two a run
    world.reconciler.policy = ReconcilePolicy(max_tasks=2)
    for i in range(5):
        world.running(arn=f"{ARN}{i}")
    # When it runs
    report = world.reconciler.run()
    # Then it examines two, oldest first, says so, and only queried the status index
    assert report.examined == 2 and report.truncated
    assert report.as_dict()["truncated"] is True
    assert world.store.status_queries >= 1


def test_running_out_of_time_stops_a_run(world):
    # Given running tasks and an invocation that is out of time at once
    world.running()
    # When the reconciler runs
    report = world.reconciler.run(out_of_time=lambda: True)
    # Then it examines nothing and says it left tasks behind
    assert report.examined == 0 and report.truncated


def test_one_failing_task_does_not_stop_the_others(world):
    # Given two tasks whose executions ended, and ECS failing for the first one
    first, second = world.running(arn=f"{ARN}1"), world.running(arn=f"{ARN}2")
    for task_id in (first, second):
        world.execution_ends(task_id, "ABORTED")
    world.ecs_stops(second, arn=f"{ARN}2")
    describe = world.compute.describe_task

    def flaky(arn):
        if arn.endswith("1"):
            raise RuntimeError("ThrottlingException")
        return describe(arn)

    world.compute.describe_task = flaky
    # When the reconciler runs
    report = world.reconciler.run()
    # Then the first is reported as an error and the second settled
    assert report.counts["error"] == 1 and report.counts["settled"] == 1
    assert world.task(second).metering is not None and world.task(first).metering is None


def test_the_policy_comes_from_settings_with_defaults():
    # Given an environment that sets the grace period and the tenants only
    settings = Settings.from_environment(
        {"AWS_REGION": "us-east-1", "RECONCILE_GRACE_SECONDS": "60", "RECONCILE_TENANTS": " a, b ,"}
    )
    # When the reconciler's policy is made from the settings
    policy = ReconcilePolicy.from_settings(settings)
    # Then those come from the environment and the rest are the defaults
    assert policy.grace_seconds == 60 and policy.tenants == ("a", "b")
    assert policy.launch_grace_seconds == 900 and policy.max_tasks == 500
    assert ReconcilePolicy.from_settings(Settings.from_environment({"AWS_REGION": "x"})).tenants == ("default",)


def test_a_task_failed_after_run_task_without_an_observed_ecs_task_is_metered_from_ecs_once_found(world):
    # Given a PROVISIONING task whose workflow failed after RunTask: finalize gave it FAILED, not a metering record
    task_id = world.submitted()
    world.store.transition(world.task(task_id), TaskStatus.PROVISIONING, {"provisioning_at": T0})
    failed = world.service.finalize(task_id, Outcome.ERROR, None, reason="ECS.AmazonECSException: Rate exceeded")
    assert failed.status is TaskStatus.FAILED and failed.metering is None
    # and its ECS task stopped after 100 s, the STOPPED event lost, the task now found by startedBy
    world.ecs_stops(task_id, seconds=100)
    world.compute.tasks_by_started_by[task_id] = ARN
    world.clock.advance(301)
    # When the reconciler runs
    world.reconciler.run()
    # Then the task keeps its status and is metered from what ECS reports (not 0)
    task = world.task(task_id)
    assert task.status is TaskStatus.FAILED and task.metering.billed_seconds == 100
    assert list(world.store.metering) == [ARN]


def test_a_task_failed_after_run_task_whose_ecs_task_never_existed_is_metered_zero_after_the_grace(world):
    task_id = world.submitted()
    world.store.transition(world.task(task_id), TaskStatus.PROVISIONING, {"provisioning_at": T0})
    world.service.finalize(task_id, Outcome.ERROR, None, reason="ECS.AmazonECSException: Rate exceeded")
    early = world.reconciler.run()
    world.clock.advance(301)
    world.reconciler.run()
    assert early.counts["untouched"] == 1
    task = world.task(task_id)
    assert task.status is TaskStatus.FAILED and task.metering.billed_seconds == 0
    assert list(world.store.metering) == [f"task/{task_id}"]
