"""The durable local stack, as a user runs it: `taskrunner local up` in its own process, on a state folder, stopped
with Ctrl-C or killed with SIGKILL, then started again on the same folder and the same ports.

What must survive: every task the API answered 202 for (status, timestamps), every metering record (exactly one per
task, counted through the AWS endpoint), /usage, schedules and their last run, idempotency keys, task logs and
the S3 archive, the deployed stack (not redeployed); tasks running at the stop are re-adopted and finish, metered
normally; nothing of the dead stack is left running."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from taskrunner_local.admin_key import read_admin_key
from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.images import BUSYBOX_IMAGE
from tests.support.child_process import ChildProcess
from tests.support.engine import engine_or_skip
from tests.support.local_tasks import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("durability")]

START_TIMEOUT_SECONDS = 120.0
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}
STACK_LABEL = "io.taskrunner.stack"


def busybox(script: str, **extra: Any) -> dict[str, Any]:
    return {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", script], **extra}


class UpProcess(ChildProcess):
    """`python -m taskrunner_local local up` on a state folder, as `make run` starts it."""

    def __init__(self, state_dir: Path, stack_name: str, api_port: int, aws_port: int) -> None:
        env = {
            "TASKRUNNER_STATE_DIR": str(state_dir),
            "TASKRUNNER_EPHEMERAL": "0",
            "TASKRUNNER_STACK_NAME": stack_name,
            "TASKRUNNER_API_PORT": str(api_port),
            "TASKRUNNER_AWS_PORT": str(aws_port),
            "TASKRUNNER_REGISTRY_PORT": str(free_port()),
            "TASKRUNNER_AGENT_MODE": "container",
            "TASKRUNNER_STOP_TIMEOUT": "5",
            "TASKRUNNER_TEMPLATE_SCHEDULE_INTERVAL": "5",
        }
        # its process group is what a crash kills (Lambda workers too)
        super().__init__("taskrunner_local", "local", "up", env=env, new_session=True)
        self.state_dir = state_dir
        self.api_port = api_port
        self.aws_port = aws_port

    @property
    def api(self) -> TaskRunnerClient:
        """The API as the stack's admin (the key is read from the state folder, where the stack wrote it)."""
        return TaskRunnerClient(f"http://127.0.0.1:{self.api_port}", api_key=read_admin_key(self.state_dir))

    def aws(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{self.aws_port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def ctrl_c(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=120)

    def kill_9(self) -> None:
        """SIGKILL to the stack's whole process group: the stack and its Lambda workers, not the engine's conmon."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def metering_records(self) -> Counter[str]:
        """task id -> how many metering records the tasks table holds for it, counted through the AWS endpoint."""
        ddb = self.aws("dynamodb")
        [table] = [name for name in ddb.list_tables()["TableNames"] if "TasksTable" in name]
        counts: Counter[str] = Counter()
        for page in ddb.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                if item["pk"]["S"].startswith("METER#"):
                    counts[item["task_id"]["S"]] += 1
        return counts

    def archive_objects(self) -> list[str]:
        s3 = self.aws("s3")
        [bucket] = [b["Name"] for b in s3.list_buckets()["Buckets"] if "archivebucket" in b["Name"]]
        return [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]


@pytest.fixture
def engine() -> Any:
    return engine_or_skip(BUSYBOX_IMAGE)


@pytest.fixture
def stack_name() -> str:
    return f"durable-{os.getpid()}-{time.monotonic_ns() % 100000}"


@dataclass
class Stacks:
    """The runs of one durable stack, one after the other, on the same state folder and the same ports."""

    state: Path
    name: str
    api_port: int = field(default_factory=free_port)
    aws_port: int = field(default_factory=free_port)
    started: list[UpProcess] = field(default_factory=list)

    def start(self) -> UpProcess:
        """The next run, once it is up."""
        up = UpProcess(self.state, self.name, self.api_port, self.aws_port)
        self.started.append(up)
        up.wait_for("taskrunner is up", START_TIMEOUT_SECONDS)
        return up


@pytest.fixture
def stacks(tmp_path: Path, stack_name: str) -> Iterator[Stacks]:
    runs = Stacks(tmp_path / "state", stack_name)
    yield runs
    for up in runs.started:
        if up.process.poll() is None:
            up.kill_9()


def containers_of(engine: Any, stack_name: str) -> list[str]:
    listed = engine.run("ps", "-a", "-q", "--filter", f"label={STACK_LABEL}={stack_name}")
    return [line for line in listed.stdout.split() if line]


def terminal(api: TaskRunnerClient, task_id: str) -> dict[str, Any]:
    return api.wait(task_id, TERMINAL, timeout=180)


def test_ctrl_c_then_restart_keeps_tasks_records_schedules_keys_logs_and_the_archive(
    engine: Any, stack_name: str, stacks: Stacks
) -> None:
    first = stacks.start()
    assert str(stacks.state) in first.wait_for("  State  ")
    api = first.api
    # Given a finished task, a keyed one, a schedule that ran, and a task still running
    finished = terminal(api, api.submit(busybox("echo first line; echo second line"))["task_id"])
    keyed_response = api.http.post(
        f"{api.base_url}/tasks", json=busybox("echo keyed"), headers={"Idempotency-Key": "k-1"}, timeout=30
    )
    keyed = terminal(api, keyed_response.json()["task_id"])
    schedule: dict[str, Any] = {
        "name": "nightly",
        "schedule_expression": "rate(1 day)",
        "task": busybox("echo scheduled"),
    }
    assert api.http.post(f"{api.base_url}/schedules", json=schedule, timeout=30).status_code == 201
    run = api.http.post(f"{api.base_url}/schedules/nightly/run", timeout=30)
    assert run.status_code == 202, run.text
    scheduled = terminal(api, run.json()["task_id"])
    running = api.wait(api.submit(busybox("echo started; sleep 8; echo finished"))["task_id"], {"RUNNING"})
    assert wait_until(lambda: "started" in api.logs(running["task_id"]), timeout=30)
    before = {
        "tasks": {t["task_id"]: t for t in (finished, keyed, scheduled)},
        "usage": api.http.get(f"{api.base_url}/usage", timeout=30).json(),
        "schedule": api.http.get(f"{api.base_url}/schedules/nightly", timeout=30).json(),
        "logs": api.logs(finished["task_id"]),
        "archive": first.archive_objects(),
    }
    assert before["logs"] == ["first line", "second line"]
    assert before["schedule"]["last_run"] is not None

    # When the user presses Ctrl-C, and starts the stack again at once, on the same folder and ports
    first.ctrl_c()
    assert "its state is kept in" in first.output[-1], first.output[-5:]
    second = stacks.start()

    # Then the stack was restored, not deployed again, and everything is there as it was
    assert "restored (template unchanged)" in second.wait_for("stack ")
    api = second.api
    for task_id, task in before["tasks"].items():
        assert api.get(task_id) == task
    assert api.http.get(f"{api.base_url}/usage", timeout=30).json() == before["usage"]
    assert (
        api.http.get(f"{api.base_url}/schedules/nightly", timeout=30).json()["last_run"]
        == before["schedule"]["last_run"]
    )
    assert api.logs(finished["task_id"]) == before["logs"]
    assert set(before["archive"]) <= set(second.archive_objects())
    again = api.http.post(
        f"{api.base_url}/tasks", json=busybox("echo keyed"), headers={"Idempotency-Key": "k-1"}, timeout=30
    )
    assert again.json()["task_id"] == keyed["task_id"]
    # and the task that ran through the restart was re-adopted: it finishes, with all its lines, metered once
    adopted = terminal(api, running["task_id"])
    assert adopted["status"] == "SUCCEEDED" and adopted["exit_code"] == 0, adopted
    assert api.logs(adopted["task_id"]) == ["started", "finished"]
    assert adopted["metering"]["billed_seconds"] >= 60
    records = second.metering_records()
    assert all(records[task_id] == 1 for task_id in [*before["tasks"], adopted["task_id"]]), records
    second.ctrl_c()
    assert containers_of(engine, stack_name) == []


def test_kill_9_mid_burst_then_restart_ends_every_accepted_task_metered_once(
    engine: Any, stack_name: str, stacks: Stacks
) -> None:
    first = stacks.start()
    api = first.api
    accepted: list[str] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        try:
            response = api.http.post(f"{api.base_url}/tasks", json=busybox(f"echo task {n}; sleep {n % 4}"), timeout=30)
        except requests.RequestException:
            return  # cut by the kill: never acknowledged
        if response.status_code == 202:
            with lock:
                accepted.append(response.json()["task_id"])

    # Given a burst of submissions, When the stack is killed with SIGKILL in the middle of it
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(submit, n) for n in range(40)]
        assert wait_until(lambda: len(accepted) >= 12, timeout=120)
        first.kill_9()
        concurrent.futures.wait(futures)
    assert accepted

    # Then a stack started at once on the same folder and ports settles or finishes every accepted task
    second = stacks.start()
    api = second.api
    ended = {task_id: terminal(api, task_id) for task_id in accepted}
    assert all(task["status"] in TERMINAL for task in ended.values())
    # each metered exactly once, counted through the AWS endpoint
    assert wait_until(lambda: all(second.metering_records()[task_id] == 1 for task_id in accepted), timeout=120)
    assert max(second.metering_records().values()) == 1
    # and nothing of the dead stack runs: no container of this stack is left
    assert wait_until(lambda: containers_of(engine, stack_name) == [], timeout=60)
    second.ctrl_c()
