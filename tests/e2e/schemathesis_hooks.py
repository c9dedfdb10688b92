"""Schemathesis hooks for the API run (loaded by `st` through SCHEMATHESIS_HOOKS, in its own environment).

Every task schemathesis generates really runs on the local stack. The policy keeps them cheap: a valid spec's
command becomes `true` with a short timeout, so a run of thousands of generated tasks costs seconds of CPU.
"""

from __future__ import annotations

from typing import Any

import schemathesis

CHEAP_COMMAND = ["true"]
CHEAP_TIMEOUT_SECONDS = 30


def _cheap(spec: Any) -> None:
    if isinstance(spec, dict) and isinstance(spec.get("command"), list):
        spec["command"] = CHEAP_COMMAND
    if isinstance(spec, dict) and isinstance(spec.get("timeout_seconds"), int):
        spec["timeout_seconds"] = min(spec["timeout_seconds"], CHEAP_TIMEOUT_SECONDS)


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    _cheap(body)
    if isinstance(body, dict):
        _cheap(body.get("task"))
    return body
