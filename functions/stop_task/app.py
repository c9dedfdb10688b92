"""Timeout path of the state machine: mark the task TIMED_OUT and stop its ECS task explicitly."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.observability import logger, tracer
from taskrunner.wiring import TASKS, require, task_service
from taskrunner.workflow import StopTaskInput

require(TASKS)  # cold start: fail now, naming any missing environment variable


@logger.inject_lambda_context(correlation_id_path="task_id")
@tracer.capture_lambda_handler
@event_parser(model=StopTaskInput)
def lambda_handler(event: StopTaskInput, context: LambdaContext) -> dict[str, Any]:
    ecs_task_arn = task_service().stop_for_timeout(event.task_id)
    logger.info("timed-out task stopped", ecs_task_arn=ecs_task_arn)
    return {"task_id": event.task_id, "ecs_task_arn": ecs_task_arn}
