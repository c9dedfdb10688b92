"""Measurements both agent modes share: percentiles, timed sequential submissions, a metered burst, a table."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from taskrunner_local.client import TERMINAL, TaskRunnerClient
from taskrunner_local.stack import LocalStack


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True)
class Submission:
    """One sequential submission, on this process's perf_counter clock (the stack runs in this process)."""

    task_id: str
    submitted: float
    #: when POST /tasks answered 202
    accepted: float
    #: when GET /tasks/{id} first showed RUNNING (or a terminal status)
    seen: float
    #: the status seen then: RUNNING, or a terminal one when the task ended between two polls
    status: str

    @property
    def to_running_ms(self) -> float:
        return (self.seen - self.submitted) * 1000


def timed_submissions(api: TaskRunnerClient, samples: int, spec: dict[str, Any]) -> list[Submission]:
    """Submit `spec` `samples` times, one after the other: poll every 2 ms until the task shows RUNNING (or is
    already terminal), then wait for it to finish before the next one."""
    done = []
    for _ in range(samples):
        started = time.perf_counter()
        task_id = api.submit(spec)["task_id"]
        accepted = time.perf_counter()
        while (status := api.get(task_id)["status"]) not in {"RUNNING", *TERMINAL}:
            time.sleep(0.002)
        done.append(Submission(task_id, started, accepted, time.perf_counter(), status))
        api.wait(task_id)
    return done


def burst(stack: LocalStack, api: TaskRunnerClient, count: int, clients: int, image: str = "busybox") -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(
            pool.map(
                lambda i: api.submit({"image": image, "command": ["sh", "-c", f"echo {i}"]})["task_id"],
                range(count),
            )
        )
    submitted = time.perf_counter() - started
    # Wait without flooding the system being measured: look at the oldest unfinished task until it is done,
    # then move on (tasks finish roughly in submission order), so the whole wait costs about one GET per task.
    statuses: dict[str, str] = {}
    failures: dict[str, str] = {}
    deadline = time.monotonic() + max(600, count)
    for task_id in ids:
        while time.monotonic() < deadline:
            task = api.get(task_id)
            if task["status"] in TERMINAL and task["metering"]:
                statuses[task_id] = task["status"]
                if task["status"] != "SUCCEEDED":
                    failures[task_id] = f"{task['status']}: {task['status_reason']}"
                break
            time.sleep(0.1)
    elapsed = time.perf_counter() - started
    ddb = stack.client("dynamodb")
    table = stack.deployment.outputs["TasksTableName"]  # type: ignore[union-attr]
    per_task: dict[str, int] = dict.fromkeys(ids, 0)
    for page in ddb.get_paginator("scan").paginate(TableName=table):  # a census after the run
        for item in page["Items"]:
            if item["pk"]["S"].startswith("METER#") and item["task_id"]["S"] in per_task:
                per_task[item["task_id"]["S"]] += 1
    return {
        "count": count,
        "submitted_s": submitted,
        "elapsed_s": elapsed,
        "throughput": len(statuses) / elapsed,
        "terminal": len(statuses),
        "succeeded": sum(1 for s in statuses.values() if s == "SUCCEEDED"),
        "one_metering_record_each": all(n == 1 for n in per_task.values()),
        "metering_records": sum(per_task.values()),
        "failures": failures,
    }


def authorizer_ms(stack: LocalStack, api: TaskRunnerClient, samples: int) -> dict[str, list[float]]:
    """What authentication adds to each request locally (the stack deploys without the authorizer cache, so every
    request pays it): the authorizer function's warm invocations for the admin key (its digest is in the function's
    environment: no read) and for a tenant's key (its key and tenant items read from the tasks table)."""
    assert stack.runtime is not None
    created = api.http.post(f"{api.base_url}/tenants", json={"name": f"bench-{time.time_ns() % 10**8}"}, timeout=30)
    created.raise_for_status()
    timings: dict[str, list[float]] = {}
    for label, key in (("admin key", stack.admin_key), ("tenant key", created.json()["api_key"])):
        header = f"Bearer {key}"
        event: dict[str, Any] = {"version": "2.0", "type": "REQUEST", "routeKey": "GET /tasks", "rawPath": "/tasks"}
        event |= {"identitySource": [header], "headers": {"authorization": header}, "requestContext": {}}
        for _ in range(10):  # warm
            stack.runtime.invoke("AuthorizerFunction", event)
        timings[label] = []
        for _ in range(samples):
            started = time.perf_counter()
            stack.runtime.invoke("AuthorizerFunction", event)
            timings[label].append((time.perf_counter() - started) * 1000)
    return timings


Row = tuple[str, str, str]


def burst_rows(result: dict[str, Any], prefix: str = "", throughput_target: str = "") -> list[Row]:
    """The table's rows for a `burst` result, each measure named after `prefix`."""
    count = result["count"]
    return [
        (f"{prefix}burst of {count}: throughput", f"{result['throughput']:.1f} tasks/s", throughput_target),
        (f"{prefix}burst of {count}: submitted in", f"{result['submitted_s']:.1f} s", ""),
        (f"{prefix}burst of {count}: all terminal in", f"{result['elapsed_s']:.1f} s", ""),
        (f"{prefix}burst: terminal / succeeded", f"{result['terminal']} / {result['succeeded']}", f"{count} / {count}"),
        (
            f"{prefix}burst: one metering record each",
            f"{result['one_metering_record_each']} ({result['metering_records']} records)",
            "True",
        ),
    ]


def print_table(rows: list[Row], header: tuple[str, str, str] = ("measure", "value", "target")) -> None:
    width = max(len(r[0]) for r in [*rows, header])
    value_width = max(len(r[1]) for r in [*rows, header])
    print(f"\n{header[0]:<{width}}  {header[1]:>{value_width}}  {header[2]}")
    print("-" * (width + value_width + 12))
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {target}".rstrip())
