"""The in-process Lambda runtime: every invocation runs the real handler from functions/.

Each function gets a small pool of execution environments: worker processes (taskrunner_local.lambda_worker)
that import the handler once, with the layer on the path, the template's environment variables (Globals
merged with the function's own, as deployed), and a Lambda context carrying the function's timeout. A
handler that raises returns Lambda's error shape; one that hangs past its timeout is killed; neither takes
the stack down.

Asynchronous invocations behave as Lambda's: the first attempt and up to two retries (the function's event invoke
config sets how many, and how old an event may get), then a record of the failure, in Lambda's destination record
format, to the function's on-failure destination; an event is dropped only when the function has none.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

WORKER_SCRIPT = Path(__file__).with_name("lambda_worker.py")
WORKER_START_TIMEOUT_SECONDS = 60
ASYNC_RETRY_DELAYS_SECONDS = (1.0, 2.0)  # Lambda retries an asynchronous invocation twice (after 1 and 2 minutes)
#: sends a destination record to a destination ARN (an SQS queue, an SNS topic, ...)
DestinationSender = Callable[[str, dict[str, Any]], None]


class AsyncJournal(Protocol):
    """Where accepted asynchronous invocations are kept until they are done, so that a stack that dies does not
    lose them: Lambda acknowledges an asynchronous invocation only once it is queued durably."""

    def accepted(self, request_id: str, function: str, event: Any, accepted_at: float) -> None: ...

    def finished(self, request_id: str) -> None: ...

    def pending(self) -> list[tuple[str, str, Any, float]]: ...


@dataclass
class FunctionSpec:
    logical_id: str
    name: str
    arn: str
    code_dir: Path
    handler: str
    layer_dirs: list[Path]
    environment: dict[str, str]
    timeout_seconds: int = 3
    memory_mb: int = 128
    #: asynchronous invocation, from the function's event invoke config (Lambda's defaults without one): retries
    #: after the first attempt, the age past which an event is not tried again, and where a failed event goes
    max_retry_attempts: int = 2
    max_event_age_seconds: int = 21_600
    on_failure_destination: str | None = None


@dataclass
class Invocation:
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def payload(self) -> bytes:
        return json.dumps(self.error if self.error else self.result, default=str).encode()


class WorkerDied(Exception):
    pass


class _Worker:
    def __init__(self, spec: FunctionSpec, env: dict[str, str], echo: Callable[[str], None]) -> None:
        self.spec = spec
        self.process = subprocess.Popen(
            # -I: the function sees its code, its layers and the interpreter's packages, not this package
            [sys.executable, "-I", str(WORKER_SCRIPT), str(spec.code_dir), spec.handler, *map(str, spec.layer_dirs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(spec.code_dir),
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True, name=f"{spec.logical_id}-answers").start()
        threading.Thread(target=self._echo_logs, args=(echo,), daemon=True, name=f"{spec.logical_id}-logs").start()

    def wait_ready(self) -> None:
        """Wait for the function's init; WorkerDied (and the process killed) when it does not get there."""
        try:
            ready = self._next_answer(WORKER_START_TIMEOUT_SECONDS)
        except TimeoutError:
            ready = None
        if not ready or not ready.get("ready"):
            self.kill()
            raise WorkerDied(f"{self.spec.logical_id}: the execution environment did not start")

    def _read_answers(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _echo_logs(self, echo: Callable[[str], None]) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            echo(line.rstrip("\n"))

    def _next_answer(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def invoke(self, event: Any, request_id: str) -> Invocation:
        timeout = self.spec.timeout_seconds
        deadline_ms = int((time.time() + timeout) * 1000)
        request = json.dumps({"event": event, "request_id": request_id, "deadline_ms": deadline_ms})
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
            answer = self._next_answer(timeout)
        except TimeoutError:
            self.kill()
            return Invocation(
                error={"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {timeout:.2f} seconds"}
            )
        except (BrokenPipeError, OSError):
            answer = None
        if answer is None:
            self.kill()
            return Invocation(
                error={
                    "errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {request_id} Error: Runtime exited",
                }
            )
        if answer["ok"]:
            return Invocation(result=answer["result"])
        return Invocation(error=answer["error"])

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class _Pool:
    spec: FunctionSpec
    env: dict[str, str]
    limit: int
    echo: Callable[[str], None]
    idle: list[_Worker] = field(default_factory=list)
    everyone: set[_Worker] = field(default_factory=set)
    size: int = 0
    condition: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False

    def acquire(self) -> _Worker:
        with self.condition:
            while not self.closed and not self.idle and self.size >= self.limit:
                self.condition.wait()
            if self.closed:
                raise WorkerDied(f"{self.spec.logical_id}: the runtime is shutting down")
            if self.idle:
                return self.idle.pop()
            self.size += 1
        worker: _Worker | None = None
        try:
            worker = _Worker(self.spec, self.env, self.echo)
            with self.condition:  # known from its start, so that close() kills it even while its init runs
                closed = self.closed
                if not closed:
                    self.everyone.add(worker)
            if closed:
                worker.kill()
                raise WorkerDied(f"{self.spec.logical_id}: the runtime is shutting down")
            worker.wait_ready()
        except BaseException:
            with self.condition:
                self.size -= 1
                if worker is not None:
                    self.everyone.discard(worker)
                self.condition.notify()
            raise
        return worker

    def release(self, worker: _Worker) -> None:
        with self.condition:
            if worker.alive:
                self.idle.append(worker)
            else:
                self.size -= 1
                self.everyone.discard(worker)
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            workers, self.idle, self.everyone = list(self.everyone), [], set()
            self.condition.notify_all()
        for worker in workers:
            worker.kill()


#: Function log levels shown on the console; TASKRUNNER_VERBOSE=1 shows every line the functions write.
SHOWN_LOG_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})


def is_worth_showing(line: str) -> bool:
    """The console shows what a person acts on: a function's warnings and errors, and anything it printed
    that is not a structured log line. Powertools' INFO and DEBUG lines stay in the function's own log."""
    if os.environ.get("TASKRUNNER_VERBOSE"):
        return True
    if not line.startswith('{"level":'):
        return True
    level = line[len('{"level":') :].split(",", 1)[0].strip().strip('"')
    return level in SHOWN_LOG_LEVELS


class LambdaRuntime:
    def __init__(
        self,
        functions: list[FunctionSpec],
        *,
        base_env: dict[str, str],
        concurrency: int = 6,
        echo_logs: bool = True,
        send_to_destination: DestinationSender | None = None,
        journal: AsyncJournal | None = None,
    ) -> None:
        self._pools: dict[str, _Pool] = {}
        self._send_to_destination = send_to_destination
        self._journal = journal
        self._names: dict[str, str] = {}
        self._async = ThreadPoolExecutor(max_workers=max(4, concurrency * 2), thread_name_prefix="lambda-async")
        self._closed = False
        for spec in functions:
            env = {
                **base_env,
                **spec.environment,
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(spec.timeout_seconds),
                "TASKRUNNER_FUNCTION_ARN": spec.arn,
                "PYTHONUNBUFFERED": "1",
            }
            echo = self._echo(spec.logical_id) if echo_logs else (lambda line: None)
            self._pools[spec.logical_id] = _Pool(spec, env, concurrency, echo)
            for alias in (spec.logical_id, spec.name, spec.arn):
                self._names[alias] = spec.logical_id

    @staticmethod
    def _echo(label: str) -> Callable[[str], None]:
        def echo(line: str) -> None:
            if is_worth_showing(line):
                print(f"[{label}] {line}", flush=True)

        return echo

    def knows(self, function: str) -> bool:
        return self._logical_id(function) is not None

    def _logical_id(self, function: str) -> str | None:
        name = function.split(":function:", 1)[-1].split(":", maxsplit=1)[0] if ":function:" in function else function
        return self._names.get(name)

    def warm(self) -> None:
        """Start one execution environment per function, in parallel, so first requests are warm."""

        def start(pool: _Pool) -> None:
            try:
                pool.release(pool.acquire())
            except WorkerDied as exc:
                print(f"[{pool.spec.logical_id}] {exc}", flush=True)

        threads = [threading.Thread(target=start, args=(pool,)) for pool in self._pools.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def invoke(self, function: str, event: Any, request_id: str | None = None) -> Invocation:
        logical_id = self._logical_id(function)
        if logical_id is None:
            return Invocation(
                error={"errorType": "ResourceNotFoundException", "errorMessage": f"Function not found: {function}"}
            )
        pool = self._pools[logical_id]
        try:
            worker = pool.acquire()
        except WorkerDied as exc:
            return Invocation(error={"errorType": "Runtime.InitError", "errorMessage": str(exc)})
        try:
            invocation = worker.invoke(event, request_id or str(uuid.uuid4()))
        finally:
            pool.release(worker)
        return invocation

    def invoke_async(
        self, function: str, event: Any, *, request_id: str | None = None, accepted_at: float | None = None
    ) -> None:
        """Queue an asynchronous invocation (and, with a journal, keep it there durably until it is done; a
        redelivered one keeps its request id and the time it was first accepted)."""
        logical_id = self._logical_id(function)
        spec = self._pools[logical_id].spec if logical_id is not None else None
        retries = ASYNC_RETRY_DELAYS_SECONDS[: spec.max_retry_attempts] if spec else ASYNC_RETRY_DELAYS_SECONDS
        request_id = request_id or str(uuid.uuid4())  # one request, however many attempts
        accepted_at = time.time() if accepted_at is None else accepted_at
        if self._journal is not None:
            self._journal.accepted(request_id, function, event, accepted_at)

        def run() -> None:
            attempts, condition, last = 0, "RetriesExhausted", Invocation()
            for delay in (0.0, *retries):
                if self._closed:
                    return  # still in the journal: the next start delivers it
                time.sleep(delay)
                if spec is not None and time.time() - accepted_at > spec.max_event_age_seconds:
                    condition = "EventAgeExceeded"
                    break
                last = self.invoke(function, event, request_id)
                attempts += 1
                if last.error is None:
                    self._finished(request_id)
                    return
            if self._closed:
                return
            record = failure_record(
                spec, event, request_id=request_id, condition=condition, attempts=attempts, last=last
            )
            self._on_failure(function, spec, record)
            self._finished(request_id)

        self._async.submit(run)

    def _finished(self, request_id: str) -> None:
        if self._journal is not None:
            try:
                self._journal.finished(request_id)
            except Exception as exc:  # delivered once more at the next start: handlers are idempotent
                print(f"[runtime] could not mark asynchronous invocation {request_id} done: {exc!r}", flush=True)

    def redeliver(self) -> int:
        """Queue again the asynchronous invocations a previous run accepted and did not finish (Lambda delivers an
        event at least once); returns how many."""
        pending = self._journal.pending() if self._journal is not None else []
        for request_id, function, event, accepted_at in pending:
            self.invoke_async(function, event, request_id=request_id, accepted_at=accepted_at)
        return len(pending)

    def _on_failure(self, function: str, spec: FunctionSpec | None, record: dict[str, Any]) -> None:
        """Lambda sends a failed asynchronous event to the function's on-failure destination, or discards it."""
        destination = spec.on_failure_destination if spec is not None else None
        if destination is None or self._send_to_destination is None:
            print(f"[{function}] asynchronous invocation failed after retries; event dropped", flush=True)
            return
        try:
            self._send_to_destination(destination, record)
        except Exception as exc:  # a destination that refuses the record must not take the runtime down
            print(f"[{function}] could not send the failed event to {destination}: {exc!r}; event dropped", flush=True)

    def invoke_payload(self, function: str, payload: bytes, invocation_type: str) -> tuple[bytes, str | None]:
        """The shape moto's Lambda API needs (see moto_patches.Hooks.invoke_lambda)."""
        event = json.loads(payload or b"{}")
        if invocation_type == "Event":
            self.invoke_async(function, event)
            return b"", None
        invocation = self.invoke(function, event)
        return invocation.payload, (invocation.error or {}).get("errorType")

    def close(self) -> None:
        self._closed = True
        self._async.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.values():
            pool.close()


def failure_record(
    spec: FunctionSpec | None, event: Any, *, request_id: str, condition: str, attempts: int, last: Invocation
) -> dict[str, Any]:
    """What Lambda sends to an on-failure destination: the invocation record of an asynchronous invocation whose
    attempts all failed (`condition` RetriesExhausted) or that grew too old to try again (EventAgeExceeded)."""
    arn = spec.arn if spec is not None else ""
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": request_id,
            "functionArn": arn if arn.endswith(":$LATEST") else f"{arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": last.error,
    }
