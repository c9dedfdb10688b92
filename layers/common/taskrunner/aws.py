"""Lazily created boto3 clients. Nothing is created at import time, so a local AWS endpoint (moto) can start
first; boto3 itself honours AWS_ENDPOINT_URL for every client."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@cache
def client(service: str) -> Any:
    return boto3.session.Session().client(service, config=_CONFIG)  # type: ignore[call-overload]


def reset_clients() -> None:
    """Forget every client (tests that start a new AWS endpoint call this)."""
    client.cache_clear()
