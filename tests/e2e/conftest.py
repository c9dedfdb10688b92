from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import LocalConfig
from taskrunner_local.stack import LocalStack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group("e2e"))  # one local stack, in one worker


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = LocalConfig(
        api_port=free_port(),
        aws_port=free_port(),
        stack_name="taskrunner-e2e",
        work_dir=tmp_path_factory.mktemp("local-stack"),
        stop_timeout_seconds=5.0,
        echo_function_logs=False,
    )
    with LocalStack(config) as running:
        yield running


@pytest.fixture(scope="session")
def api(stack: LocalStack) -> TaskRunnerClient:
    return TaskRunnerClient(stack.api_url)
