"""ECS "Task State Change" events: live RUNNING status, and the safety net that finalizes stopped tasks."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.models import CONTAINER_NAME
from taskrunner.observability import logger, tracer
from taskrunner.observation import TaskObservation
from taskrunner.service import ECS_GROUP_PREFIX
from taskrunner.wiring import TASKS, require, task_service

require(TASKS)  # cold start: fail now, naming any missing environment variable


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    observation = TaskObservation.from_description(event.detail, CONTAINER_NAME)
    logger.set_correlation_id(observation.task_id(ECS_GROUP_PREFIX))
    task = task_service().on_ecs_task_state_change(observation)
    if task is None:
        logger.info("event is not about a task of ours", ecs_task_arn=observation.ecs_task_arn)
        return {"handled": False}
    logger.info("ECS task state change", last_status=observation.last_status, status=task.status)
    return {"handled": True, "task_id": task.task_id, "status": task.status.value}
