"""The reconciler, every five minutes: settles tasks whose workflow and ECS events were lost (taskrunner.reconcile)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.observability import logger, metrics, tracer
from taskrunner.wiring import TASKS, reconciler, require

require(TASKS)  # cold start: fail now, naming any missing environment variable

#: stop taking new tasks when less than this is left of the invocation's time
RESERVE_MILLIS = 15_000


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(scheduled_time=(event or {}).get("scheduled_time"))
    report = reconciler().run(out_of_time=lambda: context.get_remaining_time_in_millis() < RESERVE_MILLIS)
    for action, count in report.counts.items():
        metrics.add_metric(name=f"Reconcile{action.title()}", unit=MetricUnit.Count, value=count)
    return report.as_dict()
