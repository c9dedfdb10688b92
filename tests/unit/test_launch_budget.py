"""RunTask's retry budget against Fargate's launch throttle: a simulation of a burst, on the real ASL's policy.

A burst of submissions reaches the state machine through the HTTP API, whose stage admits a burst and then a
steady rate (template.yaml, HttpApi DefaultRouteSettings; clients retry the 429s). Each execution calls RunTask,
which ECS admits through a token bucket of 100 that refills at 20 a second (DESIGN §5); a throttled call takes no
token and fails the state with ECS.AmazonECSException, which the state's Retry policy answers: retry n (0-based)
waits uniform(0, min(MaxDelaySeconds, IntervalSeconds * BackoffRate**n)) with FULL jitter. An execution whose
retries run out is caught into FinalizeError: its task FAILS although nothing was wrong with it.

The policy is read from statemachines/run_task.asl.json, so this fails when the budget there is too small.
"""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import template

ROOT = Path(__file__).resolve().parents[2]
DEFINITION_PATH = ROOT / "statemachines" / "run_task.asl.json"

#: what the optimized ECS integration reports a throttled RunTask as (cause: "Rate exceeded ... ThrottlingException")
THROTTLING_ERROR = "ECS.AmazonECSException"
#: Fargate's RunTask token bucket (DESIGN §5: 100 burst, 20 a second sustained)
RUN_TASK_BUCKET = 100
RUN_TASK_REFILL_PER_SECOND = 20.0
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class RetryPolicy:
    interval_seconds: float
    backoff_rate: float
    max_attempts: int
    max_delay_seconds: float | None
    full_jitter: bool

    @classmethod
    def of(cls, state: dict[str, Any], error: str) -> RetryPolicy:
        """The first retrier of `state` that matches `error` (the one Step Functions applies), with ASL's defaults."""
        retrier = next(
            r for r in state.get("Retry", []) if error in r["ErrorEquals"] or r["ErrorEquals"] == ["States.ALL"]
        )
        return cls(
            interval_seconds=retrier.get("IntervalSeconds", 1),
            backoff_rate=retrier.get("BackoffRate", 2.0),
            max_attempts=retrier.get("MaxAttempts", 3),
            max_delay_seconds=retrier.get("MaxDelaySeconds"),
            full_jitter=retrier.get("JitterStrategy") == "FULL",
        )

    def delay(self, retry: int, rng: random.Random) -> float:
        backoff = self.interval_seconds * self.backoff_rate**retry
        if self.max_delay_seconds is not None:
            backoff = min(backoff, self.max_delay_seconds)
        return rng.uniform(0, backoff) if self.full_jitter else backoff


class TokenBucket:
    def __init__(self, capacity: float, refill_per_second: float) -> None:
        self.capacity, self.refill_per_second = capacity, refill_per_second
        self.tokens, self.updated = capacity, 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.refill_per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def api_admissions(submissions: int, burst: int, rate_per_second: float) -> list[float]:
    """When each of `submissions` requests, all sent at once and retried as soon as the API allows, gets in."""
    return [max(0.0, (i - burst + 1) / rate_per_second) for i in range(submissions)]


@dataclass(frozen=True)
class BurstOutcome:
    submissions: int
    exhausted: int  # executions whose retries ran out: tasks FAILED by throttling
    drain_seconds: float  # from the first submission to the last successful RunTask
    mean_retries: float
    max_retries: int
    max_wait_seconds: float  # the longest an admitted execution waited for its RunTask to go through

    def __str__(self) -> str:
        return (
            f"{self.submissions} submissions: {self.exhausted} exhausted their retries; drained in "
            f"{self.drain_seconds:.0f} s; retries mean {self.mean_retries:.1f}, max {self.max_retries}; "
            f"longest wait {self.max_wait_seconds:.0f} s"
        )


def simulate_burst(submissions: int, policy: RetryPolicy, seed: int) -> BurstOutcome:
    stage = template()["Resources"]["HttpApi"]["Properties"]["DefaultRouteSettings"]
    admitted = api_admissions(submissions, stage["ThrottlingBurstLimit"], stage["ThrottlingRateLimit"])
    bucket = TokenBucket(RUN_TASK_BUCKET, RUN_TASK_REFILL_PER_SECOND)
    rng = random.Random(seed)
    calls = [(at, execution, 0) for execution, at in enumerate(admitted)]  # (time, execution, retry number)
    heapq.heapify(calls)
    exhausted, retries, last_success, longest_wait = 0, [], 0.0, 0.0
    while calls:
        now, execution, retry = heapq.heappop(calls)
        if bucket.take(now):
            retries.append(retry)
            last_success = max(last_success, now)
            longest_wait = max(longest_wait, now - admitted[execution])
        elif retry < policy.max_attempts:
            heapq.heappush(calls, (now + policy.delay(retry, rng), execution, retry + 1))
        else:
            exhausted += 1
    return BurstOutcome(
        submissions=submissions,
        exhausted=exhausted,
        drain_seconds=last_success,
        mean_retries=sum(retries) / len(retries) if retries else 0.0,
        max_retries=max(retries, default=0),
        max_wait_seconds=longest_wait,
    )


def run_task_policy() -> RetryPolicy:
    definition = json.loads(DEFINITION_PATH.read_text())
    return RetryPolicy.of(definition["States"]["RunTask"], THROTTLING_ERROR)


def test_the_simulated_buckets_admit_what_they_should() -> None:
    # Given an API stage of burst 100 and 50/s, and a full RunTask bucket of 100 refilling 20/s
    admitted = api_admissions(300, 100, 50)
    bucket = TokenBucket(100, 20)
    # Then the API admits 100 at once and the rest at 50/s, and RunTask takes 100 at once and then 20/s
    assert admitted[99] == 0 and admitted[100] == pytest.approx(0.02) and admitted[299] == pytest.approx(4.0)
    assert sum(bucket.take(0.0) for _ in range(150)) == 100
    assert sum(bucket.take(1.0) for _ in range(50)) == 20


@pytest.mark.parametrize("submissions", [1_000, 10_000])
def test_a_burst_runs_every_task_without_exhausting_run_tasks_retries(submissions: int) -> None:
    # Given RunTask's retry policy for throttling, as the state machine declares it
    policy = run_task_policy()
    assert policy.full_jitter, "without jitter every throttled execution retries in lockstep"
    # When a burst of submissions arrives through the API (a few seeds of the jitter)
    outcomes = [simulate_burst(submissions, policy, seed) for seed in SEEDS]
    for outcome in outcomes:
        print(outcome)
    # Then no execution runs out of retries: every task runs, none FAILS for throttling
    assert [o.exhausted for o in outcomes] == [0] * len(SEEDS), [str(o) for o in outcomes]
    # and the burst drains at about the rate ECS allows (not held back by needlessly long waits)
    for outcome in outcomes:
        at_quota = (submissions - RUN_TASK_BUCKET) / RUN_TASK_REFILL_PER_SECOND
        assert outcome.drain_seconds <= at_quota * 1.5 + 120, str(outcome)
