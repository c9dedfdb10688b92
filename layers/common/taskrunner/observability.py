"""The one place that creates Powertools' logger, tracer and metrics."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="taskrunner")
tracer = Tracer(service="taskrunner")
metrics = Metrics(namespace="TaskRunner", service="taskrunner")
