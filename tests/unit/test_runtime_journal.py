"""Asynchronous invocations are kept in the state store until they are done: a stack that stops with events still
queued delivers them at its next start, with their request id and their age."""

from __future__ import annotations

import json
import time
from pathlib import Path

from taskrunner_local.persistence.lambda_async import DurableAsyncQueue
from taskrunner_local.persistence.store import StateStore
from taskrunner_local.runtime import FunctionSpec, LambdaRuntime
from tests.support.local_tasks import wait_until

RECORDER = """
import json, os, pathlib
def handler(event, context):
    with open(os.environ["SEEN"], "a") as seen:
        seen.write(json.dumps({"event": event, "request_id": context.aws_request_id}) + "\\n")
    if event.get("fail"):
        raise RuntimeError("failing on purpose")
    return event
"""


def runtime_on(tmp_path: Path, store: StateStore, *, retries: int = 0, max_age: int = 21_600) -> LambdaRuntime:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "app.py").write_text(RECORDER)
    spec = FunctionSpec(
        logical_id="RecorderFunction",
        name="recorder",
        arn="arn:aws:lambda:us-east-1:123456789012:function:recorder",
        code_dir=code,
        handler="app.handler",
        layer_dirs=[],
        environment={"SEEN": str(tmp_path / "seen.jsonl")},
        max_retry_attempts=retries,
        max_event_age_seconds=max_age,
    )
    return LambdaRuntime([spec], base_env={}, echo_logs=False, journal=DurableAsyncQueue(store))


def seen(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "seen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_given_an_event_handled_then_the_journal_forgets_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    runtime = runtime_on(tmp_path, store)
    try:
        runtime.invoke_async("recorder", {"n": 1})
        assert wait_until(lambda: len(seen(tmp_path)) == 1 and not DurableAsyncQueue(store).pending(), timeout=30)
    finally:
        runtime.close()
        store.close()


def test_given_events_queued_when_the_stack_stopped_then_the_next_start_delivers_them_once(tmp_path: Path) -> None:
    # Given an event accepted by a runtime that closed before it ran (a stack that stopped)
    store = StateStore(tmp_path / "state")
    DurableAsyncQueue(store).accepted("req-1", "recorder", {"n": 1}, time.time())
    store.close()
    # When a new stack starts on the same state
    store = StateStore(tmp_path / "state")
    runtime = runtime_on(tmp_path, store)
    try:
        assert runtime.redeliver() == 1
        # Then the event is delivered, with its own request id, and forgotten once done
        assert wait_until(lambda: not DurableAsyncQueue(store).pending(), timeout=30)
        assert [(s["event"], s["request_id"]) for s in seen(tmp_path)] == [({"n": 1}, "req-1")]
    finally:
        runtime.close()
        store.close()


def test_given_an_event_older_than_its_maximum_age_then_it_is_not_run_again(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    DurableAsyncQueue(store).accepted("old", "recorder", {"n": 1}, time.time() - 120)
    runtime = runtime_on(tmp_path, store, max_age=60)
    try:
        runtime.redeliver()
        assert wait_until(lambda: not DurableAsyncQueue(store).pending(), timeout=30)
        assert seen(tmp_path) == []  # dropped as EventAgeExceeded (no destination here)
    finally:
        runtime.close()
        store.close()
