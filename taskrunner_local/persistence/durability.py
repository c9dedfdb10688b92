"""The durable local stack's memory: moto's state written through to the state folder, and read back at start.

- Hot objects (DynamoDB items, ECS tasks, executions, log streams and events, S3 objects) are written through by
  their parts, one object per change, before the call that changed them returns.
- Everything else is the control plane, snapshotted whole (`Snapshots`) after every request that may change it:
  any request to the AWS endpoint that is neither a read nor one of the hot operations the parts handle. The
  snapshot is written before the response leaves, so an acknowledged change is on disk. In-process changes (the
  local ECR recording a pushed image) call `changed()`.
- While the stack deploys (`deferred()`), snapshots wait: one is taken when the deployment is complete. Nothing
  is acknowledged to anyone during a deployment, and a stack that dies in the middle has no deployment recorded,
  so the next start deploys again from an empty state.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs

from taskrunner_local.moto_patches import _replace, put_back
from taskrunner_local.persistence.moto_parts import DynamoDBPart, EcsTasksPart
from taskrunner_local.persistence.snapshots import Part, Snapshots
from taskrunner_local.persistence.store import StateStore

#: operations that change only objects a part writes through (no snapshot needed), by service
HOT_OPERATIONS: dict[str, frozenset[str]] = {
    "dynamodb": frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}),
    "ecs": frozenset({"RunTask", "StartTask", "StopTask"}),
    "logs": frozenset({"PutLogEvents", "CreateLogStream", "DeleteLogStream"}),
    "states": frozenset({"StartExecution", "StopExecution", "StartSyncExecution"}),
    "events": frozenset({"PutEvents"}),
    "firehose": frozenset({"PutRecord", "PutRecordBatch"}),
    "ecr": frozenset({"GetAuthorizationToken"}),
}
#: services whose every request leaves the account as it was (for this stack)
READ_ONLY_SERVICES = frozenset({"sts"})
_READ_PREFIXES = ("Get", "Describe", "List", "Query", "Scan", "BatchGet", "TransactGet", "Filter", "Head", "Search")
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]*/\d{8}/[^/]*/([^/]+)/aws4_request")
_LAMBDA_INVOKE = re.compile(r"^/[^/]+/functions/[^/]+/invocations/?$")


def _service(environ: dict[str, Any]) -> str | None:
    match = _CREDENTIAL_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1) if match else None


def _action(environ: dict[str, Any], body: bytes) -> str | None:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target).rsplit(".", 1)[-1]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return str(query["Action"][0])
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded") and body:
        form = parse_qs(body.decode(errors="replace"))
        if "Action" in form:
            return str(form["Action"][0])
    return None


def may_change_control_plane(environ: dict[str, Any], body: bytes) -> bool:
    """Whether a request to the AWS endpoint may change what the snapshot holds (conservative: an unknown
    request is taken as a change)."""
    method = environ.get("REQUEST_METHOD", "GET")
    path = environ.get("PATH_INFO", "")
    if method in ("GET", "HEAD", "OPTIONS") or path.startswith("/moto-api"):
        return False
    service = _service(environ)
    if service is None or service in READ_ONLY_SERVICES:
        return service is None and not path.startswith("/moto-api")
    if service == "s3":  # object writes are the S3 part's; bucket requests (no key in the path) are control plane
        return len([segment for segment in path.split("/") if segment]) < 2 or "HTTP_X_AMZ_COPY_SOURCE" in environ
    if service == "lambda" and _LAMBDA_INVOKE.match(path):
        return False
    action = _action(environ, body)
    if action is None:
        return True
    return not (action in HOT_OPERATIONS.get(service, ()) or action.startswith(_READ_PREFIXES))


class Durability:
    def __init__(self, store: StateStore, parts: Sequence[Part] = ()) -> None:
        self.store = store
        self.dynamodb = DynamoDBPart(store)
        self.ecs = EcsTasksPart(store)
        self.parts: list[Part] = [self.dynamodb, self.ecs, *parts]
        externalized = tuple(kind for part in self.parts for kind in part.externalized)
        self.snapshots = Snapshots(store, externalized)
        self._originals: list[tuple[Any, str, Any]] = []
        self._deferred = 0
        self._deferred_lock = threading.Lock()
        self.restored = False

    # ------------------------------------------------------------------ wiring

    def install(self) -> None:
        """Patch moto so that every change is written through (before moto's server starts)."""
        if self._originals:
            return
        for part in self.parts:
            self._originals += part.install()
        self._originals.append(self._install_request_hook())

    def revert(self) -> None:
        put_back(self._originals)
        self._originals = []

    def _install_request_hook(self) -> tuple[Any, str, Any]:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication

        durability = self
        original: Callable[..., Any] = DomainDispatcherApplication.__call__

        def call(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
            body = self._get_body(environ) or ""  # moto reads the form body the same way, and rewinds it
            if not may_change_control_plane(environ, body.encode() if isinstance(body, str) else body):
                return original(self, environ, start_response)
            change = durability.snapshots.changed()
            statuses: list[str] = []

            def recording(status: str, *args: Any) -> Any:
                statuses.append(status)
                return start_response(status, *args)

            response = original(self, environ, recording)
            if not statuses or not statuses[0].startswith(("4", "5")):
                durability.snapshot(change)
            return response

        return _replace(DomainDispatcherApplication, "__call__", call)

    # ------------------------------------------------------------------ snapshots

    def changed(self) -> None:
        """Something changed moto's control plane in-process: snapshot it now (or at the end of a deployment)."""
        self.snapshot(self.snapshots.changed())

    def snapshot(self, change: int | None = None) -> None:
        with self._deferred_lock:
            if self._deferred:
                return
        self.snapshots.take(change)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Snapshots wait until the block ends, then one is taken (a deployment makes hundreds of changes); a
        block that raises takes none."""
        with self._deferred_lock:
            self._deferred += 1
        try:
            yield
        finally:
            with self._deferred_lock:
                self._deferred -= 1
        self.snapshots.take()  # only when the block succeeded: a failed deployment leaves no snapshot

    # ------------------------------------------------------------------ restore

    def interrupted_executions(self) -> list[dict[str, Any]]:
        """The workflow executions that were running when the stack died (arn, name, input), settled ABORTED by the
        restore."""
        interrupted: list[dict[str, Any]] = []
        for part in self.parts:
            finder = getattr(part, "interrupted", None)
            if finder is not None:
                interrupted += finder()
        return interrupted

    def restore(self) -> bool:
        """Load the last snapshot and every part's objects into moto's backends; False when the folder has none
        (a first start)."""
        if not self.snapshots.load():
            return False
        for part in self.parts:
            part.restore()
        self.restored = True
        return True
