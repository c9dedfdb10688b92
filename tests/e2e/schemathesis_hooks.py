"""Schemathesis hooks for the API run (loaded by `st` through SCHEMATHESIS_HOOKS, in its own environment).

Every task schemathesis generates really runs on the local stack. The policy keeps them cheap: a valid spec's
command becomes `true` and its timeout at most 30 s, so a run of thousands of generated tasks costs seconds of
CPU. Only values the API accepts anyway are rewritten: an invalid command or timeout stays as generated, so a
negative case (schema-violating on purpose) stays negative and must still be rejected.

The rewrite is a `map_case` hook, which the fuzzing, coverage and stateful phases apply, and a
`before_add_examples` hook for the examples phase, which does not apply `map_case`. A positive PUT
/schedules/{name} gets its path's name in its body, as the API requires, so its cases reach the service
instead of all being 422 (the path's, not the body's: in the stateful phase the path names the schedule an
earlier step created).
"""

from __future__ import annotations

from typing import Any

import schemathesis

CHEAP_COMMAND = ["true"]
CHEAP_TIMEOUT_SECONDS = 30
MAX_TIMEOUT_SECONDS = 1_209_600
MAX_ARGUMENT_CHARS = 8192
_SCRIPT_WHITESPACE = frozenset("\t\n\r")


def _valid_argument(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= MAX_ARGUMENT_CHARS
        and not any((c < " " or c == "\x7f") and c not in _SCRIPT_WHITESPACE for c in value)
    )


def _accepted_command(command: Any) -> bool:
    """A command the API accepts: a non-empty list of valid arguments whose program is not blank."""
    return (
        isinstance(command, list)
        and bool(command)
        and all(_valid_argument(a) for a in command)
        and bool(command[0].strip())
    )


def _accepted_timeout(timeout: Any) -> bool:
    return isinstance(timeout, int) and not isinstance(timeout, bool) and 1 <= timeout <= MAX_TIMEOUT_SECONDS


def cheap_spec(spec: Any) -> Any:
    """`spec` (a task spec, or anything else) with an accepted command and timeout made cheap."""
    if not isinstance(spec, dict):
        return spec
    spec = dict(spec)
    if _accepted_command(spec.get("command")):
        spec["command"] = list(CHEAP_COMMAND)
    if _accepted_timeout(spec.get("timeout_seconds")):
        spec["timeout_seconds"] = min(spec["timeout_seconds"], CHEAP_TIMEOUT_SECONDS)
    return spec


def cheap_body(body: Any) -> Any:
    """A POST /tasks body, or a schedule's body (its `task`), with its task made cheap."""
    body = cheap_spec(body)
    if isinstance(body, dict) and "task" in body:
        body["task"] = cheap_spec(body["task"])
    return body


def _is_positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _cheapen(case: Any) -> Any:
    if isinstance(case.body, dict):
        case.body = cheap_body(case.body)
        path_name = case.path_parameters.get("name") if isinstance(case.path_parameters, dict) else None
        if (
            case.operation.method.upper() == "PUT"
            and case.operation.path == "/schedules/{name}"
            and _is_positive(case)
            and isinstance(path_name, str)
            and isinstance(case.body.get("name"), str)
        ):
            # the path's name wins: in the stateful phase it is the schedule a previous step created
            case.body["name"] = path_name
    return case


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    return _cheapen(case)


@schemathesis.hook
def before_add_examples(ctx: Any, examples: list[Any]) -> None:
    for case in examples:
        _cheapen(case)
