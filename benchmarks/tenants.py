"""Tenants under load: a burst spread over 4 tenants whose quotas are full most of the time.

`measure(stack, admin_key, count, clients)` creates tenants with quotas of 2, 3, 5 and 10 running tasks, submits
`count` short tasks round-robin over them from `clients` threads as fast as the API takes them, waits until every
task is terminal and metered, and reports:

- throughput, end to end (first submission until the last task is terminal and metered);
- the queue wait of each task, from `created_at` to `provisioning_at` (when the workflow asked ECS to run it:
  the moment it left the queue), per tenant and overall, p50/p90/p99/max;
- per tenant, the most tasks that were between PROVISIONING and stopped at one instant (from the tasks' own
  timestamps, so exact), next to the quota, and the most slots the tenant's counters showed held (sampled);
- that every task has exactly one metering record.

`python -m benchmarks.tenants --tasks 1000` runs it on a stack of its own (durable, as `make run` runs it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.measures import Row, percentile, print_table
from taskrunner_local.cli import free_port
from taskrunner_local.client import TERMINAL, TaskRunnerClient
from taskrunner_local.config import LocalConfig
from taskrunner_local.images import BUSYBOX_IMAGE
from taskrunner_local.stack import LocalStack

#: the max_running_tasks of the benchmark's tenants
QUOTAS = (2, 3, 5, 10)
#: how often the tenants' slot counters are sampled while the burst runs, in seconds
SAMPLE_INTERVAL = 0.25


@dataclass
class TenantResult:
    name: str
    quota: int
    #: created_at → provisioning_at of each task, in ms
    queue_waits_ms: list[float] = field(default_factory=list)
    #: tasks whose POST /tasks answered QUEUED
    queued_at_submission: int = 0
    #: the most tasks between provisioning_at and stopped_at at one instant
    max_concurrency: int = 0
    #: the most running_tasks the tenant's counters showed (GET /tenants, sampled)
    max_slots_sampled: int = 0


@dataclass
class TenantsResult:
    count: int
    submitted_s: float
    elapsed_s: float
    terminal: int
    succeeded: int
    metering_records: int
    one_metering_record_each: bool
    tenants: list[TenantResult]
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.terminal / self.elapsed_s


def create_tenants(admin: TaskRunnerClient) -> list[tuple[TenantResult, TaskRunnerClient]]:
    run = uuid.uuid4().hex[:6]
    tenants = []
    for quota in QUOTAS:
        name = f"bench-q{quota}-{run}"
        response = admin.http.post(
            f"{admin.base_url}/tenants",
            json={"name": name, "quotas": {"max_running_tasks": quota}},
            timeout=admin.timeout,
        )
        if response.status_code != 201:
            raise RuntimeError(f"POST /tenants answered {response.status_code}: {response.text}")
        client = TaskRunnerClient(admin.base_url, api_key=response.json()["api_key"])
        tenants.append((TenantResult(name, quota), client))
    return tenants


class SlotSampler:
    """Samples the tenants' held slots (GET /tenants, as the admin) in a thread until stopped."""

    def __init__(self, admin: TaskRunnerClient, tenants: list[TenantResult]) -> None:
        self.admin = admin
        self.by_name = {t.name: t for t in tenants}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-slot-sampler", daemon=True)

    def __enter__(self) -> SlotSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopped.wait(SAMPLE_INTERVAL):
            response = self.admin.http.get(
                f"{self.admin.base_url}/tenants", params={"limit": "100"}, timeout=self.admin.timeout
            )
            if response.status_code != 200:
                continue
            for item in response.json()["items"]:
                tenant = self.by_name.get(item["name"])
                if tenant is not None:
                    held = int(item["in_flight"]["running_tasks"])
                    tenant.max_slots_sampled = max(tenant.max_slots_sampled, held)


def submit_all(
    tenants: list[tuple[TenantResult, TaskRunnerClient]], count: int, clients: int
) -> list[tuple[int, dict[str, Any]]]:
    """`count` tasks, round-robin over the tenants, from `clients` threads: (tenant index, POST /tasks's body)."""

    def submit(i: int) -> tuple[int, dict[str, Any]]:
        which = i % len(tenants)
        spec = {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", f"echo {i}"]}
        return which, tenants[which][1].submit(spec)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(submit, range(count)))


def wait_all(
    tenants: list[tuple[TenantResult, TaskRunnerClient]], submitted: list[tuple[int, dict[str, Any]]], count: int
) -> list[tuple[int, dict[str, Any]]]:
    """Each task once terminal and metered. One task at a time, in submission order (a task done by the time it
    is looked at costs one GET): the whole wait costs about one GET per task, so it barely loads the stack."""
    done = []
    deadline = time.monotonic() + max(600, 2 * count)
    for which, accepted in submitted:
        client = tenants[which][1]
        while True:
            task = client.get(accepted["task_id"])
            if (task["status"] in TERMINAL and task["metering"]) or time.monotonic() > deadline:
                done.append((which, task))
                break
            time.sleep(0.1)
    return done


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (one that ends as another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def metering_census(stack: LocalStack, task_ids: set[str]) -> dict[str, int]:
    """How many metering records each of `task_ids` has in the tasks table (a scan, after the run)."""
    ddb = stack.client("dynamodb")
    table = stack.deployment.outputs["TasksTableName"]  # type: ignore[union-attr]
    per_task = dict.fromkeys(task_ids, 0)
    for page in ddb.get_paginator("scan").paginate(
        TableName=table,
        FilterExpression="begins_with(pk, :meter)",
        ExpressionAttributeValues={":meter": {"S": "METER#"}},
    ):
        for item in page["Items"]:
            if item["task_id"]["S"] in per_task:
                per_task[item["task_id"]["S"]] += 1
    return per_task


def measure(stack: LocalStack, admin_key: str, count: int, clients: int) -> TenantsResult:
    admin = TaskRunnerClient(stack.api_url, api_key=admin_key)
    tenants = create_tenants(admin)
    results = [result for result, _ in tenants]
    with SlotSampler(admin, results):
        started = time.perf_counter()
        submitted = submit_all(tenants, count, clients)
        submitted_s = time.perf_counter() - started
        finished = wait_all(tenants, submitted, count)
        elapsed = time.perf_counter() - started
    for which, accepted in submitted:
        results[which].queued_at_submission += accepted["status"] == "QUEUED"
    terminal = [(which, task) for which, task in finished if task["status"] in TERMINAL and task["metering"]]
    for which, result in enumerate(results):
        tasks = [task for w, task in terminal if w == which and task["provisioning_at"]]
        result.queue_waits_ms = [(at(t["provisioning_at"]) - at(t["created_at"])).total_seconds() * 1000 for t in tasks]
        result.max_concurrency = max_overlap(
            [(at(t["provisioning_at"]), at(t["stopped_at"] or t["updated_at"])) for t in tasks]
        )
    census = metering_census(stack, {task["task_id"] for _, task in finished})
    return TenantsResult(
        count=count,
        submitted_s=submitted_s,
        elapsed_s=elapsed,
        terminal=len(terminal),
        succeeded=sum(1 for _, task in terminal if task["status"] == "SUCCEEDED"),
        metering_records=sum(census.values()),
        one_metering_record_each=all(n == 1 for n in census.values()),
        tenants=results,
        failures={
            task["task_id"]: f"{task['status']}: {task['status_reason']}"
            for _, task in finished
            if task["status"] != "SUCCEEDED"
        },
    )


def spread(waits_ms: list[float]) -> str:
    if not waits_ms:
        return "none"
    p50, p90, p99 = (percentile(waits_ms, q) / 1000 for q in (50, 90, 99))
    return f"{p50:.2f} / {p90:.2f} / {p99:.2f} / {max(waits_ms) / 1000:.2f} s"


def rows(result: TenantsResult) -> list[Row]:
    """The table's rows for a `measure` result."""
    count = result.count
    name = f"tenants ({'/'.join(str(q) for q in QUOTAS)} running): {count} tasks"
    table: list[Row] = [
        (f"{name}: throughput", f"{result.throughput:.1f} tasks/s", ""),
        (f"{name}: submitted in", f"{result.submitted_s:.1f} s", ""),
        (f"{name}: all terminal in", f"{result.elapsed_s:.1f} s", ""),
        (f"{name}: terminal / succeeded", f"{result.terminal} / {result.succeeded}", f"{count} / {count}"),
        (
            f"{name}: one metering record each",
            f"{result.one_metering_record_each} ({result.metering_records} records)",
            "True",
        ),
        (
            "  queue wait (created → PROVISIONING) p50 / p90 / p99 / max",
            spread([w for t in result.tenants for w in t.queue_waits_ms]),
            "",
        ),
    ]
    for tenant in result.tenants:
        label = f"  quota {tenant.quota}: {len(tenant.queue_waits_ms)} tasks"
        table += [
            (f"{label}, queue wait p50 / p90 / p99 / max", spread(tenant.queue_waits_ms), ""),
            (
                f"  quota {tenant.quota}: most running at once (task times / slots sampled)",
                f"{tenant.max_concurrency} / {tenant.max_slots_sampled}",
                f"≤ {tenant.quota}",
            ),
            (f"  quota {tenant.quota}: QUEUED at submission", str(tenant.queued_at_submission), ""),
        ]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tenants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=1000, help="tasks of the burst, spread over the 4 tenants")
    parser.add_argument("--clients", type=int, default=16, help="concurrent submitters")
    parser.add_argument(
        "--agent-mode", choices=("process", "container"), default="process", help="how the stack runs tasks"
    )
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="taskrunner-bench-tenants-"))
    config = LocalConfig(
        api_port=free_port(),
        aws_port=free_port(),
        echo_function_logs=False,
        stack_name="taskrunner-bench-tenants",
        state_dir=state,
        ephemeral=False,
        agent_mode=args.agent_mode,
    )
    print(f"tenants ({args.agent_mode} mode): starting the local stack…", file=sys.stderr, flush=True)
    try:
        with LocalStack(config) as stack:
            key = stack.admin_key
            warm = TaskRunnerClient(stack.api_url, api_key=key)
            warm.wait(warm.submit({"image": BUSYBOX_IMAGE, "command": ["true"]})["task_id"])  # warm every function
            print(f"tenants: {args.tasks} tasks over {len(QUOTAS)} tenants…", file=sys.stderr, flush=True)
            result = measure(stack, key, args.tasks, args.clients)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    for task_id, reason in result.failures.items():
        print(f"not succeeded: {task_id} {reason}", file=sys.stderr)
    print_table(rows(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
