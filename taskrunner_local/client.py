"""A small HTTP client of the task runner API (used by the demo, the benchmark and the end-to-end tests)."""

from __future__ import annotations

import time
from typing import Any

import requests

from taskrunner_local.admin_key import read_admin_key

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}


def authenticated_session(api_key: str | None) -> requests.Session:
    """A requests session that sends `Authorization: Bearer <api_key>` with every request (none without a key)."""
    session = requests.Session()
    if api_key is not None:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


class TaskRunnerClient:
    def __init__(self, base_url: str, timeout: float = 30.0, *, api_key: str | None = None) -> None:
        """`api_key`: the key every request sends; by default the admin key a local stack wrote into its state
        folder (TASKRUNNER_STATE_DIR, else `.taskrunner/` here), when there is one."""
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else read_admin_key()
        self.http = authenticated_session(self.api_key)
        self.timeout = timeout

    def submit(self, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.http.post(f"{self.base_url}/tasks", json=spec, headers=headers, timeout=self.timeout)
        if response.status_code != 202:
            raise RuntimeError(f"POST /tasks answered {response.status_code}: {response.text}")
        return response.json()  # type: ignore[no-any-return]

    def get(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/tasks/{task_id}", timeout=self.timeout)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def cancel(self, task_id: str) -> requests.Response:
        return self.http.post(f"{self.base_url}/tasks/{task_id}/cancel", timeout=self.timeout)

    def logs(self, task_id: str) -> list[str]:
        lines: list[str] = []
        token = None
        while True:
            params = {"limit": "1000", **({"next_token": token} if token else {})}
            response = self.http.get(f"{self.base_url}/tasks/{task_id}/logs", params=params, timeout=self.timeout)
            response.raise_for_status()
            page = response.json()
            lines += [event["message"] for event in page["events"]]
            token = page["next_token"]
            if not token or not page["events"]:
                return lines

    def wait(
        self,
        task_id: str,
        statuses: set[str] = TERMINAL,
        timeout: float = 120.0,
        metered: bool = True,
        interval: float = 0.1,
    ) -> dict[str, Any]:
        """Poll until the task reaches one of `statuses` (and, when terminal, carries its metering)."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task["status"] in statuses and (not metered or task["status"] not in TERMINAL or task["metering"]):
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} is {task['status']} after {timeout} s")
            time.sleep(interval)
