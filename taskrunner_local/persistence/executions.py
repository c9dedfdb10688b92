"""Step Functions executions that survive a restart of the local stack.

moto's Step Functions interpreter keeps each execution as a live object (`moto.stepfunctions.parser.backend.
execution.Execution`) in its state machine's `executions` list, with a worker thread and locks that cannot be
pickled and cannot be resumed by another process. So executions are left out of the backend snapshots and this
part keeps them itself, one small JSON record per execution in its own table (`sfn_execution`):

- written through before the worker thread starts (so StartExecution's answer, and the API's 202 that rests on
  it, follows a durable record), at every terminal transition (with the history, once, when the execution ends),
  and at StopExecution (which waits briefly for the worker to end the run, so its answer is durable too);
- the store answers ListExecutions (indexed by state machine, newest first, keyset paging), and DescribeExecution,
  GetExecutionHistory, DescribeStateMachineForExecution and StopExecution for every execution that is no longer
  in moto's memory: an execution is evicted from moto some seconds after its final record is on disk, which keeps
  memory bounded however many executions ran (the history of a running execution stays in memory only: it is
  written once, at the end, rather than at every state);
- `restore()` settles the executions that were RUNNING when the stack died, which nothing can resume, as ABORTED
  with error `LocalStackStopped`, and `interrupted()` names them so the stack can settle their tasks.

A name stays taken after a restart (StartExecution raises ExecutionAlreadyExists for any recorded ARN): the task
runner names each execution after its task and relies on that.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from moto.core.utils import iso_8601_datetime_with_milliseconds
from moto.stepfunctions.exceptions import (
    ExecutionAlreadyExists,
    ExecutionDoesNotExist,
    InvalidToken,
    ResourceNotFound,
)
from moto.stepfunctions.parser.backend.execution import (
    BaseExecutionWorkerCommunication,
    Execution,
    SyncExecution,
)
from moto.stepfunctions.parser.models import StepFunctionsParserBackend, stepfunctions_parser_backends
from moto.stepfunctions.parser.utils import TMP_THREADS

from taskrunner_local.moto_patches import _replace
from taskrunner_local.persistence.store import StateStore

logger = logging.getLogger(__name__)

#: seconds an ended execution stays in moto's memory after its final record is on disk (map-run queries and the
#: worker's last steps use the live object; everything else is answered from the store)
EVICT_AFTER_SECONDS = 10.0
#: at most one sweep for evictable executions a second
SWEEP_EVERY_SECONDS = 1.0
#: how long StopExecution waits for the worker thread to end the run before recording ABORTED itself
STOP_WAIT_SECONDS = 5.0
#: ListExecutions' page size when the caller gives none (AWS's default)
DEFAULT_PAGE_SIZE = 100

RUNNING = "RUNNING"
ABORTED = "ABORTED"
#: the error and cause of an execution that was running when the local stack stopped
STOPPED_ERROR = "LocalStackStopped"
STOPPED_CAUSE = (
    "The local stack stopped while this execution ran; the execution cannot be resumed, so it was aborted when "
    "the stack started again."
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sfn_execution (
    arn TEXT PRIMARY KEY,
    state_machine_arn TEXT NOT NULL,
    status TEXT NOT NULL,
    start_date TEXT NOT NULL,
    record TEXT NOT NULL,
    history TEXT
);
CREATE INDEX IF NOT EXISTS sfn_execution_newest
    ON sfn_execution (state_machine_arn, start_date DESC, arn DESC);
CREATE INDEX IF NOT EXISTS sfn_execution_newest_by_status
    ON sfn_execution (state_machine_arn, status, start_date DESC, arn DESC);
CREATE INDEX IF NOT EXISTS sfn_execution_running ON sfn_execution (arn) WHERE status = 'RUNNING'
"""
# `record` is the execution as DescribeExecution answers it (JSON); `history` its events as GetExecutionHistory
# answers them (JSON), written once the execution has ended. The other columns are copied from the record, in the
# same statement, for the indexes.


def _iso(moment: datetime) -> str:
    """A timestamp as text that sorts as time (UTC, microseconds): the store's start dates are compared as text."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class StoredExecution:
    """An execution as the store keeps it. moto's Step Functions responses read these attributes of an execution
    (and its backend calls `to_history_output()`), so a stored execution answers wherever a live one would."""

    execution_arn: str
    state_machine_arn: str
    name: str
    status: str
    start_date: datetime
    stop_date: datetime | None
    execution_input: str
    #: as DescribeExecution shows it: set only when the execution succeeded
    output: str | None
    error: str | None
    cause: str | None
    role_arn: str
    #: GetExecutionHistory's events, once the execution has ended (None while it runs)
    history: list[dict[str, Any]] | None = field(default=None, compare=False)

    @property
    def output_details(self) -> dict[str, bool]:
        return {"included": True}

    @property
    def ended(self) -> bool:
        return self.status != RUNNING

    def to_history_output(self) -> dict[str, Any]:
        return {"events": self.history if self.history is not None else [self._started_event()]}

    @classmethod
    def of(cls, execution: Any, *, with_history: bool) -> StoredExecution:
        """The record of one of moto's live executions, as it stands now (RUNNING before its worker starts)."""
        status = execution.exec_status.value if execution.exec_status is not None else RUNNING
        output = None
        if status == "SUCCEEDED" and execution.output is not None:
            output = execution.output if isinstance(execution.output, str) else json.dumps(execution.output)
        history = list(execution.to_history_output()["events"]) if with_history else None
        return cls(
            execution_arn=execution.exec_arn,
            state_machine_arn=execution.state_machine_arn,
            name=execution.name,
            status=status,
            start_date=execution.start_date,
            stop_date=execution.stop_date,
            execution_input=execution.execution_input,
            output=output,
            error=execution.error,
            cause=execution.cause,
            role_arn=execution.role_arn,
            history=history,
        )

    def aborted(self, at: datetime, *, error: str | None, cause: str | None) -> StoredExecution:
        """This execution ended as ABORTED at `at`, with a history that says so (started, then aborted: the steps
        in between were in the memory of the process that ran it)."""
        ended = replace(self, status=ABORTED, stop_date=at, output=None, error=error, cause=cause)
        details = {key: value for key, value in (("error", error), ("cause", cause)) if value is not None}
        aborted_event = {
            "timestamp": iso_8601_datetime_with_milliseconds(at),
            "type": "ExecutionAborted",
            "id": 2,
            "previousEventId": 0,
            "executionAbortedEventDetails": details,
        }
        return replace(ended, history=[self._started_event(), aborted_event])

    def _started_event(self) -> dict[str, Any]:
        try:
            execution_input = json.dumps(json.loads(self.execution_input))
        except ValueError:
            execution_input = self.execution_input
        return {
            "timestamp": iso_8601_datetime_with_milliseconds(self.start_date),
            "type": "ExecutionStarted",
            "id": 1,
            "previousEventId": 0,
            "executionStartedEventDetails": {
                "input": execution_input,
                "inputDetails": {"truncated": False},
                "roleArn": self.role_arn,
            },
        }

    # ------------------------------------------------------------------ JSON

    def record_json(self) -> str:
        return json.dumps(
            {
                "executionArn": self.execution_arn,
                "stateMachineArn": self.state_machine_arn,
                "name": self.name,
                "status": self.status,
                "startDate": _iso(self.start_date),
                "stopDate": _iso(self.stop_date) if self.stop_date is not None else None,
                "input": self.execution_input,
                "output": self.output,
                "error": self.error,
                "cause": self.cause,
                "roleArn": self.role_arn,
            },
            separators=(",", ":"),
        )

    def history_json(self) -> str | None:
        # default=str: an event detail moto left as an object (a datetime) is kept as text rather than lost
        return None if self.history is None else json.dumps(self.history, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, record: str, history: str | None = None) -> StoredExecution:
        fields = json.loads(record)
        return cls(
            execution_arn=fields["executionArn"],
            state_machine_arn=fields["stateMachineArn"],
            name=fields["name"],
            status=fields["status"],
            start_date=datetime.fromisoformat(fields["startDate"]),
            stop_date=datetime.fromisoformat(fields["stopDate"]) if fields["stopDate"] else None,
            execution_input=fields["input"],
            output=fields["output"],
            error=fields["error"],
            cause=fields["cause"],
            role_arn=fields["roleArn"],
            history=json.loads(history) if history is not None else None,
        )


def _page_token(execution: StoredExecution) -> str:
    position = json.dumps([_iso(execution.start_date), execution.execution_arn])
    return base64.urlsafe_b64encode(position.encode()).decode()


def _page_position(token: str) -> tuple[str, str]:
    try:
        start_date, arn = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidToken() from exc
    return str(start_date), str(arn)


def _parser_backends() -> Iterator[StepFunctionsParserBackend]:
    """Every Step Functions backend that runs executions, without creating any."""
    for regions in list(stepfunctions_parser_backends.values()):
        yield from list(regions.values())


def _execution_lists(backend: StepFunctionsParserBackend) -> Iterator[Any]:
    """Whatever holds an `executions` list: each state machine and each of its published versions."""
    for state_machine in list(backend.state_machines):
        yield state_machine
        yield from list(state_machine.versions.values())


def _forget(evicted: list[Any]) -> None:
    """Drop what moto keeps of evicted executions besides its lists, so that their memory is freed: the copy of
    its state machine that each execution runs (moto tracks every model instance it creates, for its dashboard
    only) and the finished threads of its interpreter (a registry that moto only appends to)."""
    clones: dict[type, set[int]] = {}
    for execution in evicted:
        clones.setdefault(type(execution.state_machine), set()).add(id(execution.state_machine))
    for model, ids in clones.items():
        tracked = getattr(model, "instances_tracked", None)
        if tracked is not None:
            tracked[:] = [instance for instance in tracked if id(instance) not in ids]
    TMP_THREADS[:] = [thread for thread in TMP_THREADS if thread.is_alive()]


class ExecutionsPart:
    """Write-through and restore of Step Functions executions (see the module's docstring).

    Locks, always taken in this order: `_live_lock` guards the `executions` lists of moto's state machines (every
    StartExecution appends under it; eviction replaces a list under it, so a thread that iterates the old list is
    never disturbed); `_records_lock` serializes building and writing an execution's record, so an older state
    never overwrites a newer one; the store's own write lock comes last."""

    name = "stepfunctions-executions"
    externalized: tuple[type, ...] = (Execution, SyncExecution)

    def __init__(self, store: StateStore, *, evict_after: float = EVICT_AFTER_SECONDS) -> None:
        self.store = store
        self.evict_after = evict_after
        store.ensure_schema(_SCHEMA)
        self._live_lock = threading.RLock()
        self._records_lock = threading.RLock()
        self._final_written = threading.Condition(self._records_lock)
        #: live executions whose final record is on disk (eligible for eviction)
        self._durable: weakref.WeakSet[Any] = weakref.WeakSet()
        self._last_sweep = 0.0
        self._interrupted: list[dict[str, str]] = []

    # ------------------------------------------------------------------ the part's interface

    def install(self) -> list[tuple[Any, str, Any]]:
        """Patch moto's interpreter and Step Functions backend to write executions through and to answer from the
        store; returns the originals as (owner, attribute, original) triples."""
        backend_class = StepFunctionsParserBackend
        patches: list[tuple[Any, str, Callable[..., Any]]] = [
            (Execution, "start", self._wrap_start(Execution.start)),
            (
                BaseExecutionWorkerCommunication,
                "terminated",
                self._wrap_terminated(BaseExecutionWorkerCommunication.terminated),
            ),
            (backend_class, "start_execution", self._wrap_start_execution(backend_class.start_execution)),
            (backend_class, "stop_execution", self._wrap_stop_execution(backend_class.stop_execution)),
            (backend_class, "describe_execution", self._wrap_describe_execution(backend_class.describe_execution)),
            (backend_class, "list_executions", self._list_executions_from_store()),
            (
                backend_class,
                "describe_state_machine_for_execution",
                self._wrap_describe_state_machine_for_execution(backend_class.describe_state_machine_for_execution),
            ),
        ]
        return [_replace(owner, attribute, new) for owner, attribute, new in patches]

    def restore(self) -> None:
        """Drop the placeholders that the snapshots left for executions in moto's lists, and settle the recorded
        executions that were RUNNING when the stack stopped as ABORTED (`LocalStackStopped`), in one transaction.
        Every other execution is answered from the store and needs nothing in memory."""
        live: set[str] = set()
        with self._live_lock:
            for backend in _parser_backends():
                for holder in _execution_lists(backend):
                    kept = [execution for execution in holder.executions if execution is not None]
                    holder.executions = kept
                    live.update(execution.exec_arn for execution in kept)
        with self.store.reading() as connection:
            rows = connection.execute("SELECT record FROM sfn_execution WHERE status = ?", (RUNNING,)).fetchall()
        now = datetime.now(UTC)
        settled = [
            StoredExecution.from_json(record).aborted(now, error=STOPPED_ERROR, cause=STOPPED_CAUSE)
            for (record,) in rows
        ]
        settled = [execution for execution in settled if execution.execution_arn not in live]
        with self._records_lock, self.store.transaction() as connection:
            for execution in settled:
                self._put(connection, execution)
        self._interrupted = [
            {
                "arn": execution.execution_arn,
                "name": execution.name,
                "input": execution.execution_input,
                "stateMachineArn": execution.state_machine_arn,
            }
            for execution in settled
        ]

    def interrupted(self) -> list[dict[str, str]]:
        """The executions `restore()` settled as ABORTED because the stack stopped while they ran (arn, name,
        input, stateMachineArn): their tasks still have to be settled."""
        return list(self._interrupted)

    def stored(self, execution_arn: str) -> StoredExecution | None:
        """The store's record of an execution, with its history."""
        with self.store.reading() as connection:
            row = connection.execute(
                "SELECT record, history FROM sfn_execution WHERE arn = ?", (execution_arn,)
            ).fetchone()
        return None if row is None else StoredExecution.from_json(row[0], row[1])

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _put(connection: Any, execution: StoredExecution) -> None:
        connection.execute(
            "INSERT OR REPLACE INTO sfn_execution (arn, state_machine_arn, status, start_date, record, history) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                execution.execution_arn,
                execution.state_machine_arn,
                execution.status,
                _iso(execution.start_date),
                execution.record_json(),
                execution.history_json(),
            ),
        )

    def _write(self, record: StoredExecution) -> None:
        with self.store.transaction() as connection:
            self._put(connection, record)

    def _write_final(self, execution: Any) -> None:
        """Write an ended execution's final record (with its history) unless it is on disk already."""
        with self._records_lock:
            if execution in self._durable:
                return
            self._write(StoredExecution.of(execution, with_history=True))
            self._durable.add(execution)
            self._final_written.notify_all()

    # ------------------------------------------------------------------ patches of moto

    def _wrap_start(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        def start(execution: Any) -> None:
            """Record the execution as RUNNING before its worker thread exists: nothing has run that the record
            does not show."""
            with self._records_lock:
                self._write(StoredExecution.of(execution, with_history=False))
            original(execution)

        return start

    def _wrap_terminated(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        def terminated(communication: Any) -> None:
            """The worker ended the run (moto sets the final status here): write the final record. A failed write is
            logged, not raised (nothing above the worker thread would see it); the record stays RUNNING and the
            next sweep tries again."""
            original(communication)
            try:
                self._write_final(communication.execution)
            except Exception:
                logger.exception("could not record the end of execution %s", communication.execution.exec_arn)
            self._sweep(wait=False)

        return terminated

    def _wrap_start_execution(self, original: Callable[..., Any]) -> Callable[..., Any]:
        part = self

        def start_execution(
            self: Any,
            state_machine_arn: str,
            name: str | None = None,
            execution_input: str | None = None,
            trace_header: str | None = None,
        ) -> Any:
            state_machine = self.describe_state_machine(state_machine_arn)
            # as moto names it (a missing name is "None" there)
            arn = f"arn:{self.partition}:states:{self.region_name}:{self.account_id}:execution:"
            arn += f"{state_machine.name}:{name}"
            with part._live_lock:
                part._sweep(wait=True)
                live = any(e is not None and e.name == name for e in state_machine.executions)
                if not live and part.stored(arn) is not None:
                    raise ExecutionAlreadyExists(f"Execution Already Exists: '{arn}'")
                try:
                    return original(self, state_machine_arn, name, execution_input, trace_header)
                except BaseException:
                    # moto listed the execution before starting it; one whose record could not be written never
                    # started (its status is still None) and must not stay listed
                    holder = self.describe_state_machine(state_machine_arn)
                    holder.executions = [e for e in holder.executions if getattr(e, "exec_status", 0) is not None]
                    raise

        return start_execution

    def _wrap_stop_execution(self, original: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
        part = self

        def stop_execution(self: Any, execution_arn: str) -> Any:
            """Stop, then wait (briefly) for the worker to end the run and its final record to be written, so the
            answer follows a durable ABORTED (and carries the stop date moto sets then). A worker stuck in a call
            is recorded ABORTED here; its own final record replaces that one when it ends."""
            try:
                execution = original(self, execution_arn)
            except ExecutionDoesNotExist:
                stored = part.stored(execution_arn)
                if stored is None:
                    raise
                return stored  # ended long ago: stopping it changes nothing, as on AWS
            with part._records_lock:
                if part._final_written.wait_for(lambda: execution in part._durable, timeout=STOP_WAIT_SECONDS):
                    return execution
                current = StoredExecution.of(execution, with_history=True)
                if not current.ended:
                    current = replace(current, status=ABORTED, stop_date=datetime.now(UTC))
                part._write(current)
            return execution

        return stop_execution

    def _wrap_describe_execution(self, original: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
        part = self

        def describe_execution(self: Any, execution_arn: str) -> Any:
            try:
                return original(self, execution_arn)
            except ExecutionDoesNotExist:
                stored = part.stored(execution_arn)
                if stored is None:
                    raise
                return stored

        return describe_execution

    def _wrap_describe_state_machine_for_execution(
        self, original: Callable[[Any, str], Any]
    ) -> Callable[[Any, str], Any]:
        part = self

        def describe_state_machine_for_execution(self: Any, execution_arn: str) -> Any:
            try:
                return original(self, execution_arn)
            except ResourceNotFound:
                stored = part.stored(execution_arn)
                if stored is None:
                    raise
                return self.describe_state_machine(stored.state_machine_arn)

        return describe_state_machine_for_execution

    def _list_executions_from_store(self) -> Callable[..., tuple[list[StoredExecution], str | None]]:
        part = self

        def list_executions(
            self: Any,
            state_machine_arn: str,
            status_filter: str | None = None,
            max_results: int | None = None,
            next_token: str | None = None,
        ) -> tuple[list[StoredExecution], str | None]:
            self.describe_state_machine(state_machine_arn)  # StateMachineDoesNotExist, as moto raises
            return part.list_executions(state_machine_arn, status_filter, max_results, next_token)

        return list_executions

    def list_executions(
        self,
        state_machine_arn: str,
        status_filter: str | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> tuple[list[StoredExecution], str | None]:
        """ListExecutions from the store, which holds every execution (live ones are written at start and at
        their end): newest first, as AWS lists them, a page at a time."""
        limit = max_results or DEFAULT_PAGE_SIZE
        clauses, parameters = ["state_machine_arn = ?"], [state_machine_arn]
        if status_filter:
            clauses.append("status = ?")
            parameters.append(status_filter)
        if next_token:
            clauses.append("(start_date, arn) < (?, ?)")
            parameters.extend(_page_position(next_token))
        query = (
            f"SELECT record FROM sfn_execution WHERE {' AND '.join(clauses)} ORDER BY start_date DESC, arn DESC LIMIT ?"
        )
        with self.store.reading() as connection:
            rows = connection.execute(query, (*parameters, limit + 1)).fetchall()
        page = [StoredExecution.from_json(record) for (record,) in rows[:limit]]
        return page, (_page_token(page[-1]) if len(rows) > limit else None)

    # ------------------------------------------------------------------ eviction

    def _sweep(self, *, wait: bool) -> None:
        """Evict from moto's memory the executions that ended more than `evict_after` seconds ago and whose final
        record is on disk (retrying the write of those whose record is not). At most once a second; a worker
        thread (`wait=False`) skips the sweep when a request holds the lists."""
        if not self._live_lock.acquire(blocking=wait):
            return
        try:
            now = time.monotonic()
            if now - self._last_sweep < SWEEP_EVERY_SECONDS:
                return
            self._last_sweep = now
            cutoff = datetime.now(UTC).timestamp() - self.evict_after
            evicted: list[Any] = []
            for backend in _parser_backends():
                for holder in _execution_lists(backend):
                    old = [e for e in holder.executions if self._ended_before(e, cutoff)]
                    gone = [e for e in old if self._durable_or_retried(e)]
                    if gone:
                        ids = {id(e) for e in gone}
                        holder.executions = [e for e in holder.executions if id(e) not in ids]
                        evicted.extend(gone)
            if evicted:
                _forget(evicted)
        finally:
            self._live_lock.release()

    @staticmethod
    def _ended_before(execution: Any, cutoff: float) -> bool:
        status = getattr(execution, "exec_status", None)
        stop_date = getattr(execution, "stop_date", None)
        return (
            status is not None and status.value != RUNNING and stop_date is not None and stop_date.timestamp() < cutoff
        )

    def _durable_or_retried(self, execution: Any) -> bool:
        if execution in self._durable:
            return True
        try:
            self._write_final(execution)
        except Exception:
            logger.exception("could not record the end of execution %s", execution.exec_arn)
            return False
        return True
