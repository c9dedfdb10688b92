"""Quotas and the fair queue: the rules (taskrunner.fair_queue), the service's admission, dispatch and release, and the
reconciler's net, with in-memory fakes (Given / When / Then)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from taskrunner.errors import InvalidParameter, TenantDisabled
from taskrunner.fair_queue import (
    TenantLoad,
    cpu_limit,
    larger_than_whole_quota,
    memory_limit,
    queue_timeout_reason,
    quotas_from_item,
)
from taskrunner.models import Slot, TaskSpec, TaskStatus
from taskrunner.observation import TaskObservation
from taskrunner.reconcile import Action, ReconcilePolicy, Reconciler, next_execution_name
from taskrunner.service import Outcome, TaskService
from taskrunner.tenants import Quotas

from tests.support.fakes import FakeCompute, FakeLogs, InMemoryTaskStore, RecordingExecutions, RecordingOrchestrator
from tests.support.stack import Stack

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
TENANT = "acme"
SMALL = TaskSpec(image="busybox")  # 256 CPU units, 512 MiB


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    store: InMemoryTaskStore = field(default_factory=InMemoryTaskStore)
    orchestrator: RecordingOrchestrator = field(default_factory=RecordingOrchestrator)
    executions: RecordingExecutions = field(default_factory=RecordingExecutions)
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.compute = FakeCompute()
        self.service = TaskService(
            store=self.store,
            orchestrator=self.orchestrator,
            compute=self.compute,
            logs=FakeLogs(),
            settings=Stack().settings(),
            clock=self.clock,
        )
        policy = ReconcilePolicy(grace_seconds=300, launch_grace_seconds=900, max_tasks=500, recount_after_seconds=0)
        self.reconciler = Reconciler(self.service, self.executions, policy, sleep=lambda seconds: None)

    def submit(self, spec: TaskSpec = SMALL) -> str:
        task = self.service.submit(TENANT, spec)
        self.executions.statuses[task.execution_arn or ""] = "RUNNING"
        return task.task_id

    def runs(self, task_id: str) -> None:
        """The task's ECS task runs (ECS describes it RUNNING)."""
        arn = f"arn:aws:ecs:us-east-1:123456789012:task/taskrunner/{task_id.lower()}"
        running = TaskObservation(ecs_task_arn=arn, last_status="RUNNING", started_by=task_id, started_at=self.clock())
        self.service.on_ecs_task_state_change(running)
        self.compute.descriptions[arn] = running

    def waits_with_token(self, task_id: str) -> str:
        """The task's workflow reached WaitForSlot and gave its token."""
        token = f"token-{task_id}"
        self.service.wait_for_slot(task_id, token)
        return token

    def ends(self, task_id: str) -> None:
        """The task's workflow finalizes it (it ran, and its container exited 0)."""
        arn = f"arn:aws:ecs:us-east-1:123456789012:task/taskrunner/{task_id.lower()}"
        stopped = TaskObservation(
            ecs_task_arn=arn,
            last_status="STOPPED",
            exit_code=0,
            stop_code="EssentialContainerExited",
            pull_started_at=self.clock(),
            stopped_at=self.clock() + timedelta(seconds=90),
        )
        self.service.finalize(task_id, Outcome.COMPLETED, stopped)

    def status(self, task_id: str) -> TaskStatus:
        task = self.store.get(task_id)
        assert task is not None
        return task.status

    def holds_slot(self, task_id: str) -> bool:
        task = self.store.get(task_id)
        return task is not None and task.slot_held is not None


@pytest.fixture
def world() -> World:
    return World()


# ----------------------------------------------------------------------------- the rules


def test_limits_are_in_cpu_units_and_mib_and_a_missing_one_is_none() -> None:
    assert cpu_limit(Quotas(max_vcpu=1.25)) == 1280 and memory_limit(Quotas(max_memory_gib=0.5)) == 512
    assert cpu_limit(Quotas(max_vcpu=0.3)) == 307  # a fraction of a CPU unit counts for nothing
    assert cpu_limit(Quotas()) is None and memory_limit(Quotas()) is None


def test_a_task_fits_when_every_limit_has_room_for_it() -> None:
    load = TenantLoad(TENANT, quotas=Quotas(max_running_tasks=3, max_vcpu=1, max_memory_gib=2), running_tasks=2,
                      running_cpu=768, running_memory=1024)  # fmt: skip
    assert load.fits(Slot(cpu=256, memory=1024))
    assert not load.fits(Slot(cpu=512, memory=512))  # 1.25 vCPU
    assert not load.fits(Slot(cpu=256, memory=2048))  # 3 GiB
    assert not TenantLoad(TENANT, quotas=Quotas(max_running_tasks=2), running_tasks=2).fits(Slot(cpu=256, memory=512))


def test_a_newcomer_is_admitted_only_when_nobody_waits() -> None:
    slot = Slot(cpu=256, memory=512)
    assert TenantLoad(TENANT).admits(slot)
    assert not TenantLoad(TENANT, queued_tasks=1).admits(slot)


@given(
    st.integers(0, 50), st.integers(0, 50), st.integers(1, 50), st.sampled_from([256, 512, 1024, 2048, 4096])
)  # fmt: skip
def test_granting_a_slot_that_fits_never_exceeds_the_quota(running: int, queued: int, limit: int, cpu: int) -> None:
    load = TenantLoad(TENANT, quotas=Quotas(max_running_tasks=limit, max_vcpu=8), running_tasks=running,
                      running_cpu=running * 256, queued_tasks=queued)  # fmt: skip
    slot = Slot(cpu=cpu, memory=cpu * 2)
    if load.fits(slot):
        after = load.with_slot(slot, from_queue=True)
        assert after.running_tasks <= limit and after.running_cpu <= 8 * 1024
        assert after.queued_tasks == queued - 1


def test_a_quota_attribute_is_read_leniently() -> None:
    assert quotas_from_item({"max_running_tasks": 2, "max_vcpu": None}) == Quotas(max_running_tasks=2)
    assert quotas_from_item(None) == Quotas()


def test_a_task_larger_than_the_whole_quota_is_named_with_the_quota() -> None:
    quotas = Quotas(max_vcpu=2, max_memory_gib=4)
    cpu = larger_than_whole_quota(TENANT, quotas, TaskSpec(image="busybox", cpu=4096, memory=8192))
    assert isinstance(cpu, InvalidParameter) and cpu.field == "cpu"
    assert cpu.rule == "4096 CPU units (4 vCPU) is more than tenant acme's whole quota max_vcpu=2"
    memory = larger_than_whole_quota(TENANT, quotas, TaskSpec(image="busybox", cpu=1024, memory=8192))
    assert memory is not None and memory.field == "memory"
    assert memory.rule == "8192 MiB (8 GiB) is more than tenant acme's whole quota max_memory_gib=4"
    assert larger_than_whole_quota(TENANT, quotas, TaskSpec(image="busybox", cpu=2048, memory=4096)) is None


def test_the_queue_timeout_reason_says_what_the_tenant_had_in_flight() -> None:
    load = TenantLoad(TENANT, quotas=Quotas(max_running_tasks=2, max_vcpu=1), running_tasks=2, running_cpu=512,
                      queued_tasks=3)  # fmt: skip
    assert queue_timeout_reason(600, load) == (
        "Timed out after 600 s in the queue, waiting for tenant acme's quota "
        "(2 of max_running_tasks=2 tasks, 0.5 of max_vcpu=1; 2 other task(s) waiting)"
    )


def test_queue_timeout_seconds_defaults_to_a_day_and_is_at_most_fourteen() -> None:
    assert SMALL.queue_timeout_seconds == 86_400
    with pytest.raises(ValueError, match="queue_timeout_seconds"):
        TaskSpec(image="busybox", queue_timeout_seconds=1_209_601)
    with pytest.raises(ValueError, match="queue_timeout_seconds"):
        TaskSpec(image="busybox", queue_timeout_seconds=0)


def test_the_fair_queues_bookkeeping_stays_out_of_responses_and_the_openapi_document() -> None:
    from taskrunner.models import Task

    task = Task(task_id="t", tenant=TENANT, status=TaskStatus.QUEUED, spec=SMALL, created_at=T0, updated_at=T0,
                slot_held=Slot(cpu=256, memory=512), queue_token="secret")  # fmt: skip
    assert "slot_held" not in task.model_dump() and "queue_token" not in task.model_dump_json()
    schema = str(Task.model_json_schema(mode="serialization"))
    assert "slot_held" not in schema and "queue_token" not in schema
    assert "QUEUED" in str(Task.model_json_schema())


# ----------------------------------------------------------------------------- admission


def test_tasks_within_the_quota_are_admitted_and_the_rest_wait_in_order(world: World) -> None:
    # Given a tenant that may run 2 tasks
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=2))
    # When 4 are submitted
    ids = [world.submit() for _ in range(4)]
    # Then 2 hold slots and 2 wait, and each workflow is told whether it waits
    assert [world.status(i) for i in ids] == [TaskStatus.SUBMITTED] * 2 + [TaskStatus.QUEUED] * 2
    assert [world.holds_slot(i) for i in ids] == [True, True, False, False]
    assert [world.orchestrator.started[i]["queued"] for i in ids] == [False, False, True, True]
    assert world.store.counters(TENANT) == {"running_tasks": 2, "running_cpu": 512, "running_memory": 1024,
                                            "queued_tasks": 2}  # fmt: skip


def test_a_tenant_without_an_item_or_quotas_admits_everything(world: World) -> None:
    ids = [world.submit() for _ in range(5)]
    assert {world.status(i) for i in ids} == {TaskStatus.SUBMITTED}
    assert world.store.counters(TENANT)["running_tasks"] == 5


def test_an_admission_that_loses_a_race_reads_the_tenant_again(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=2))
    world.store.lose_tenant_races = 2
    task_id = world.submit()
    assert world.status(task_id) is TaskStatus.SUBMITTED and world.store.lose_tenant_races == 0


def test_an_admission_that_keeps_losing_races_waits_in_the_queue(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=2))
    world.store.lose_tenant_races = 100
    assert world.status(world.submit()) is TaskStatus.QUEUED


def test_a_disabled_tenants_task_is_refused(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(), enabled=False)
    with pytest.raises(TenantDisabled):
        world.submit()
    assert world.store.tasks == {}


def test_a_task_larger_than_the_whole_quota_is_refused(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_vcpu=1))
    with pytest.raises(InvalidParameter, match="max_vcpu=1"):
        world.submit(TaskSpec(image="busybox", cpu=2048, memory=4096))
    assert world.store.tasks == {} and world.orchestrator.started == {}


def test_submitting_a_queued_task_again_returns_it_and_starts_its_workflow(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.submit()
    first = world.service.submit(TENANT, SMALL, task_id="01M8FHYKXWMKH5HMFTBDEJCY65")
    again = world.service.submit(TENANT, SMALL, task_id="01M8FHYKXWMKH5HMFTBDEJCY65")
    assert first.status is again.status is TaskStatus.QUEUED
    assert world.store.counters(TENANT)["queued_tasks"] == 1


# ----------------------------------------------------------------------------- dispatch


def test_a_released_slot_goes_to_the_oldest_waiting_task_whose_workflow_is_resumed(world: World) -> None:
    # Given one slot, taken, and two tasks waiting with their tokens
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, first, second = world.submit(), world.submit(), world.submit()
    tokens = [world.waits_with_token(first), world.waits_with_token(second)]
    # When the running task ends
    world.ends(running)
    # Then the oldest waiting task holds the slot and its workflow is resumed (with false: it no longer waits)
    assert world.holds_slot(first) and not world.holds_slot(second)
    assert world.orchestrator.resumed == [(tokens[0], False)]
    assert world.status(first) is TaskStatus.QUEUED  # until its workflow marks it PROVISIONING
    assert world.store.counters(TENANT) == {"running_tasks": 1, "running_cpu": 256, "running_memory": 512,
                                            "queued_tasks": 1}  # fmt: skip


def test_the_head_that_does_not_fit_stops_the_dispatch(world: World) -> None:
    # Given 1.25 vCPU: a 1 vCPU task runs, a 1 vCPU task waits, then a 0.25 vCPU one (which alone would fit)
    world.store.put_tenant(TENANT, Quotas(max_vcpu=1.25))
    big = TaskSpec(image="busybox", cpu=1024, memory=2048)
    running, waiting_big, waiting_small = world.submit(big), world.submit(big), world.submit()
    # Then the small one waits too: it came after the big one (no newcomer jumps the queue)
    assert world.status(waiting_small) is TaskStatus.QUEUED
    # and a dispatch while the big one still does not fit grants nothing, not even the small one behind it
    assert world.service.dispatch(TENANT) == 0
    assert not world.holds_slot(waiting_small)
    # When the running task ends, both fit, and both are granted, oldest first
    world.ends(running)
    assert world.holds_slot(waiting_big) and world.holds_slot(waiting_small)


def test_a_head_that_a_lowered_quota_can_never_hold_fails_and_stops_holding_up_the_queue(world: World) -> None:
    # Given 2 vCPU: a 1 vCPU task runs, a 2 vCPU task waits, then a 0.25 vCPU one behind it
    world.store.put_tenant(TENANT, Quotas(max_vcpu=2))
    running = world.submit(TaskSpec(image="busybox", cpu=1024, memory=2048))
    too_big, small = world.submit(TaskSpec(image="busybox", cpu=2048, memory=4096)), world.submit()
    # When the quota is lowered to 1 vCPU while they wait, and the running task ends
    world.store.put_tenant(TENANT, Quotas(max_vcpu=1))
    world.ends(running)
    # Then the head that can never start is FAILED, billed 0, saying why, and the one behind it is granted
    ended = world.store.get(too_big)
    assert ended is not None and ended.status is TaskStatus.FAILED
    assert ended.metering is not None and ended.metering.billed_seconds == 0
    assert ended.status_reason and "max_vcpu=1" in ended.status_reason and "lowered" in ended.status_reason
    assert world.holds_slot(small)


def test_a_workflow_that_gives_its_token_after_its_grant_resumes_itself(world: World) -> None:
    # Given a task granted its slot before its workflow reached WaitForSlot
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, waiting = world.submit(), world.submit()
    world.ends(running)
    assert world.holds_slot(waiting) and world.orchestrator.resumed == []
    # When its workflow gives its token
    token = world.waits_with_token(waiting)
    # Then it is resumed at once
    assert world.orchestrator.resumed == [(token, False)]


def test_a_workflow_of_a_task_cancelled_before_it_waited_is_resumed_to_end(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.submit()
    waiting = world.submit()
    world.service.cancel(TENANT, waiting)
    token = world.waits_with_token(waiting)
    assert world.orchestrator.resumed == [(token, False)]  # MarkProvisioning then refuses it: FinalizeNotStarted


def test_each_task_is_metered_once_and_the_counters_return_to_zero(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=2))
    ids = [world.submit() for _ in range(6)]
    for task_id in ids:
        world.waits_with_token(task_id) if world.status(task_id) is TaskStatus.QUEUED else None
    for task_id in ids:  # in submission order: each has its slot by the time it ends
        assert world.holds_slot(task_id)
        world.ends(task_id)
        world.ends(task_id)  # a repeated finalize gives nothing back twice
    assert [world.status(i) for i in ids] == [TaskStatus.SUCCEEDED] * 6
    assert len(world.store.metering) == 6
    assert world.store.counters(TENANT) == dict.fromkeys(("running_tasks", "running_cpu", "running_memory",
                                                         "queued_tasks"), 0)  # fmt: skip


def test_a_failed_dispatch_does_not_fail_the_finalize_that_freed_the_slot(world: World, monkeypatch) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, _ = world.submit(), world.submit()

    def broken(*args, **kwargs):
        raise RuntimeError("throttled")

    monkeypatch.setattr(world.store, "list_in_status", broken)
    world.ends(running)
    assert world.status(running) is TaskStatus.SUCCEEDED


# ----------------------------------------------------------------------------- end paths


def test_a_waiting_task_is_cancelled_at_once_billed_zero(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.submit()
    waiting = world.submit()
    task = world.service.cancel(TENANT, waiting)
    assert task.status is TaskStatus.CANCELLED and task.metering is not None and task.metering.billed_seconds == 0
    assert task.execution_arn in world.orchestrator.stopped
    assert world.store.counters(TENANT)["queued_tasks"] == 0


def test_a_granted_task_cancelled_before_it_ran_gives_its_slot_to_the_next(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, granted, next_one = world.submit(), world.submit(), world.submit()
    world.ends(running)
    assert world.holds_slot(granted)
    world.service.cancel(TENANT, granted)
    assert world.status(granted) is TaskStatus.CANCELLED and world.holds_slot(next_one)
    assert world.store.counters(TENANT)["running_tasks"] == 1


def test_a_task_that_timed_out_in_the_queue_ends_timed_out_billed_zero_and_leaves_the_queue(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.submit()
    waiting = world.submit(TaskSpec(image="busybox", queue_timeout_seconds=600))
    task = world.service.finalize(waiting, Outcome.QUEUE_TIMED_OUT, None, reason="States.Timeout")
    assert task.status is TaskStatus.TIMED_OUT and task.metering is not None and task.metering.billed_seconds == 0
    assert task.status_reason == (
        "Timed out after 600 s in the queue, waiting for tenant acme's quota "
        "(1 of max_running_tasks=1 tasks; 0 other task(s) waiting)"
    )
    assert world.store.counters(TENANT)["queued_tasks"] == 0


def test_a_task_granted_just_as_its_queue_timeout_fired_gives_its_slot_back(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, waiting = world.submit(), world.submit()
    world.ends(running)
    assert world.holds_slot(waiting)
    assert world.service.finalize(waiting, Outcome.QUEUE_TIMED_OUT, None).status is TaskStatus.TIMED_OUT
    assert world.store.counters(TENANT)["running_tasks"] == 0


# ----------------------------------------------------------------------------- the reconciler


def test_the_reconciler_finalizes_a_task_past_its_queue_timeout(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.submit()
    waiting = world.submit(TaskSpec(image="busybox", queue_timeout_seconds=600))
    world.clock.advance(600 + 300)
    world.reconciler.run()
    assert world.status(waiting) is TaskStatus.TIMED_OUT
    assert world.executions.stopped and world.store.counters(TENANT)["queued_tasks"] == 0


def test_the_reconciler_leaves_waiting_tasks_alone_and_does_not_count_them_against_its_budget(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    ids = [world.submit() for _ in range(5)]
    report = world.reconciler.run()
    assert report.counts["queued"] == 4 and report.spent == 1
    assert world.executions.described == [world.store.get(ids[0]).execution_arn]  # the running one only


def test_the_reconciler_starts_a_lost_workflow_of_the_queues_head_again(world: World) -> None:
    # Given a waiting task whose execution ended, unchanged for longer than the launch grace
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.runs(world.submit())
    waiting = world.submit(TaskSpec(image="busybox", queue_timeout_seconds=7200))
    world.executions.statuses[world.store.get(waiting).execution_arn] = "ABORTED"
    world.clock.advance(1000)
    # When the reconciler runs
    report = world.reconciler.run()
    # Then a new execution waits for the rest of its queue timeout
    assert report.counts["restarted"] == 1
    name = f"{waiting}-2"
    assert world.orchestrator.started[name]["queued"] is True
    assert world.orchestrator.started[name]["queue_timeout_seconds"] == 7200 - 1000
    assert world.store.get(waiting).execution_arn.endswith(f":{name}")


def test_the_reconciler_resumes_a_granted_task_whose_resume_was_lost(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, waiting = world.submit(), world.submit()
    token = world.waits_with_token(waiting)
    world.orchestrator.gone.add(token)  # the grant's SendTaskSuccess did not arrive
    world.ends(running)
    world.orchestrator.gone.clear()
    world.clock.advance(301)
    report = world.reconciler.run()
    assert report.counts["resumed"] == 1 and world.orchestrator.resumed[-1] == (token, False)


def test_the_reconciler_repairs_counters_that_drifted_and_dispatches(world: World) -> None:
    # Given a leaked slot: the counters say a task runs that does not
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    world.store._add(TENANT, running_tasks=1, running_cpu=256, running_memory=512)
    waiting = world.submit()
    assert world.status(waiting) is TaskStatus.QUEUED
    # When the reconciler runs
    report = world.reconciler.run()
    # Then the counters are corrected from the tasks (after a second count agreed) and the queue moves
    assert report.repaired == {TENANT: {"running_tasks": (1, 0), "running_cpu": (256, 0), "running_memory": (512, 0)}}
    assert report.granted == 1 and world.holds_slot(waiting)


def test_the_reconciler_does_not_repair_counters_that_change_while_it_counts(world: World) -> None:
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=3))
    world.store._add(TENANT, running_tasks=1)
    world.reconciler.sleep = lambda seconds: world.submit()  # a task is admitted between the two counts
    report = world.reconciler.run()
    assert report.repaired == {}


def test_the_reconciler_visits_every_tenant_with_an_item_and_the_configured_ones(world: World) -> None:
    world.store.put_tenant("globex", Quotas())
    world.store.put_tenant(TENANT, Quotas())
    assert sorted(world.reconciler._tenants()) == ["acme", "default", "globex"]
    firsts = set()
    for minute in range(3):
        world.clock.advance(60 * minute)
        firsts.add(world.reconciler._tenants()[0])
    assert len(firsts) > 1  # round-robin: runs start with different tenants


def test_execution_names_count_up() -> None:
    from taskrunner.models import Task

    def named(arn_name: str) -> Task:
        arn = f"arn:aws:states:us-east-1:123456789012:execution:run-task:{arn_name}"
        return Task(task_id="T", tenant=TENANT, status=TaskStatus.QUEUED, spec=SMALL, created_at=T0, updated_at=T0,
                    execution_arn=arn)  # fmt: skip

    assert next_execution_name(named("T")) == "T-2"
    assert next_execution_name(named("T-2")) == "T-3"
    assert next_execution_name(named("T-9")) == "T-10"


def test_a_task_that_waited_in_the_queue_is_timed_from_when_it_started_to_run(world: World) -> None:
    # Given a task that waited an hour in the queue, then was marked PROVISIONING (its run timeout is 10 minutes)
    world.store.put_tenant(TENANT, Quotas(max_running_tasks=1))
    running, waiting = world.submit(), world.submit(TaskSpec(image="busybox", timeout_seconds=600))
    world.clock.advance(3600)
    world.ends(running)
    task = world.store.get(waiting)
    world.store.transition(task, TaskStatus.PROVISIONING, {"provisioning_at": world.clock()})
    # When the reconciler runs a minute later, its workflow still going
    world.clock.advance(60)
    _, action = world.reconciler.reconcile(world.store.get(waiting))
    # Then it is progressing (neither past its timeout nor its launch grace, counted from PROVISIONING)
    assert action is Action.UNTOUCHED
