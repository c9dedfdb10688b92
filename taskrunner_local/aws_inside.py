"""What the local Fargate agent does *inside* AWS, done on moto's backends directly.

On AWS these never go through the public API either: the awslogs driver writes the task's log stream, and
ECS itself publishes "ECS Task State Change" events to EventBridge. Calling moto's backends in-process keeps
them off the emulator's HTTP server, which every other request needs.
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime
from functools import cache
from typing import Any

#: GetLogEvents' largest page
LOG_EVENTS_PAGE = 10_000


@cache
def _describe_tasks_serializer() -> Any:
    from moto.core.serialize import JSONSerializer, XFormedAttributePicker
    from moto.core.utils import get_service_model

    operation = get_service_model("ecs").operation_model("DescribeTasks")
    return JSONSerializer(operation_model=operation, value_picker=XFormedAttributePicker())


def iso_timestamp(moment: datetime | float) -> str:
    """A datetime or epoch seconds as ECS events write timestamps: ISO-8601, milliseconds, UTC, `Z`."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AwsInside:
    def __init__(self, account: str, region: str) -> None:
        self.account = account
        self.region = region
        self._lock = threading.Lock()

    def _logs(self) -> Any:
        from moto.logs.models import logs_backends

        return logs_backends[self.account][self.region]

    def describe_task(self, task: Any) -> dict[str, Any]:
        """The task as DescribeTasks shows it (camelCase), with timestamps in ISO-8601 as events carry them."""
        with self._lock:  # the serializer is shared
            body = _describe_tasks_serializer().serialize({"tasks": [task], "failures": []})["body"]
        described: dict[str, Any] = json.loads(body)["tasks"][0]
        for key, value in list(described.items()):
            if key.endswith("At") and isinstance(value, int | float):
                described[key] = iso_timestamp(value)
        return described

    def put_event(self, source: str, detail_type: str, detail: dict[str, Any], resources: list[str]) -> None:
        from moto.events.models import events_backends

        events_backends[self.account][self.region].put_events(
            [
                {
                    "Source": source,
                    "DetailType": detail_type,
                    "Detail": json.dumps(detail),
                    "Resources": resources,
                    "Time": datetime.now(UTC).isoformat(),
                }
            ]
        )

    def create_log_stream(self, group: str, stream: str) -> None:
        from moto.logs.exceptions import ResourceAlreadyExistsException

        logs = self._logs()
        if group not in logs.groups:
            logs.create_log_group(group, {})
        with contextlib.suppress(ResourceAlreadyExistsException):
            logs.create_log_stream(group, stream)

    def put_log_events(self, group: str, stream: str, events: list[dict[str, Any]]) -> None:
        self._logs().put_log_events(group, stream, events)

    def count_log_events(self, group: str, stream: str) -> int:
        """How many events a log stream holds (0 when it does not exist), read page by page as GetLogEvents
        reads them: where the agent resumes a re-adopted task's output."""
        from moto.logs.exceptions import ResourceNotFoundException

        logs = self._logs()
        count = 0
        token: str | None = None
        while True:
            try:
                events, _backward, token = logs.get_log_events(
                    group, None, stream, None, None, LOG_EVENTS_PAGE, token, True
                )
            except ResourceNotFoundException:
                return 0
            if not events:
                return count
            count += len(events)
