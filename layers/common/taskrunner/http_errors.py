"""Errors → HTTP, in one place: the error body of the public contract and the status for each error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskrunner.errors import (
    AdminTenantCannotBeDisabled,
    ApiKeyNotFound,
    Forbidden,
    InvalidParameter,
    OrchestrationUnavailable,
    ScheduleAlreadyExists,
    ScheduleNotFound,
    StaleStatus,
    TaskAlreadyExists,
    TaskAlreadyTerminal,
    TaskNotFound,
    TaskRunnerError,
    TenantAlreadyExists,
    TenantDisabled,
    TenantNotFound,
    Unauthenticated,
)
from taskrunner.models import ErrorBody, ErrorDetail, ErrorResponse

#: status for each domain error; anything not listed is a 500.
STATUS_BY_ERROR: dict[type[TaskRunnerError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    TenantDisabled: 403,
    TaskNotFound: 404,
    ScheduleNotFound: 404,
    TenantNotFound: 404,
    ApiKeyNotFound: 404,
    TaskAlreadyTerminal: 409,
    TaskAlreadyExists: 409,
    ScheduleAlreadyExists: 409,
    TenantAlreadyExists: 409,
    AdminTenantCannotBeDisabled: 409,
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


# ---------------------------------------------------------------------------------------------- OpenAPI

ERROR_DESCRIPTIONS = {
    400: "The body is not UTF-8, not JSON, or JSON this API will not parse (error code MALFORMED_BODY or "
    "MALFORMED_JSON)",
    401: "No valid API key: missing, unknown, expired, revoked, or of a disabled tenant (UNAUTHENTICATED)",
    403: "The caller is not an admin: only admins administer tenants (FORBIDDEN)",
    404: "No such task, schedule, tenant or API key for the caller (another tenant's ids answer the same)",
    409: "Conflict: the task is already terminal, the schedule or tenant exists, the admin tenant cannot be "
    "disabled, or the Idempotency-Key was used with another body",
    413: "The body is larger than 10 MB",
    414: "The request line (path and query string, percent-encoded) is longer than the gateway's 8 KB",
    415: "The body is not JSON (Content-Type)",
    422: "A field or parameter breaks a rule; `details` names each field and its rule",
    500: "Internal error; the request id is in the logs",
    503: "The workflow engine refused to start the task; it is marked FAILED and metered at 0",
}
#: What every route with a JSON body can answer besides its own outcomes.
BODY_ERRORS = (400, 413, 415, 422)
_ERROR_SCHEMA_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def error_responses(*statuses: int) -> dict[int, Any]:
    """OpenAPI responses for these error statuses, each with the one error body."""
    return {
        status: {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"model": ErrorResponse}}}
        for status in statuses
    }


def with_error_shape_everywhere(document: dict[str, Any]) -> dict[str, Any]:
    """Powertools documents its own 422 body (`{"detail": [...]}`) on every operation; this API answers 422,
    and 500 on any route, in the one error shape, the gateway answers 414 on any route whose request line
    is too long (a query of long non-ASCII values can be, within the parameters' own limits), and every
    documented route answers 401 without a valid API key. Declare them as they are."""
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation["responses"] = responses = {str(k): v for k, v in operation["responses"].items()}
            if "204" in responses:
                responses["204"].pop("content", None)  # no body
            for status in ("401", "414", "422", "500"):
                responses[status] = {
                    "description": ERROR_DESCRIPTIONS[int(status)],
                    "content": {"application/json": {"schema": _ERROR_SCHEMA_REF}},
                }
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        schemas.pop(unused, None)
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    return document
