"""Helpers of the end-to-end tests: task specs for the local stack, and what runs on this machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def shell(script: str, **spec: object) -> dict[str, object]:
    """A task spec that runs `script` with sh."""
    return {"image": "python:3.12-slim", "command": ["sh", "-c", script], **spec}


def processes_with(marker: str) -> list[int]:
    """The pids of this machine's processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.1) -> bool:
    """Whether `predicate` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
