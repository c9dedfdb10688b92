"""Errors → HTTP, in one place: the error body of the public contract and the status for each error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskrunner.errors import (
    InvalidParameter,
    OrchestrationUnavailable,
    ScheduleAlreadyExists,
    ScheduleNotFound,
    StaleStatus,
    TaskAlreadyExists,
    TaskAlreadyTerminal,
    TaskNotFound,
    TaskRunnerError,
)
from taskrunner.models import ErrorBody, ErrorDetail, ErrorResponse

#: status for each domain error; anything not listed is a 500.
STATUS_BY_ERROR: dict[type[TaskRunnerError], int] = {
    TaskNotFound: 404,
    ScheduleNotFound: 404,
    TaskAlreadyTerminal: 409,
    TaskAlreadyExists: 409,
    ScheduleAlreadyExists: 409,
    StaleStatus: 409,
    InvalidParameter: 422,
    OrchestrationUnavailable: 503,
}

_LOCATION_PREFIXES = {"body", "query", "path", "header", "cookie"}


def error_body(code: str, message: str, details: Iterable[ErrorDetail] = ()) -> dict[str, Any]:
    return ErrorResponse(error=ErrorBody(code=code, message=message, details=list(details))).model_dump(
        mode="json", exclude_none=True
    )


def domain_error(exc: TaskRunnerError) -> tuple[int, dict[str, Any]]:
    status = next((s for t, s in STATUS_BY_ERROR.items() if isinstance(exc, t)), 500)
    details = [ErrorDetail(field=exc.field, rule=exc.rule)] if isinstance(exc, InvalidParameter) else []
    return status, error_body(exc.code, str(exc), details)


def _field_name(loc: Sequence[Any], ctx: Mapping[str, Any]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATION_PREFIXES:
        parts = parts[1:]
    # pydantic adds the validator/type name for unions and tagged values; keep the user's field path
    parts = [p for p in parts if not p.startswith("function-") and p != "[key]"]
    return ".".join(parts) or ctx.get("field") or (str(loc[0]) if loc else None)


def _rule(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "is invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def validation_error(errors: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
    """422 naming each field and the rule it broke; 400 when the body is not JSON at all."""
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), None)
        return 400, error_body(
            "MALFORMED_JSON",
            f"The request body is not valid JSON{f': {reason}' if reason else ''}",
        )
    details = []
    for e in errors:
        ctx = e.get("ctx") or {}
        details.append(
            ErrorDetail(
                field=_field_name(e.get("loc", ()), ctx),
                rule=_rule(e),
                valid_values=ctx.get("valid_values"),
            )
        )
    summary = "; ".join(f"{d.field}: {d.rule}" if d.field else d.rule for d in details)
    return 422, error_body("VALIDATION_ERROR", f"The request breaks a rule: {summary}", details)
