"""The reconciler, every five minutes: settles tasks whose workflow and ECS events were lost (taskrunner.reconcile)."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field
from taskrunner.observability import logger, metrics, tracer
from taskrunner.wiring import SUBMISSION, TASKS, reconciler, require

require(TASKS, SUBMISSION)  # cold start: fail now, naming any missing environment variable

#: stop taking new tasks when less than this is left of the invocation's time
RESERVE_MILLIS = 15_000


class Overrides(BaseModel):
    """Grace periods an invocation may shorten: the local stack runs the reconciler with both at 0 right after a
    restart, when it knows that nothing is launching and no ECS event is on its way."""

    model_config = ConfigDict(extra="ignore")

    grace_seconds: Annotated[int, Field(ge=0)] | None = None
    launch_grace_seconds: Annotated[int, Field(ge=0)] | None = None


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(scheduled_time=(event or {}).get("scheduled_time"))
    overrides = Overrides.model_validate(event or {}).model_dump(exclude_none=True)
    report = reconciler(**overrides).run(out_of_time=lambda: context.get_remaining_time_in_millis() < RESERVE_MILLIS)
    for action, count in report.counts.items():
        metrics.add_metric(name=f"Reconcile{action.title()}", unit=MetricUnit.Count, value=count)
    return report.as_dict()
