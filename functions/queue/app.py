"""The state machine's WaitForSlot state: a queued task's workflow gives its task token and waits for a slot."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.observability import logger, tracer
from taskrunner.wiring import TASKS, require, task_service
from taskrunner.workflow import QueueInput

require(TASKS)  # cold start: fail now, naming any missing environment variable


@logger.inject_lambda_context(correlation_id_path="task_id")
@tracer.capture_lambda_handler
@event_parser(model=QueueInput)
def lambda_handler(event: QueueInput, context: LambdaContext) -> dict[str, Any]:
    task = task_service().wait_for_slot(event.task_id, event.token)
    logger.info("queued task waits for a slot", status=task.status, holds_slot=task.slot_held is not None)
    return {"task_id": task.task_id, "status": task.status.value}
