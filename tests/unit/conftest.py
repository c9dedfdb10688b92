"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto_in_process import in_process_aws


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto answering boto3 in this process, for the length of the test."""
    with in_process_aws(monkeypatch):
        yield
