"""Builds the domain service from settings and real AWS clients, once per execution environment.

Every handler module calls `require` at import with the parts of the service it uses, so a function deployed
without a variable it needs fails its cold start with an error naming the variable (see taskrunner.settings).
A part a function does not use (and whose variables it is not given) is wired as a stand-in that raises the
same error if it is ever used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import cache
from typing import Any

from taskrunner.adapters import (
    CloudWatchLogReader,
    DynamoScheduleStore,
    DynamoTaskStore,
    EcsCompute,
    EventBridgeScheduler,
    StepFunctionsExecutions,
    StepFunctionsOrchestrator,
    TaskTokens,
)
from taskrunner.aws import client
from taskrunner.models import LogEvent
from taskrunner.ports import LogReader, Orchestrator
from taskrunner.reconcile import ReconcilePolicy, Reconciler
from taskrunner.schedules import Schedule, Scheduler, ScheduleService
from taskrunner.service import TaskService
from taskrunner.settings import MissingSettings, Settings, get_settings
from taskrunner.task_definitions import DynamoTaskDefinitionCache
from taskrunner.tenant_store import DynamoTenantStore
from taskrunner.tenants import TenantService

# ------------------------------------------------------------------ what each part of the service needs

#: task records, ECS tasks and their task definitions: every function (task definition families are named after
#: the roles and the log group their revisions embed, see taskrunner.task_definitions)
TASKS = (
    "TASKS_TABLE_NAME",
    "ECS_CLUSTER",
    "TASK_FAMILY_PREFIX",
    "TASK_ROLE_ARN",
    "TASK_EXECUTION_ROLE_ARN",
    "TASK_LOG_GROUP",
)
#: starting (and stopping) workflow executions: the submitting functions, ApiFunction and ScheduledSubmitFunction, and
#: the reconciler (it starts the workflow of a queued task again when its execution ended). In template.yaml the state
#: machine references the other functions, so they cannot be given its ARN.
SUBMISSION = ("STATE_MACHINE_ARN",)
#: reading a task's container logs (GET /tasks/{id}/logs)
LOGS = ("TASK_LOG_GROUP",)
#: `Idempotency-Key` on POST /tasks
IDEMPOTENCY = ("IDEMPOTENCY_TABLE_NAME",)
#: creating, updating and deleting EventBridge Scheduler schedules (the schedules API)
SCHEDULER = ("SCHEDULE_GROUP_NAME", "SCHEDULER_ROLE_ARN", "SCHEDULED_SUBMIT_FUNCTION_ARN", "SCHEDULES_DLQ_ARN")
#: tenants, their API keys and the IAM principal → tenant items (the tenant administration, the authorizer)
TENANTS = ("TASKS_TABLE_NAME",)


def require(*parts: Iterable[str]) -> Settings:
    """The settings, after checking that the environment has every variable of `parts` (and a region);
    otherwise `MissingSettings`, naming all the missing variables at once. Handler modules call it at import,
    which is the function's cold start: `require(TASKS, SUBMISSION)`."""
    return get_settings().require([variable for part in parts for variable in part])


# ------------------------------------------------------------------ stand-ins for parts a function is not given


class _NoOrchestrator:
    """The orchestrator of a function without STATE_MACHINE_ARN: it neither starts nor stops executions, but it may
    resume one that waits for a task token (the fair queue's dispatch), which needs no ARN."""

    def __init__(self, settings: Settings) -> None:
        self.who = settings.function_name
        self.tokens = TaskTokens(client("stepfunctions"))

    def resume(self, token: str, output: Any) -> bool:
        return self.tokens.resume(token, output)

    def start(self, name: str, execution_input: dict[str, Any]) -> str:
        raise MissingSettings(SUBMISSION, self.who)

    def stop(self, execution_arn: str, cause: str) -> None:
        raise MissingSettings(SUBMISSION, self.who)


class _NoLogReader:
    """The log reader of a function without TASK_LOG_GROUP (it does not serve task logs)."""

    def __init__(self, settings: Settings) -> None:
        self.who = settings.function_name

    def read(self, stream: str, limit: int, next_token: str | None) -> tuple[list[LogEvent], str | None]:
        raise MissingSettings(LOGS, self.who)


class _NoScheduler:
    """The scheduler of a function without the EventBridge Scheduler variables (it does not manage schedules)."""

    def __init__(self, settings: Settings) -> None:
        self.who = settings.function_name

    def put(self, schedule: Schedule) -> None:
        raise MissingSettings(SCHEDULER, self.who)

    def delete(self, tenant: str, name: str) -> None:
        raise MissingSettings(SCHEDULER, self.who)


def _orchestrator(settings: Settings) -> Orchestrator:
    if settings.missing(SUBMISSION):
        return _NoOrchestrator(settings)
    return StepFunctionsOrchestrator(settings.state_machine_arn, client("stepfunctions"))


def _log_reader(settings: Settings) -> LogReader:
    if settings.missing(LOGS):
        return _NoLogReader(settings)
    return CloudWatchLogReader(settings.task_log_group, client("logs"))


def _scheduler(settings: Settings) -> Scheduler:
    if settings.missing(SCHEDULER):
        return _NoScheduler(settings)
    return EventBridgeScheduler(
        settings.schedule_group,
        settings.scheduler_role_arn,
        settings.scheduled_submit_function_arn,
        settings.schedules_dead_letter_queue_arn,
        client("scheduler"),
    )


# ------------------------------------------------------------------ the services


@cache
def task_service() -> TaskService:
    settings = require(TASKS)
    return TaskService(
        store=DynamoTaskStore(settings.tasks_table, client("dynamodb")),
        orchestrator=_orchestrator(settings),
        compute=EcsCompute(settings.cluster, client("ecs")),
        logs=_log_reader(settings),
        settings=settings,
        task_definitions=DynamoTaskDefinitionCache(settings.tasks_table, client("dynamodb")),
    )


@cache
def schedule_service() -> ScheduleService:
    settings = require(TASKS)
    return ScheduleService(
        store=DynamoScheduleStore(settings.tasks_table, client("dynamodb")),
        scheduler=_scheduler(settings),
        tasks=task_service(),
    )


@cache
def tenant_service() -> TenantService:
    """The tenant administration and authentication. The authorizer function builds its own the same way: this module
    imports every adapter of the task service, which the authorizer's cold start should not pay for."""
    settings = require(TENANTS)
    return TenantService.from_settings(settings, DynamoTenantStore(settings.tasks_table, client("dynamodb")))


@cache
def reconciler(*, grace_seconds: int | None = None, launch_grace_seconds: int | None = None) -> Reconciler:
    """The reconciler: the task service plus executions read (and stopped) by their ARN, which the tasks record,
    so it needs no STATE_MACHINE_ARN. The grace periods, when given, replace the settings' own."""
    settings = require(TASKS)
    policy = ReconcilePolicy.from_settings(settings)
    if grace_seconds is not None:
        policy = dataclasses.replace(policy, grace_seconds=grace_seconds)
    if launch_grace_seconds is not None:
        policy = dataclasses.replace(policy, launch_grace_seconds=launch_grace_seconds)
    return Reconciler(task_service(), StepFunctionsExecutions(client("stepfunctions")), policy)


def reset() -> None:
    """Forget the cached service, settings and clients (for tests that change the environment)."""
    from taskrunner.aws import reset_clients
    from taskrunner.settings import get_settings as settings_factory

    task_service.cache_clear()
    schedule_service.cache_clear()
    tenant_service.cache_clear()
    reconciler.cache_clear()
    settings_factory.cache_clear()
    reset_clients()
