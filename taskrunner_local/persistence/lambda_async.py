"""Lambda's asynchronous event queue, kept in the state store: an event the stack accepted (an ECS state change for
the task events function, a schedule's run for the scheduled-submit function, an `InvocationType=Event` call) is
written before it is acknowledged and removed once it was handled or sent to its on-failure destination. Events a
stopped stack had not finished are delivered again at the next start: at least once, as Lambda delivers them."""

from __future__ import annotations

import json
from typing import Any

from taskrunner_local.persistence.store import StateStore

KIND = "lambda-async"


class DurableAsyncQueue:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def accepted(self, request_id: str, function: str, event: Any, accepted_at: float) -> None:
        record = {"function": function, "event": event, "accepted_at": accepted_at}
        self.store.put(KIND, request_id, json.dumps(record, default=str).encode())

    def finished(self, request_id: str) -> None:
        self.store.put(KIND, request_id, None)

    def pending(self) -> list[tuple[str, str, Any, float]]:
        """The unfinished events, oldest first."""
        events = []
        for request_id, blob in self.store.all(KIND):
            record = json.loads(blob)
            events.append((request_id, str(record["function"]), record["event"], float(record["accepted_at"])))
        return sorted(events, key=lambda event: event[3])
