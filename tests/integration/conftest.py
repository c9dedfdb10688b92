from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.support.lambda_context import LambdaContext
from tests.support.stack import REGION, ROOT, Stack

EVENTS = ROOT / "events"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        created = Stack().create()
        for key, value in created.environment().items():
            monkeypatch.setenv(key, value)
        _reset_caches()
        yield created
    _reset_caches()


def _reset_caches() -> None:
    from taskrunner import idempotency, wiring

    wiring.reset()
    idempotency.idempotent_submit.cache_clear()
    idempotency.idempotency_config.cache_clear()


def load_event(relative: str, **replacements: str) -> dict[str, Any]:
    text = (EVENTS / relative).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return json.loads(text)


def invoke(module: Any, event: dict[str, Any]) -> Any:
    return module.lambda_handler(event, LambdaContext(function_name=module.__name__))


@pytest.fixture
def ddb() -> Any:
    return boto3.client("dynamodb", region_name=REGION)


def metering_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    items = ddb.scan(TableName=table)["Items"]  # a test-only census of the table; no request path scans
    return [i for i in items if i["pk"]["S"].startswith("METER#")]


def fixture_path(relative: str) -> Path:
    return EVENTS / relative
