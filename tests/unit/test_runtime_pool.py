"""The local Lambda runtime's pool of execution environments at shutdown: no worker process outlives it, not even
one that was starting when the runtime closed (an asynchronous invocation the agent's last events triggered)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from taskrunner_local import runtime
from taskrunner_local.runtime import FunctionSpec, WorkerDied
from tests.support.local_tasks import wait_until

ECHO = "def handler(event, context):\n    return event\n"


def pool(tmp_path: Path, source: str = ECHO, limit: int = 2) -> runtime._Pool:
    """A pool of the function whose app.py is `source`."""
    (tmp_path / "app.py").write_text(source)
    spec = FunctionSpec(
        logical_id="EchoFunction",
        name="echo",
        arn="arn:aws:lambda:us-east-1:123456789012:function:echo",
        code_dir=tmp_path,
        handler="app.handler",
        layer_dirs=[],
        environment={},
    )
    return runtime._Pool(spec, env={}, limit=limit, echo=lambda line: None)


def test_a_closed_pool_starts_no_worker(tmp_path: Path) -> None:
    # Given
    closed = pool(tmp_path)
    closed.close()
    # When / Then
    with pytest.raises(WorkerDied, match="shutting down"):
        closed.acquire()
    assert closed.everyone == set()


def test_a_worker_that_was_starting_when_the_pool_closed_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pool that closes while its worker starts
    closing = pool(tmp_path)
    started: list[runtime._Worker] = []
    real_worker = runtime._Worker

    def worker_while_closing(*args: object) -> runtime._Worker:
        worker = real_worker(*args)  # type: ignore[arg-type]
        started.append(worker)
        closing.close()
        return worker

    monkeypatch.setattr(runtime, "_Worker", worker_while_closing)
    # When
    with pytest.raises(WorkerDied, match="shutting down"):
        closing.acquire()
    # Then its process is gone
    [worker] = started
    assert worker.process.poll() is not None


def test_close_kills_a_worker_whose_init_is_still_running(tmp_path: Path) -> None:
    # Given a function whose init takes long, and a caller waiting for its first execution environment
    slow = pool(tmp_path, "import time\ntime.sleep(30)\n\n" + ECHO, limit=1)
    failures: list[BaseException] = []

    def acquire() -> None:
        try:
            slow.acquire()
        except BaseException as error:  # the thread reports what the caller would see
            failures.append(error)

    caller = threading.Thread(target=acquire)
    caller.start()
    assert wait_until(lambda: len(slow.everyone) == 1, timeout=10)
    [worker] = list(slow.everyone)
    # When the runtime closes during that init
    started = time.monotonic()
    slow.close()
    caller.join(timeout=10)
    # Then the worker is killed at once, and the caller hears why
    assert worker.process.poll() is not None
    assert time.monotonic() - started < 5
    assert [type(error) for error in failures] == [WorkerDied]
