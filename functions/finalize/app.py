"""Finalize a task for the state machine: final status, copied ECS facts, one metering record."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.observability import logger, metrics, tracer
from taskrunner.wiring import TASKS, require, task_service
from taskrunner.workflow import FinalizeInput

require(TASKS)  # cold start: fail now, naming any missing environment variable


@logger.inject_lambda_context(correlation_id_path="task_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=FinalizeInput)
def lambda_handler(event: FinalizeInput, context: LambdaContext) -> dict[str, Any]:
    task = task_service().finalize(event.task_id, event.outcome, event.observation(), reason=event.reason())
    logger.info("task finalized", status=task.status, billed_seconds=task.metering and task.metering.billed_seconds)
    metrics.add_metric(name=f"Tasks{task.status.value.title().replace('_', '')}", unit="Count", value=1)
    return {"task_id": task.task_id, "status": task.status.value, "metered": task.metering is not None}
