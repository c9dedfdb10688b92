"""HTTP API of the task runner (DESIGN §4): Powertools resolver, pydantic validation, OpenAPI."""
# No `from __future__ import annotations` here: Powertools reads the route signatures (through the tracer's
# wrappers) to build validation and OpenAPI, and string annotations would resolve in the wrong module.

import json
from datetime import UTC, date, datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, OpenAPI
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel
from taskrunner.errors import Forbidden, InvalidParameter, TaskRunnerError, Unauthenticated
from taskrunner.http_errors import (
    BODY_ERRORS,
    domain_error,
    error_body,
    error_responses,
    validation_error,
    with_error_shape_everywhere,
)
from taskrunner.models import LogPage, Task, TaskPage, TaskSpec, TaskStatus, Usage
from taskrunner.observability import logger, metrics, tracer
from taskrunner.request_body import BodyProblem, checked_json_body
from taskrunner.schedules import Schedule, SchedulePage, ScheduleSpec
from taskrunner.service import default_usage_range
from taskrunner.tenants import (
    KEY_ID_PATTERN,
    TENANT_NAME_PATTERN,
    KeyRotation,
    Principal,
    Refusal,
    Tenant,
    TenantPage,
    TenantSpec,
    TenantUpdate,
    TenantWithKey,
    principal_from_context,
)
from taskrunner.wiring import (
    IDEMPOTENCY,
    LOGS,
    SCHEDULER,
    SUBMISSION,
    TASKS,
    TENANTS,
    require,
    schedule_service,
    task_service,
    tenant_service,
)

require(TASKS, SUBMISSION, LOGS, IDEMPOTENCY, SCHEDULER, TENANTS)  # cold start: fail now, naming any missing variable

# Task ids are opaque to clients: any path segment is looked up, and one that names no task is a 404.
TaskId = Annotated[str, Path(min_length=1)]
ScheduleNameParam = Annotated[str, Path(min_length=1, max_length=56, pattern=r"^[0-9A-Za-z_.-]+$")]
TenantNameParam = Annotated[str, Path(min_length=1, max_length=32, pattern=TENANT_NAME_PATTERN)]
KeyIdParam = Annotated[str, Path(min_length=12, max_length=12, pattern=KEY_ID_PATTERN)]

#: what needs no API key: the API's description
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs"})
#: what only admins may call
ADMIN_RESOURCE = "tenants"
TITLE, VERSION = "Task runner API", "1.0.0"
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": HTTPBearer(
        bearerFormat="trk_<key id>_<secret>",
        description="An API key: `Authorization: Bearer <api key>` on every route but /openapi.json and /docs",
    )
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


class _Resolver(APIGatewayHttpResolver):
    """Powertools' resolver, with an OpenAPI document that declares the errors as this API answers them."""

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> OpenAPI:
        document = super().get_openapi_schema(*args, **kwargs).model_dump(by_alias=True, exclude_none=True)
        return OpenAPI.model_validate(with_error_shape_everywhere(document))


app = _Resolver(enable_validation=True)
app.enable_swagger(
    path="/docs",
    title=TITLE,
    version=VERSION,
    description="Submit container tasks, follow them, read their logs and their per-second metering.",
    security_schemes=SECURITY_SCHEMES,
    security=SECURITY,
)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


def _model(status: int, model: BaseModel, **headers: str) -> Response[Any]:
    return _json(status, model, headers or None)


def caller() -> Principal:
    """The authenticated caller: lambda_handler lets no request without one reach a route."""
    principal = app.context.get("principal")
    if not isinstance(principal, Principal):
        raise Unauthenticated("no valid API key")
    return principal


def current_tenant() -> str:
    return caller().tenant


def admin() -> Principal:
    principal = caller()
    if not principal.admin:
        raise Forbidden("administer tenants")
    return principal


@app.post(
    "/tasks",
    summary="Submit a task",
    responses={
        202: {"description": "Accepted; the task and a Location header"},
        **error_responses(*BODY_ERRORS, 409, 503),
    },
)
@tracer.capture_method(capture_response=False)  # responses carry task specs and their environment
def submit_task(
    spec: Annotated[TaskSpec, Body(description="The task to run")],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="idempotency-key",
            min_length=1,
            max_length=255,
            description="The same key with the same body returns the same task; with another body, 409.",
        ),
    ] = None,
) -> Response[Task]:
    tenant = current_tenant()
    if idempotency_key:
        from taskrunner.idempotency import submit_once  # only keyed requests pay for Powertools idempotency

        task = submit_once(tenant, idempotency_key, spec)
    else:
        task = task_service().submit(tenant, spec)
    logger.set_correlation_id(task.task_id)
    logger.info("task submitted", task_id=task.task_id, image=spec.image, cpu=spec.cpu, memory=spec.memory)
    metrics.add_metric(name="TasksSubmitted", unit="Count", value=1)
    return _model(202, task, Location=f"/tasks/{task.task_id}")


@app.get(
    "/tasks",
    summary="List tasks, newest first",
    responses={200: {"description": "A page of tasks"}, **error_responses(422)},
)
@tracer.capture_method(capture_response=False)
def list_tasks(
    status: Annotated[TaskStatus | None, Query(description="Only tasks in this status")] = None,
    schedule: Annotated[str | None, Query(description="Only the runs of this schedule", max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    next_token: Annotated[str | None, Query(min_length=1, max_length=4096)] = None,
) -> Response[TaskPage]:
    return _model(200, task_service().list_tasks(current_tenant(), status, limit, next_token, schedule))


@app.get("/tasks/<task_id>", summary="Get a task", responses={200: {"description": "The task"}, **error_responses(404)})
@tracer.capture_method(capture_response=False)
def get_task(task_id: TaskId) -> Response[Task]:
    logger.set_correlation_id(task_id)
    return _model(200, task_service().get(current_tenant(), task_id))


@app.post(
    "/tasks/<task_id>/cancel",
    summary="Cancel a task",
    responses={202: {"description": "Cancellation accepted"}, **error_responses(404, 409)},
)
@tracer.capture_method(capture_response=False)
def cancel_task(task_id: TaskId) -> Response[Task]:
    logger.set_correlation_id(task_id)
    task = task_service().cancel(current_tenant(), task_id)
    metrics.add_metric(name="TasksCancelled", unit="Count", value=1)
    return _model(202, task)


@app.get(
    "/tasks/<task_id>/logs",
    summary="Read a task's container logs, oldest first",
    responses={200: {"description": "A page of log events"}, **error_responses(404, 422)},
)
@tracer.capture_method(capture_response=False)
def task_logs(
    task_id: TaskId,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    next_token: Annotated[str | None, Query(min_length=1, max_length=4096)] = None,
) -> Response[LogPage]:
    logger.set_correlation_id(task_id)
    return _model(200, task_service().logs_of(current_tenant(), task_id, limit, next_token))


@app.get(
    "/usage",
    summary="Metered usage per day for the caller's tenant (admins: any tenant's)",
    responses={200: {"description": "Totals and one row per day"}, **error_responses(404, 422)},
)
@tracer.capture_method(capture_response=False)
def usage(
    from_: Annotated[
        date | None, Query(alias="from", description="First day, YYYY-MM-DD (default: 1st of month)")
    ] = None,
    to: Annotated[date | None, Query(description="Last day, YYYY-MM-DD (default: today, UTC)")] = None,
    tenant: Annotated[
        str | None,
        Query(
            max_length=32,
            pattern=TENANT_NAME_PATTERN,
            description="Whose usage (default: the caller's). Only admins may name another tenant; for anyone "
            "else another tenant is not found.",
        ),
    ] = None,
) -> Response[Usage]:
    whose = tenant_service().usage_tenant(caller(), tenant)
    default_from, default_to = default_usage_range(datetime.now(UTC).date())
    return _model(200, task_service().usage(whose, from_ or default_from, to or default_to))


@app.post(
    "/schedules",
    summary="Create a schedule",
    responses={
        201: {"description": "Created; the schedule, its next runs and a Location header"},
        **error_responses(*BODY_ERRORS, 409),
    },
)
@tracer.capture_method(capture_response=False)
def create_schedule(spec: Annotated[ScheduleSpec, Body(description="The schedule")]) -> Response[Schedule]:
    task_service().check_quota(current_tenant(), spec.task, "task")  # a run that could never start: 422 now
    schedule = schedule_service().create(current_tenant(), spec)
    metrics.add_metric(name="SchedulesCreated", unit="Count", value=1)
    return _model(201, schedule, Location=f"/schedules/{schedule.name}")


@app.get(
    "/schedules",
    summary="List schedules by name",
    responses={200: {"description": "A page of schedules"}, **error_responses(422)},
)
@tracer.capture_method(capture_response=False)
def list_schedules(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    next_token: Annotated[str | None, Query(min_length=1, max_length=4096)] = None,
) -> Response[SchedulePage]:
    return _model(200, schedule_service().list_schedules(current_tenant(), limit, next_token))


@app.get(
    "/schedules/<name>",
    summary="Get a schedule and its next five run times",
    responses={200: {"description": "The schedule"}, **error_responses(404, 422)},
)
@tracer.capture_method(capture_response=False)
def get_schedule(name: ScheduleNameParam) -> Response[Schedule]:
    return _model(200, schedule_service().get(current_tenant(), name))


@app.put(
    "/schedules/<name>",
    summary="Replace a schedule (pause and resume with `enabled`)",
    responses={200: {"description": "The schedule as replaced"}, **error_responses(*BODY_ERRORS, 404)},
)
@tracer.capture_method(capture_response=False)
def update_schedule(
    name: ScheduleNameParam, spec: Annotated[ScheduleSpec, Body(description="The schedule")]
) -> Response[Schedule]:
    if spec.name != name:
        raise InvalidParameter("name", f"must be {name!r}, the schedule in the path; a schedule cannot be renamed")
    task_service().check_quota(current_tenant(), spec.task, "task")
    return _model(200, schedule_service().update(current_tenant(), name, spec))


@app.delete(
    "/schedules/<name>",
    summary="Delete a schedule",
    responses={204: {"description": "Deleted"}, **error_responses(404, 422)},
)
@tracer.capture_method(capture_response=False)
def delete_schedule(name: ScheduleNameParam) -> Response[None]:
    schedule_service().delete(current_tenant(), name)
    return Response(status_code=204, body=None)


@app.post(
    "/schedules/<name>/run",
    summary="Run a schedule now",
    responses={202: {"description": "The task"}, **error_responses(404, 422, 503)},
)
@tracer.capture_method(capture_response=False)
def run_schedule(name: ScheduleNameParam) -> Response[Task]:
    task = schedule_service().run_now(current_tenant(), name)
    logger.set_correlation_id(task.task_id)
    return _model(202, task, Location=f"/tasks/{task.task_id}")


@app.post(
    "/tenants",
    summary="Create a tenant and its first API key (admins only)",
    responses={
        201: {"description": "Created; the tenant, its API key (shown this once) and a Location header"},
        **error_responses(*BODY_ERRORS, 403, 409),
    },
)
@tracer.capture_method(capture_response=False)  # the response carries the new key
def create_tenant(spec: Annotated[TenantSpec, Body(description="The tenant")]) -> Response[TenantWithKey]:
    admin()
    tenant = tenant_service().create(spec)
    logger.info("tenant created", tenant=tenant.name, key_id=tenant.api_key_id)
    return _model(201, tenant, Location=f"/tenants/{tenant.name}")


@app.get(
    "/tenants",
    summary="List tenants by name (admins only)",
    responses={200: {"description": "A page of tenants"}, **error_responses(403, 422)},
)
@tracer.capture_method(capture_response=False)
def list_tenants(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    next_token: Annotated[str | None, Query(min_length=1, max_length=4096)] = None,
) -> Response[TenantPage]:
    admin()
    return _model(200, tenant_service().list_tenants(limit, next_token))


@app.get(
    "/tenants/<name>",
    summary="Get a tenant: quotas, keys (never the keys themselves) and what it has in flight (admins only)",
    responses={200: {"description": "The tenant"}, **error_responses(403, 404, 422)},
)
@tracer.capture_method(capture_response=False)
def get_tenant(name: TenantNameParam) -> Response[Tenant]:
    admin()
    return _model(200, tenant_service().get(name))


@app.put(
    "/tenants/<name>",
    summary="Replace a tenant's quotas; disable or enable it with `enabled` (admins only)",
    responses={200: {"description": "The tenant as updated"}, **error_responses(*BODY_ERRORS, 403, 404, 409)},
)
@tracer.capture_method(capture_response=False)
def update_tenant(
    name: TenantNameParam, update: Annotated[TenantUpdate, Body(description="The quotas, and optionally enabled")]
) -> Response[Tenant]:
    admin()
    tenant = tenant_service().update(name, update)
    logger.info("tenant updated", tenant=name, enabled=tenant.enabled)
    return _model(200, tenant)


@app.delete(
    "/tenants/<name>",
    summary="Disable a tenant: its keys stop working, its records stay (admins only)",
    responses={200: {"description": "The tenant, disabled"}, **error_responses(403, 404, 409, 422)},
)
@tracer.capture_method(capture_response=False)
def disable_tenant(name: TenantNameParam) -> Response[Tenant]:
    admin()
    tenant = tenant_service().disable(name)
    logger.info("tenant disabled", tenant=name)
    return _model(200, tenant)


@app.post(
    "/tenants/<name>/keys",
    summary="Rotate a tenant's API key: a new key; the current ones work for `grace_seconds` more (admins only)",
    responses={
        201: {"description": "The tenant and its new API key (shown this once)"},
        **error_responses(*BODY_ERRORS, 403, 404, 409),
    },
)
@tracer.capture_method(capture_response=False)  # the response carries the new key
def rotate_key(
    name: TenantNameParam,
    rotation: Annotated[KeyRotation | None, Body(description="The grace period (default: a day)")] = None,
) -> Response[TenantWithKey]:
    admin()
    if app.current_event.body and not isinstance(app.current_event.json_body, dict):
        raise InvalidParameter("body", 'must be a JSON object, such as {"grace_seconds": 3600}, or empty')
    tenant = tenant_service().rotate_key(name, rotation or KeyRotation())
    logger.info("API key rotated", tenant=name, key_id=tenant.api_key_id)
    return _model(201, tenant, Location=f"/tenants/{name}")


@app.delete(
    "/tenants/<name>/keys/<key_id>",
    summary="Revoke one API key of a tenant now (admins only)",
    responses={204: {"description": "Revoked"}, **error_responses(403, 404, 409, 422)},
)
@tracer.capture_method(capture_response=False)
def revoke_key(name: TenantNameParam, key_id: KeyIdParam) -> Response[None]:
    admin()
    tenant_service().revoke_key(name, key_id)
    logger.info("API key revoked", tenant=name, key_id=key_id)
    return Response(status_code=204, body=None)


@app.get("/openapi.json", include_in_schema=False)
def openapi_document() -> Response[Any]:
    return _json(
        200,
        app.get_openapi_json_schema(title=TITLE, version=VERSION, security_schemes=SECURITY_SCHEMES, security=SECURITY),
    )


@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def handle_validation_error(exc: RequestValidationError) -> Response[Any]:
    errors = exc.errors()
    if any(e.get("loc", ("",))[0] == "response" for e in errors):
        logger.error("response failed its own schema", errors=errors)
        return _json(500, error_body("INTERNAL_ERROR", "Internal error; the request id is in the logs"))
    status, body = validation_error(errors)
    return _json(status, body)


@app.exception_handler(TaskRunnerError)  # type: ignore[untyped-decorator]
def handle_domain_error(exc: TaskRunnerError) -> Response[Any]:
    status, body = domain_error(exc)
    if status >= 500:
        logger.exception("domain error", code=exc.code)
    return _json(status, body)


@app.exception_handler(IdempotencyValidationError)  # type: ignore[untyped-decorator]
def handle_key_reuse(_: IdempotencyValidationError) -> Response[Any]:
    return _json(
        409,
        error_body("IDEMPOTENCY_KEY_REUSED", "This Idempotency-Key was already used with a different request body"),
    )


@app.exception_handler(IdempotencyAlreadyInProgressError)  # type: ignore[untyped-decorator]
def handle_key_in_progress(_: IdempotencyAlreadyInProgressError) -> Response[Any]:
    return _json(409, error_body("IDEMPOTENCY_KEY_IN_PROGRESS", "A request with this Idempotency-Key is in progress"))


@app.not_found
def handle_not_found(_: Exception) -> Response[Any]:
    path = app.current_event.path
    return _json(404, error_body("ROUTE_NOT_FOUND", f"No route for {app.current_event.http_method} {path}"))


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def handle_unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unhandled error")
    return _json(500, error_body("INTERNAL_ERROR", "Internal error; the request id is in the logs"))


def _has_idempotency_key(event: dict[str, Any]) -> bool:
    return any(k.lower() == "idempotency-key" for k in (event.get("headers") or {}))


def principal_of(event: dict[str, Any]) -> Principal | Refusal:
    """The caller as the HTTP API's authorizer names it: the Lambda authorizer's context (API keys; the local gateway
    hands the same), or with IAM auth the signed caller, mapped to its tenant."""
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    if isinstance(authorizer, dict) and "iam" in authorizer:
        iam = authorizer["iam"] if isinstance(authorizer["iam"], dict) else {}
        return tenant_service().principal_for_role(iam.get("userArn"))
    return principal_from_context(authorizer.get("lambda") if isinstance(authorizer, dict) else None)


def _refused(error: TaskRunnerError, **headers: str) -> dict[str, Any]:
    status, body = domain_error(error)
    return {
        "statusCode": status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON, **headers},
        "body": json.dumps(body),
    }


def _gatekeeper(event: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a request that may not reach a route (401 without a caller, 403 for a non-admin on an admin
    route), or None. It comes before routing, so before any validation: a request without a key learns nothing of
    what the body or the parameters should be."""
    app.context.clear()  # a request refused before routing never reached the resolver, which clears it
    path = str(event.get("rawPath") or "")
    if path in PUBLIC_PATHS:
        return None
    principal = principal_of(event)
    if isinstance(principal, Refusal):
        return _refused(Unauthenticated(principal.reason), **{"WWW-Authenticate": "Bearer"})
    if path.split("/")[1:2] == [ADMIN_RESOURCE] and not principal.admin:
        return _refused(Forbidden("administer tenants"))
    app.context["principal"] = principal
    return None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    refused = _gatekeeper(event)
    if refused is not None:
        return refused
    if _has_idempotency_key(event):
        from taskrunner.idempotency import register_lambda_context

        register_lambda_context(context)
    checked = checked_json_body(event)
    if isinstance(checked, BodyProblem):
        return {
            "statusCode": checked.status,
            "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": json.dumps(error_body(checked.code, checked.message)),
        }
    return app.resolve(checked, context)
