"""EventBridge Scheduler's target: one scheduled run, through the same submission path as POST /tasks."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.observability import logger, metrics, tracer
from taskrunner.schedules import ScheduledRunRequest
from taskrunner.wiring import SUBMISSION, TASKS, require, schedule_service

require(TASKS, SUBMISSION)  # cold start: fail now, naming any missing environment variable


@logger.inject_lambda_context(correlation_id_path="schedule_name")
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=ScheduledRunRequest)
def lambda_handler(event: ScheduledRunRequest, context: LambdaContext) -> dict[str, Any]:
    result = schedule_service().fire(event)
    logger.info("scheduled run", outcome=result.outcome, task_id=result.task_id, scheduled_time=result.scheduled_time)
    metrics.add_metric(name=f"ScheduledRuns{result.outcome.value.title()}", unit="Count", value=1)
    return result.model_dump(mode="json")
