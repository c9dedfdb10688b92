"""The baseline for the cold-import benchmark: a minimal Powertools + pydantic + boto3 HTTP handler.

Minimal in the Powertools sense: the logger, tracer and metrics every Powertools function carries, the HTTP
resolver with validation, one pydantic model and boto3."""

from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from pydantic import BaseModel

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Baseline")
app = APIGatewayHttpResolver(enable_validation=True)


class Item(BaseModel):
    name: str


@app.post("/items")
def create(item: Item) -> dict[str, Any]:
    boto3.client  # noqa: B018 - imported and referenced, as a real handler would
    return item.model_dump()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
