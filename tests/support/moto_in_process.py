"""moto in the test's own process (`mock_aws`), and moto patches of the local stack set for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from moto import mock_aws

from taskrunner_local.moto_patches import patch_named

REGION = "us-east-1"


@contextmanager
def in_process_aws(monkeypatch: pytest.MonkeyPatch, config: Any = None) -> Iterator[None]:
    """moto's backends answering boto3 in this process (`config`: mock_aws's), with a region and test credentials in
    the environment and no endpoint or profile that would send boto3 elsewhere."""
    for key, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws(config=config):
        yield


@contextmanager
def patch_state(name: str, applied: bool) -> Iterator[None]:
    """The moto patch `name` applied (or reverted) inside the block, as it was after it."""
    patch = patch_named(name)
    was_applied = patch.applied
    patch.apply() if applied else patch.revert()
    try:
        yield
    finally:
        patch.apply() if was_applied else patch.revert()
