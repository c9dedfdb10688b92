"""A task that reached ECS and printed, for the integration tests of the logs API (moto, in process)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3

from tests.integration.conftest import invoke, load_event
from tests.support.functions import load_function
from tests.support.stack import REGION

ECS_TASK_ID = "0123456789abcdef0123456789abcdef"


def print_lines(stack: Any, task_id: str, lines: int) -> None:
    """Mark the task RUNNING on an ECS task (as its RUNNING event does) and write `line 0`… to its log stream."""
    running = load_event("ecs/task_state_change_running.json", **{"01JDQ5ZC8W0000000000000000": task_id})
    running["detail"]["taskArn"] = f"arn:aws:ecs:us-east-1:123456789012:task/taskrunner/{ECS_TASK_ID}"
    invoke(load_function("task_events"), running)
    logs = boto3.client("logs", region_name=REGION)
    stream = f"task/main/{ECS_TASK_ID}"
    logs.create_log_stream(logGroupName=stack.log_group, logStreamName=stream)
    now = int(datetime.now(UTC).timestamp() * 1000)
    logs.put_log_events(
        logGroupName=stack.log_group,
        logStreamName=stream,
        logEvents=[{"timestamp": now + i, "message": f"line {i}"} for i in range(lines)],
    )
