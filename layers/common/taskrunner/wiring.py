"""Builds the domain service from settings and real AWS clients, once per execution environment."""

from __future__ import annotations

from functools import cache

from taskrunner.adapters import (
    CloudWatchLogReader,
    DynamoScheduleStore,
    DynamoTaskStore,
    EcsCompute,
    EventBridgeScheduler,
    StepFunctionsOrchestrator,
)
from taskrunner.aws import client
from taskrunner.schedules import ScheduleService
from taskrunner.service import TaskService
from taskrunner.settings import get_settings


@cache
def task_service() -> TaskService:
    settings = get_settings()
    return TaskService(
        store=DynamoTaskStore(settings.tasks_table, client("dynamodb")),
        orchestrator=StepFunctionsOrchestrator(settings.state_machine_arn, client("stepfunctions")),
        compute=EcsCompute(settings.cluster, client("ecs")),
        logs=CloudWatchLogReader(settings.task_log_group, client("logs")),
        settings=settings,
    )


@cache
def schedule_service() -> ScheduleService:
    settings = get_settings()
    return ScheduleService(
        store=DynamoScheduleStore(settings.tasks_table, client("dynamodb")),
        scheduler=EventBridgeScheduler(
            settings.schedule_group,
            settings.scheduler_role_arn,
            settings.scheduled_submit_function_arn,
            settings.schedules_dead_letter_queue_arn,
            client("scheduler"),
        ),
        tasks=task_service(),
    )


def reset() -> None:
    """Forget the cached service, settings and clients (for tests that change the environment)."""
    from taskrunner.aws import reset_clients
    from taskrunner.settings import get_settings as settings_factory

    task_service.cache_clear()
    schedule_service.cache_clear()
    settings_factory.cache_clear()
    reset_clients()
