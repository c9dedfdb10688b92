from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient, authenticated_session
from taskrunner_local.config import AGENT_MODES, LocalConfig
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from taskrunner_local.stack import LocalStack
from tests.support.engine import require

#: the agent mode of the session's stack: container mode, always explicitly (never `auto`, so that a machine
#: without an engine cannot fall back to process mode unnoticed); a developer may set `process`
E2E_AGENT_MODE_VARIABLE = "TASKRUNNER_E2E_AGENT_MODE"


def e2e_agent_mode() -> str:
    mode = os.environ.get(E2E_AGENT_MODE_VARIABLE) or "container"
    if mode not in AGENT_MODES or mode == "auto":
        raise pytest.UsageError(f"{E2E_AGENT_MODE_VARIABLE}={mode!r}: container (the default) or process")
    return mode


#: modules that run local stacks of their own in this process, after which the session's stack no longer works (a
#: stack's stop resets moto state the process shares: every request of the session's stack then fails), so they run
#: after every other e2e test
RUN_LAST = ("test_template_update.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group("e2e"))  # one local stack, in one worker
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: the order stays otherwise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The session's local stack, in this process, in container mode (`TASKRUNNER_E2E_AGENT_MODE=process` for
    process mode). Without an engine or the offline images it skips on a developer machine and fails in CI."""
    mode = e2e_agent_mode()
    if mode == "container":
        hint = f"run `make engine images`, or set {E2E_AGENT_MODE_VARIABLE}=process"
        engine = Engine.detect()
        if engine is None:
            require(f"the e2e stack runs in container mode and no container engine works ({Engine.why_not()}): {hint}")
        missing = [image for image in (PYTHON_IMAGE, BUSYBOX_IMAGE) if not engine.image_exists(image)]
        if missing:
            require(f"the e2e stack runs in container mode and images {', '.join(missing)} are not built: {hint}")
    config = LocalConfig(
        api_port=free_port(),
        aws_port=free_port(),
        registry_port=free_port(),
        stack_name="taskrunner-e2e",
        ephemeral=True,
        stop_timeout_seconds=5.0,
        echo_function_logs=False,
        agent_mode=mode,
    )
    with LocalStack(config) as running:
        assert running.choice is not None and running.choice.mode == mode, running.choice
        yield running


@pytest.fixture(scope="session")
def api(stack: LocalStack) -> TaskRunnerClient:
    """The API client, as the stack's admin."""
    return TaskRunnerClient(stack.api_url, api_key=stack.admin_key)


@pytest.fixture(scope="session")
def http(stack: LocalStack) -> requests.Session:
    """Raw HTTP to the stack's API as its admin: every request sends `Authorization: Bearer <admin key>`."""
    return authenticated_session(stack.admin_key)
