"""What an ECS task description says about how a task went, whichever way it reached us.

The same facts arrive three ways: the `ecs:runTask.sync` output (PascalCase, epoch-millisecond
timestamps), the `Cause` of a `States.TaskFailed` error (a JSON string of the same), and the detail of an
"ECS Task State Change" event (camelCase, ISO-8601 timestamps). This module reads all three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def _camel(key: str) -> str:
    return key[:1].lower() + key[1:]


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def parse_timestamp(value: Any) -> datetime | None:
    """Epoch seconds or milliseconds, ISO-8601 text or a datetime, always returned in UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 100_000_000_000 else value
        return datetime.fromtimestamp(seconds, tz=UTC)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TaskObservation:
    ecs_task_arn: str | None
    last_status: str | None = None
    started_by: str | None = None
    group: str | None = None
    stop_code: str | None = None
    stopped_reason: str | None = None
    exit_code: int | None = None
    container_reason: str | None = None
    capacity_provider: str | None = None
    created_at: datetime | None = None
    pull_started_at: datetime | None = None
    pull_stopped_at: datetime | None = None
    started_at: datetime | None = None
    stopping_at: datetime | None = None
    execution_stopped_at: datetime | None = None
    stopped_at: datetime | None = None

    def task_id(self, group_prefix: str) -> str | None:
        """Our task id: from the ECS task group when it is one of ours, else from `startedBy`."""
        if self.group and self.group.startswith(group_prefix):
            return self.group.removeprefix(group_prefix)
        return self.started_by

    @property
    def stopped(self) -> bool:
        return self.last_status == "STOPPED"

    @classmethod
    def from_description(cls, description: dict[str, Any], container_name: str | None = None) -> TaskObservation:
        d = _normalise(description)
        containers = d.get("containers") or []
        container = next((c for c in containers if c.get("name") == container_name), None)
        if container is None and containers:
            container = containers[0]
        container = container or {}
        exit_code = container.get("exitCode")
        return cls(
            ecs_task_arn=d.get("taskArn"),
            last_status=d.get("lastStatus"),
            started_by=d.get("startedBy"),
            group=d.get("group"),
            stop_code=d.get("stopCode"),
            stopped_reason=d.get("stoppedReason"),
            exit_code=int(exit_code) if exit_code is not None else None,
            container_reason=container.get("reason"),
            capacity_provider=d.get("capacityProviderName"),
            created_at=parse_timestamp(d.get("createdAt")),
            pull_started_at=parse_timestamp(d.get("pullStartedAt")),
            pull_stopped_at=parse_timestamp(d.get("pullStoppedAt")),
            started_at=parse_timestamp(d.get("startedAt")),
            stopping_at=parse_timestamp(d.get("stoppingAt")),
            execution_stopped_at=parse_timestamp(d.get("executionStoppedAt")),
            stopped_at=parse_timestamp(d.get("stoppedAt")),
        )

    @classmethod
    def from_error_cause(cls, cause: str | None, container_name: str | None = None) -> TaskObservation | None:
        """The task description inside a `States.TaskFailed` cause, or None when the cause is not one."""
        if not cause:
            return None
        try:
            parsed = json.loads(cause)
        except (TypeError, ValueError):
            return None
        if not isinstance(parsed, dict) or not ({"TaskArn", "taskArn"} & parsed.keys()):
            return None
        return cls.from_description(parsed, container_name)
