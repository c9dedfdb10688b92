"""HTTP API of the task runner (DESIGN §4): Powertools resolver, pydantic validation, OpenAPI."""
# No `from __future__ import annotations` here: Powertools reads the route signatures (through the tracer's
# wrappers) to build validation and OpenAPI, and string annotations would resolve in the wrong module.

import json
from datetime import UTC, date, datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import OpenAPI
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel
from taskrunner.errors import InvalidParameter, TaskRunnerError
from taskrunner.http_errors import (
    BODY_ERRORS,
    domain_error,
    error_body,
    error_responses,
    validation_error,
    with_error_shape_everywhere,
)
from taskrunner.models import DEFAULT_TENANT, LogPage, Task, TaskPage, TaskSpec, TaskStatus, Usage
from taskrunner.observability import logger, metrics, tracer
from taskrunner.request_body import BodyProblem, checked_json_body
from taskrunner.schedules import Schedule, SchedulePage, ScheduleSpec
from taskrunner.service import default_usage_range
from taskrunner.wiring import IDEMPOTENCY, LOGS, SCHEDULER, SUBMISSION, TASKS, require, schedule_service, task_service

require(TASKS, SUBMISSION, LOGS, IDEMPOTENCY, SCHEDULER)  # cold start: fail now, naming any missing variable

# Task ids are opaque to clients: any path segment is looked up, and one that names no task is a 404.
TaskId = Annotated[str, Path(min_length=1)]
ScheduleNameParam = Annotated[str, Path(min_length=1, max_length=56, pattern=r"^[0-9A-Za-z_.-]+$")]


class _Resolver(APIGatewayHttpResolver):
    """Powertools' resolver, with an OpenAPI document that declares the errors as this API answers them."""

    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> OpenAPI:
        document = super().get_openapi_schema(*args, **kwargs).model_dump(by_alias=True, exclude_none=True)
        return OpenAPI.model_validate(with_error_shape_everywhere(document))


app = _Resolver(enable_validation=True)
app.enable_swagger(
    path="/docs",
    title="Task runner API",
    version="1.0.0",
    description="Submit container tasks, follow them, read their logs and their per-second metering.",
)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


def _model(status: int, model: BaseModel, **headers: str) -> Response[Any]:
    return _json(status, model, headers or None)


def current_tenant() -> str:
    """The caller's tenant. Every caller is `default` until authentication maps principals to tenants."""
    return DEFAULT_TENANT


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
    summary="Metered usage per day for the caller's tenant",
    responses={200: {"description": "Totals and one row per day"}, **error_responses(422)},
)
@tracer.capture_method(capture_response=False)
def usage(
    from_: Annotated[
        date | None, Query(alias="from", description="First day, YYYY-MM-DD (default: 1st of month)")
    ] = None,
    to: Annotated[date | None, Query(description="Last day, YYYY-MM-DD (default: today, UTC)")] = None,
) -> Response[Usage]:
    default_from, default_to = default_usage_range(datetime.now(UTC).date())
    return _model(200, task_service().usage(current_tenant(), from_ or default_from, to or default_to))


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


@app.get("/openapi.json", include_in_schema=False)
def openapi_document() -> Response[Any]:
    return _json(200, app.get_openapi_json_schema(title="Task runner API", version="1.0.0"))


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


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
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
