"""Every change this project makes to moto 5.2.5, in one place (DESIGN §3).

Each patch closes one gap between moto and AWS that the task runner depends on, and each has a test in
tests/unit/test_moto_gaps.py that shows the gap with the patch reverted, so a patch can be deleted once
moto fixes its gap. Patches are applied by the local stack before moto's server starts.

The hooks (`Hooks`) connect the patched moto to the local stack's own parts: the Fargate agent learns of
RunTask/StopTask through them, and Lambda invocations (from Step Functions, EventBridge or boto3) reach the
in-process Lambda runtime through them.
"""

from __future__ import annotations

import base64
import importlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

#: (function name, payload, invocation type) -> (response payload, error type or None)
LambdaInvoker = Callable[[str, bytes, str], tuple[bytes, str | None]]


@dataclass
class Hooks:
    """Where patched moto hands work to the local stack. Unset hooks leave moto's own behaviour."""

    on_run_task: Callable[[Any, list[Any]], None] | None = None
    on_stop_task: Callable[[Any, Any, str], None] | None = None
    invoke_lambda: LambdaInvoker | None = None
    #: (account, region, repository, digests): BatchDeleteImage removed these images from ECR
    on_ecr_images_deleted: Callable[[str, str, str, list[str]], None] | None = None
    #: moto's state was changed in-process, outside any request (the durable stack snapshots it)
    on_state_changed: Callable[[], None] | None = None


HOOKS = Hooks()


@dataclass
class Patch:
    name: str
    gap: str
    _apply: Callable[[], list[tuple[Any, str, Any]]]
    _originals: list[tuple[Any, str, Any]] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return bool(self._originals)

    def apply(self) -> None:
        if not self.applied:
            self._originals = self._apply()

    def revert(self) -> None:
        put_back(self._originals)
        self._originals = []


_INHERITED = object()


def put_back(originals: list[tuple[Any, str, Any]]) -> None:
    """Undo `_replace`s, last first: an attribute that was inherited is deleted again."""
    for owner, attribute, original in reversed(originals):
        if isinstance(owner, dict):
            owner[attribute] = original
        elif original is _INHERITED:
            delattr(owner, attribute)
        else:
            setattr(owner, attribute, original)


def _replace(owner: Any, attribute: str, new: Any) -> tuple[Any, str, Any]:
    original = owner[attribute] if isinstance(owner, dict) else owner.__dict__.get(attribute, _INHERITED)
    if isinstance(owner, dict):
        owner[attribute] = new
    else:
        setattr(owner, attribute, new)
    return owner, attribute, original


# ---------------------------------------------------------------------------------------------- Step Functions


@cache
def _operation_model(service: str, action: str) -> Any:
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    for name in model.operation_names:
        if xform_name(name) == action:
            return model.operation_model(name)
    return None


def _patch_sfn_normalisation() -> list[tuple[Any, str, Any]]:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import (
        StateTaskService,
    )

    def _normalise_parameters(
        self: Any,
        parameters: dict[str, Any],
        boto_service_name: str | None = None,
        service_action_name: str | None = None,
    ) -> None:
        operation = _operation_model(
            self._get_boto_service_name(boto_service_name), self._get_boto_service_action(service_action_name)
        )
        if operation is not None and operation.input_shape is not None:
            self._to_boto_request(parameters, operation.input_shape)

    def _normalise_response(
        self: Any, response: Any, boto_service_name: str | None = None, service_action_name: str | None = None
    ) -> None:
        operation = _operation_model(
            self._get_boto_service_name(boto_service_name), self._get_boto_service_action(service_action_name)
        )
        if operation is not None and operation.output_shape is not None:
            self._from_boto_response(response, operation.output_shape)

    return [
        _replace(StateTaskService, "_normalise_parameters", _normalise_parameters),
        _replace(StateTaskService, "_normalise_response", _normalise_response),
    ]


_RUN_TASK_PARAMETERS_AWS_ACCEPTS = {"CapacityProviderStrategy", "Tags", "EnableECSManagedTags", "ReferenceId", "Count"}


def _patch_sfn_ecs_parameters() -> list[tuple[Any, str, Any]]:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_ecs

    bindings = state_task_service_ecs._SUPPORTED_API_PARAM_BINDINGS
    widened = {**bindings, "runtask": bindings["runtask"] | _RUN_TASK_PARAMETERS_AWS_ACCEPTS}
    return [_replace(state_task_service_ecs.__dict__, "_SUPPORTED_API_PARAM_BINDINGS", widened)]


def _epoch_millis(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(aware.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _epoch_millis(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_epoch_millis(v) for v in value]
    return value


def _task_failed(env: Any, service: Any, cause: str) -> Exception:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    return FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
            event_type=HistoryEventType.TaskFailed,
            event_details=EventDetails(  # type: ignore[typeddict-item]
                taskFailedEventDetails=TaskFailedEventDetails(
                    error=StatesErrorNameType.StatesTaskFailed.to_name(),
                    cause=cause,
                    resource=service._get_sfn_resource(),
                    resourceType=service._get_sfn_resource_type(),
                )
            ),
        )
    )


def ecs_task_failed(description: dict[str, Any], essential: set[str]) -> bool:
    """How AWS decides a runTask.sync failed: the task failed to start, or an essential container did not exit
    with code 0."""
    if description.get("stopCode") == "TaskFailedToStart":
        return True
    return any(c.get("name") in essential and c.get("exitCode") != 0 for c in description.get("containers", []))


_essential_containers: dict[str, set[str]] = {}


def _ecs_task_stopped(task_arn: str) -> bool:
    """Whether moto's ECS holds this task as STOPPED, read without an API call (true when unknown)."""
    from moto.ecs.models import ecs_backends

    _, _, _, region, account, _ = task_arn.split(":", 5)
    for tasks in ecs_backends[account][region].tasks.values():
        task = tasks.get(task_arn)
        if task is not None:
            return bool(task.last_status == "STOPPED")
    return True


def _patch_sfn_ecs_sync() -> list[tuple[Any, str, Any]]:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs import (
        StateTaskServiceEcs,
    )

    state_task_service_ecs: Any = importlib.import_module(StateTaskServiceEcs.__module__)

    def _build_sync_resolver(
        self: Any, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any], state_credentials: Any
    ) -> Callable[[], Any]:
        ecs = state_task_service_ecs.boto_client_for(
            service="ecs", region=resource_runtime_part.region, state_credentials=state_credentials
        )
        submission = env.stack.pop()
        task_arn = submission["Tasks"][0]["TaskArn"]
        cluster_arn = submission["Tasks"][0]["ClusterArn"]

        def _sync_resolver() -> dict[str, Any] | None:
            if not _ecs_task_stopped(task_arn):  # a cheap look in-process; the API call once it has stopped
                return None
            described = ecs.describe_tasks(cluster=cluster_arn, tasks=[task_arn])
            task = described["tasks"][0]
            if task["lastStatus"] != "STOPPED":
                return None
            definition_arn = task["taskDefinitionArn"]
            essential = _essential_containers.get(definition_arn)
            if essential is None:  # a task definition revision never changes: ask once
                definition = ecs.describe_task_definition(taskDefinition=definition_arn)["taskDefinition"]
                essential = {c["name"] for c in definition["containerDefinitions"] if c.get("essential", True)}
                _essential_containers[definition_arn] = essential
            failed = ecs_task_failed(task, essential)  # before normalising, which renames keys in place
            described.pop("ResponseMetadata", None)
            self._normalise_response(response=described, service_action_name="describe_tasks")
            pascal: dict[str, Any] = _epoch_millis(described["Tasks"][0])
            if failed:
                raise _task_failed(env, self, json.dumps(pascal, separators=(",", ":")))
            return pascal

        return _sync_resolver

    return [_replace(StateTaskServiceEcs, "_build_sync_resolver", _build_sync_resolver)]


@cache
def _ecs_modelled_errors() -> frozenset[str]:
    import botocore.session

    return frozenset(shape.name for shape in botocore.session.get_session().get_service_model("ecs").error_shapes)


def _patch_sfn_ecs_error_names() -> list[tuple[Any, str, Any]]:
    """moto's optimized ECS integration (ecs:runTask) turns every ECS API error into States.Runtime, which AWS never
    retries. AWS names an error the ECS API models ECS.<code> (ECS.InvalidParameterException) and any other one,
    throttling among them, ECS.AmazonECSException, with the code in the cause: "Rate exceeded (Service: AmazonECS;
    Status Code: 400; Error Code: ThrottlingException; Request ID: ...)". moto's own failures (HTTP 500, a crash in
    a backend) are named as ECS names its server faults, ECS.ServerException, which is retried briefly: named
    ECS.AmazonECSException they would be retried for half an hour as if throttled."""
    from botocore.exceptions import ClientError
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs import (
        StateTaskServiceEcs,
    )

    original = StateTaskServiceEcs._from_error

    def _from_error(self: Any, env: Any, ex: Exception) -> Any:
        if not isinstance(ex, ClientError):
            return original(self, env, ex)
        from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
        from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
        from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEvent
        from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

        details = ex.response.get("Error", {})
        code, message = str(details.get("Code", "")), details.get("Message", "")
        metadata = ex.response.get("ResponseMetadata", {})
        if code in _ecs_modelled_errors():
            error = f"ECS.{code}"
        elif int(metadata.get("HTTPStatusCode") or 0) >= 500:
            error = "ECS.ServerException"
        else:
            error = "ECS.AmazonECSException"
        cause = (
            f"{message} (Service: AmazonECS; Status Code: {metadata.get('HTTPStatusCode')}; Error Code: {code}; "
            f"Request ID: {metadata.get('RequestId')}; Proxy: null)"
        )
        return FailureEvent(
            env=env,
            error_name=CustomErrorName(error),
            event_type=HistoryEventType.TaskFailed,
            event_details=EventDetails(  # type: ignore[typeddict-item]
                taskFailedEventDetails=TaskFailedEventDetails(
                    error=error,
                    cause=cause,
                    resource=self._get_sfn_resource(),
                    resourceType=self._get_sfn_resource_type(),
                )
            ),
        )

    return [_replace(StateTaskServiceEcs, "_from_error", _from_error)]


def _patch_sfn_parse_cache() -> list[tuple[Any, str, Any]]:
    """Every execution parses its state machine's definition again with ANTLR (about 80 ms of CPU for ours),
    which alone caps a local stack near ten executions per second. The parse tree depends only on the text:
    keep it, and build the evaluation components afresh for each execution as before."""
    asl_parser: Any = importlib.import_module("moto.stepfunctions.parser.asl.parse.asl_parser")
    parser_cls = asl_parser.AmazonStateLanguageParser
    trees: dict[str, Any] = {}
    lock = threading.Lock()

    def parse(definition: str) -> tuple[Any, Any]:
        with lock:
            tree = trees.get(definition)
        if tree is None:
            listener = asl_parser.SyntaxErrorListener()
            parser = asl_parser.ASLParser(
                asl_parser.CommonTokenStream(asl_parser.ASLLexer(asl_parser.InputStream(definition)))
            )
            parser.removeErrorListeners()
            parser.addErrorListener(listener)
            tree = parser.state_machine()
            if listener.errors:
                raise asl_parser.ASLParserException(errors=listener.errors)
            with lock:
                if len(trees) > 64:
                    trees.clear()
                trees[definition] = tree
        return asl_parser.Preprocessor().visit(tree), tree

    return [_replace(parser_cls, "parse", staticmethod(parse))]


def _patch_sfn_json_path_cache() -> list[tuple[Any, str, Any]]:
    """Every JSONPath evaluation builds a new jsonpath-ng parser (yacc tables and all), about 0.4 ms of CPU,
    some fifty times per execution. Parsed paths are immutable: keep them."""
    json_path: Any = importlib.import_module("moto.stepfunctions.parser.asl.utils.json_path")
    cached = lru_cache(maxsize=4096)(json_path.parse)
    return [_replace(json_path.__dict__, "parse", cached)]


_MODULES_USING_BOTO_CLIENT_FOR = (
    "moto.stepfunctions.parser.asl.utils.boto_client",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.lambda_eval_utils",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_dynamodb",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_events",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sns",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sqs",
)


def _patch_sfn_client_reuse() -> list[tuple[Any, str, Any]]:
    """Every Task state builds new boto3 clients (tens of milliseconds of CPU each, several per task), which
    caps a local stack at a few tasks per second. boto3 clients are thread-safe: build one per service."""
    from moto.stepfunctions.parser.asl.utils import boto_client

    original = boto_client.boto_client_for
    clients: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        key = (region, service)
        with lock:
            if key not in clients:
                clients[key] = original(region=region, service=service, state_credentials=state_credentials)
            return clients[key]

    return [
        _replace(importlib.import_module(name).__dict__, "boto_client_for", boto_client_for)
        for name in _MODULES_USING_BOTO_CLIENT_FOR
    ]


# ---------------------------------------------------------------------------------------------- ECS


def _patch_ecs_fargate_resources() -> list[tuple[Any, str, Any]]:
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend.__dict__["_calculate_task_resource_requirements"].__func__

    def _calculate_task_resource_requirements(task_definition: Any) -> dict[str, Any]:
        # Fargate container definitions need no container-level memory; moto adds None and crashes.
        containers = task_definition.container_definitions
        patched = [
            c
            if any(k in c for k in ("memory", "Memory", "memoryReservation", "MemoryReservation"))
            else {**c, "memory": 0}
            for c in containers
        ]
        task_definition.container_definitions = patched
        try:
            return original(task_definition)  # type: ignore[no-any-return]
        finally:
            task_definition.container_definitions = containers

    return [
        _replace(
            EC2ContainerServiceBackend,
            "_calculate_task_resource_requirements",
            staticmethod(_calculate_task_resource_requirements),
        )
    ]


#: Attributes the local agent sets on moto's ECS task objects; moto's serializer picks them up by name.
TASK_LIFECYCLE_ATTRIBUTES = (
    "created_at",
    "pull_started_at",
    "pull_stopped_at",
    "started_at",
    "connectivity_at",
    "stopping_at",
    "execution_stopped_at",
    "stopped_at",
    "stop_code",
    "cpu",
    "memory",
    "ephemeral_storage",
    "platform_family",
    "availability_zone",
)


def _patch_ecs_task_lifecycle() -> list[tuple[Any, str, Any]]:
    """moto's ECS tasks start RUNNING, never change by themselves, carry no timestamps, exit codes or stop
    codes, and StopTask marks them STOPPED at once. Here the task's lifecycle belongs to the local agent."""
    from moto.ecs import models as ecs_models
    from moto.ecs.exceptions import InvalidParameterException

    Task = ecs_models.Task  # noqa: N806
    backend_cls = ecs_models.EC2ContainerServiceBackend
    original_run_task = backend_cls.run_task
    lock = threading.Lock()

    def status_get(self: Any) -> str | None:
        return self._status  # type: ignore[no-any-return]

    def status_set(self: Any, value: str) -> None:
        self._status = value

    def run_task(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
        tasks = original_run_task(self, *args, **kwargs)
        now = datetime.now(UTC)
        for task in tasks:
            task._status = "PROVISIONING"
            setattr(task, "created_at", now)  # noqa: B010 - moto's Task has no such attribute of its own
            for attribute in TASK_LIFECYCLE_ATTRIBUTES:
                if not hasattr(task, attribute):
                    setattr(task, attribute, None)
            for container in task.containers:
                container.exitCode = None  # type: ignore[assignment]
                setattr(container, "reason", None)  # noqa: B010
                container.last_status = "PENDING"
        if HOOKS.on_run_task is not None:
            HOOKS.on_run_task(self, tasks)
        return tasks  # type: ignore[no-any-return]

    def stop_task(self: Any, cluster_str: str, task_str: str, reason: str) -> Any:
        cluster = self._get_cluster(cluster_str)
        task_id = task_str.rsplit("/", 1)[-1]
        task = next(
            (t for arn, t in self.tasks.get(cluster.name, {}).items() if arn.rsplit("/", 1)[-1] == task_id), None
        )
        if task is None:
            raise InvalidParameterException("The referenced task was not found.")
        if task.desired_status != "STOPPED":
            task.desired_status = "STOPPED"
            task.stopped_reason = reason or "Task stopped by user"
            if HOOKS.on_stop_task is not None:
                HOOKS.on_stop_task(self, task, task.stopped_reason)
            else:
                task._status = "STOPPED"
        return task

    # moto's ECS backend keeps tasks in plain dicts that describe/list iterate while run_task adds to them from
    # another request thread ("dictionary changed size during iteration", an HTTP 500): one lock per backend.
    locks: dict[int, threading.RLock] = {}

    def serialized(original: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                backend_lock = locks.setdefault(id(self), threading.RLock())
            with backend_lock:
                return original(self, *args, **kwargs)

        method.__name__ = original.__name__
        return method

    return [
        _replace(Task, "status", property(status_get, status_set)),
        _replace(backend_cls, "run_task", serialized(run_task)),
        _replace(backend_cls, "stop_task", serialized(stop_task)),
        _replace(backend_cls, "describe_tasks", serialized(backend_cls.describe_tasks)),
        _replace(backend_cls, "list_tasks", serialized(backend_cls.list_tasks)),
    ]


# ---------------------------------------------------------------------------------------------- DynamoDB


_DYNAMODB_LOCK_CREATION = threading.Lock()


def dynamodb_lock(backend: Any) -> threading.RLock:
    """The lock that serializes every operation on one DynamoDB backend (see `_patch_dynamodb_concurrency`); the
    state store takes it too, so that items are written through in the order they were changed."""
    lock = backend.__dict__.get("_taskrunner_lock")
    if lock is None:
        with _DYNAMODB_LOCK_CREATION:
            lock = backend.__dict__.setdefault("_taskrunner_lock", threading.RLock())
    return lock  # type: ignore[no-any-return]


def _patch_dynamodb_concurrency() -> list[tuple[Any, str, Any]]:
    """moto's DynamoDB is not safe under concurrent requests (its server runs each request in a thread):
    TransactWriteItems deep-copies every table it touches to roll back, which races with other writes
    ("dictionary changed size during iteration"), throws away concurrent writes when it rolls back, and costs
    time in proportion to the table's size. Here every operation on a backend is serialized by one lock, and
    a transaction checks all its conditions before it writes anything, so it needs no table copies."""
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import MultipleTransactionsException, TransactionCanceledException
    from moto.dynamodb.models import DynamoDBBackend

    guarded = ("put_item", "update_item", "delete_item", "get_item", "query", "scan")
    originals = {name: getattr(DynamoDBBackend, name) for name in guarded}
    lock_of = dynamodb_lock

    def serialized(name: str) -> Callable[..., Any]:
        original = originals[name]

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock_of(self):
                return original(self, *args, **kwargs)

        method.__name__ = name
        return method

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with lock_of(self):
            seen: set[tuple[str, str]] = set()
            errors: list[Any] = []
            plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            for item in transact_items:
                op_type, op = next(iter(item.items()))
                table_name = op["TableName"]
                if op_type == "Put":
                    table = self.get_table(table_name)
                    key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = op["Item"][table.range_key_attr]
                else:
                    key = op["Key"]
                identity = (str(table_name), str(dict(sorted(key.items()))))
                if identity in seen:
                    raise MultipleTransactionsException()
                seen.add(identity)
                current = self.get_item(table_name, key)
                condition = op.get("ConditionExpression")
                if condition is not None and not get_filter_expression(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                ).expr(current):
                    old = (
                        current.to_json()["Attributes"]
                        if current and op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
                        else None
                    )
                    errors.append(("ConditionalCheckFailed", "The conditional request failed", old))
                else:
                    errors.append((None, None, None))
                plan.append((op_type, op, key))
            if any(code is not None for code, _, _ in errors):
                raise TransactionCanceledException(errors)
            for op_type, op, key in plan:  # every condition holds, under the lock: now write
                names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                if op_type == "Put":
                    self.put_item(op["TableName"], op["Item"])
                elif op_type == "Update":
                    self.update_item(
                        op["TableName"],
                        key,
                        update_expression=op["UpdateExpression"],
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )
                elif op_type == "Delete":
                    self.delete_item(op["TableName"], key)

    replaced = [_replace(DynamoDBBackend, name, serialized(name)) for name in guarded]
    return [*replaced, _replace(DynamoDBBackend, "transact_write_items", transact_write_items)]


# ---------------------------------------------------------------------------------------------- Lambda, EventBridge


def _patch_lambda_invoke() -> list[tuple[Any, str, Any]]:
    """moto runs Lambda functions only in Docker; the local stack runs them in its own runtime."""
    from moto.awslambda.models import LambdaFunction

    original = LambdaFunction.invoke

    def invoke(self: Any, body: Any, request_headers: Any, response_headers: Any) -> Any:
        if HOOKS.invoke_lambda is None:
            return original(self, body, request_headers, response_headers)
        payload = body.encode() if isinstance(body, str) else (body or b"{}")
        invocation_type = (request_headers or {}).get("x-amz-invocation-type") or (request_headers or {}).get(
            "X-Amz-Invocation-Type", "RequestResponse"
        )
        result, error = HOOKS.invoke_lambda(self.function_name, payload, invocation_type)
        if error:
            response_headers["x-amz-function-error"] = "Unhandled"
        return result

    return [_replace(LambdaFunction, "invoke", invoke)]


def _patch_events_lambda_targets() -> list[tuple[Any, str, Any]]:
    """moto's EventBridge rules deliver to logs, SQS and buses, not to Lambda functions."""
    import copy

    from moto.events.models import EventTemplateParser, Rule  # type: ignore[attr-defined]
    from moto.utilities.arns import parse_arn

    original = Rule.send_to_targets

    def send_to_targets(self: Any, original_event: Any, transform_input: bool = True) -> None:
        if HOOKS.invoke_lambda is None or not self.event_pattern.matches_event(original_event):
            return original(self, original_event, transform_input)  # type: ignore[no-any-return]
        lambda_targets = [t for t in self.targets if parse_arn(t["Arn"]).service == "lambda"]
        for target in lambda_targets:
            if "Input" in target:
                event: Any = json.loads(target["Input"])
            elif "InputPath" in target:
                found = importlib.import_module("jsonpath_ng.ext").parse(target["InputPath"]).find(original_event)
                event = found[0].value if found else None
            elif "InputTransformer" not in target:
                event = original_event  # delivered as it is, as EventBridge does
            else:
                transformer = target["InputTransformer"]
                event = EventTemplateParser.parse(
                    input_template=transformer.get("InputTemplate"),
                    input_paths_map=transformer.get("InputPathsMap", {}),
                    event=original_event,
                )
            function_name = parse_arn(target["Arn"]).resource_id.split(":")[0]
            HOOKS.invoke_lambda(function_name, json.dumps(event, default=str).encode(), "Event")
        others = [t for t in self.targets if t not in lambda_targets]
        if others:
            rest = copy.copy(self)
            rest.targets = others
            original(rest, original_event, transform_input)
        return None

    return [_replace(Rule, "send_to_targets", send_to_targets)]


# ---------------------------------------------------------------------------------------------- CloudWatch Logs

#: GetLogEvents returns at most 1 MB of events a page, counting 26 bytes of overhead per event.
LOG_PAGE_BYTES = 1_048_576
LOG_EVENT_OVERHEAD_BYTES = 26


def _patch_logs_page_size() -> list[tuple[Any, str, Any]]:
    """moto's GetLogEvents returns every event up to `limit` however large; AWS stops a page at 1 MB."""
    from moto.logs.models import LogStream

    original = LogStream.get_log_events

    def get_log_events(  # noqa: PLR0917 - moto's own signature
        self: Any, start_time: Any, end_time: Any, limit: int, next_token: str | None, start_from_head: Any
    ) -> tuple[list[dict[str, Any]], str | None, str | None]:
        events, backward, forward = original(self, start_time, end_time, limit, next_token, start_from_head)
        reading_forward = next_token.startswith("f/") if next_token else bool(start_from_head)
        if not reading_forward or backward is None:
            return events, backward, forward
        size = 0
        for kept, event in enumerate(events):
            size += len(event["message"].encode()) + LOG_EVENT_OVERHEAD_BYTES
            if size > LOG_PAGE_BYTES and kept > 0:
                last_index = int(backward[2:]) + kept - 1
                return events[:kept], backward, f"f/{last_index:056d}"
        return events, backward, forward

    return [_replace(LogStream, "get_log_events", get_log_events)]


def _patch_sfn_task_tokens_while_starting() -> list[tuple[Any, str, Any]]:
    """SendTaskSuccess and SendTaskHeartbeat look for the token among RUNNING executions by reading every
    execution's status, which raises for one created but not started yet (its status is None): a task token
    sent while any StartExecution is under way fails with a 500. An execution not started has no token."""
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    def _get_executions(self: Any, execution_status: Any = None) -> list[Any]:
        return [
            execution
            for machine in self.state_machines
            for execution in machine.executions
            if execution.exec_status is not None and (execution_status is None or execution_status == execution.status)
        ]

    return [_replace(StepFunctionsParserBackend, "_get_executions", _get_executions)]


def _patch_lambda_cloudformation_update_layers() -> list[tuple[Any, str, Any]]:
    """A CloudFormation update of a function that uses a layer of the same stack crashes: moto's update hands the
    function's `Layers` as the layer version objects its Ref resolved to, where the function expects ARNs (AWS
    resolves Ref of a layer version to its ARN). Updating a stack whose template changed needs it."""
    from moto.awslambda.models import LambdaFunction

    original = LambdaFunction.update_configuration

    def update_configuration(self: Any, config_updates: dict[str, Any]) -> Any:
        layers = config_updates.get("Layers")
        if layers:
            config_updates = {**config_updates, "Layers": [getattr(layer, "arn", layer) for layer in layers]}
        return original(self, config_updates)

    return [_replace(LambdaFunction, "update_configuration", update_configuration)]


# ---------------------------------------------------------------------------------------------- EC2


def _patch_ec2_cloudformation_vpc_dns() -> list[tuple[Any, str, Any]]:
    """moto's CloudFormation creates a VPC without its EnableDnsSupport and EnableDnsHostnames. Without DNS hostnames
    a network interface in it has no private DNS name, and RunTask of an awsvpc task there crashes on that."""
    from moto.ec2.models.vpcs import VPC

    original = VPC.__dict__["create_from_cloudformation_json"].__func__

    def create_from_cloudformation_json(
        cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Any:
        vpc = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        properties = cloudformation_json.get("Properties", {})
        for attribute, name in (
            ("enable_dns_support", "EnableDnsSupport"),
            ("enable_dns_hostnames", "EnableDnsHostnames"),
        ):
            if name in properties:
                setattr(vpc, attribute, str(properties[name]).lower() == "true")
        return vpc

    return [_replace(VPC, "create_from_cloudformation_json", classmethod(create_from_cloudformation_json))]


# ---------------------------------------------------------------------------------------------- Firehose


def _patch_firehose_file_extension() -> list[tuple[Any, str, Any]]:
    """moto names the S3 objects of a delivery stream without the destination's FileExtension; AWS appends it. The
    object name is made by a static method that does not see the destination: the destination's delivery tells it
    the extension."""
    from moto.firehose.models import FirehoseBackend

    original_put = FirehoseBackend.put_s3_records
    original_path = FirehoseBackend.__dict__["_format_s3_object_path"].__func__
    delivering = threading.local()

    def put_s3_records(
        self: Any, delivery_stream_name: str, version_id: str, s3_destination: dict[str, Any], records: list[Any]
    ) -> Any:
        delivering.extension = s3_destination.get("FileExtension") or ""
        try:
            return original_put(self, delivery_stream_name, version_id, s3_destination, records)
        finally:
            delivering.extension = ""

    def _format_s3_object_path(delivery_stream_name: str, version_id: str, prefix: str) -> str:
        path: str = original_path(delivery_stream_name, version_id, prefix)
        return path + getattr(delivering, "extension", "")

    return [
        _replace(FirehoseBackend, "put_s3_records", put_s3_records),
        _replace(FirehoseBackend, "_format_s3_object_path", staticmethod(_format_s3_object_path)),
    ]


# ---------------------------------------------------------------------------------------------- ECR

#: ECR's authorization tokens are valid for 12 hours
ECR_TOKEN_SECONDS = 12 * 3600
#: password -> (registry id, expiry in epoch seconds) of every token GetAuthorizationToken issued
_ECR_TOKENS: dict[str, tuple[str, str, float]] = {}
_ECR_TOKENS_LOCK = threading.Lock()


def issue_ecr_token(registry_id: str, region: str) -> tuple[str, datetime]:
    """A new password for `registry_id`'s registry in `region` (user `AWS`) and when it expires, as
    GetAuthorizationToken issues them; `ecr_token_valid` accepts it there until then, as ECR's tokens are per
    account and region."""
    password = secrets.token_urlsafe(48)
    expires = time.time() + ECR_TOKEN_SECONDS
    with _ECR_TOKENS_LOCK:
        now = time.time()
        for stale in [key for key, (_, _, at) in _ECR_TOKENS.items() if at <= now]:
            del _ECR_TOKENS[stale]
        _ECR_TOKENS[password] = (registry_id, region, expires)
    return password, datetime.fromtimestamp(expires, UTC)


def ecr_token_valid(registry_id: str, region: str, password: str) -> bool:
    """Whether `password` is a token GetAuthorizationToken issued for `registry_id` in `region`, not expired."""
    with _ECR_TOKENS_LOCK:
        issued = _ECR_TOKENS.get(password)
    return issued is not None and issued[:2] == (registry_id, region) and issued[2] > time.time()


def _patch_ecr_authorization_token() -> list[tuple[Any, str, Any]]:
    from moto.core.responses import ActionResult
    from moto.ecr.responses import ECRResponse

    def get_authorization_token(self: Any) -> Any:
        registry_ids = self._get_param("registryIds") or [self.current_account]
        auth_data = []
        for registry_id in registry_ids:
            password, expires = issue_ecr_token(registry_id, self.region)
            auth_data.append(
                {
                    "authorizationToken": base64.b64encode(f"AWS:{password}".encode()).decode(),
                    "expiresAt": expires,
                    "proxyEndpoint": f"https://{registry_id}.dkr.ecr.{self.region}.amazonaws.com",
                }
            )
        return ActionResult({"authorizationData": auth_data})

    return [_replace(ECRResponse, "get_authorization_token", get_authorization_token)]


def _patch_ecr_image_size() -> list[tuple[Any, str, Any]]:
    from moto.ecr.models import Image

    original = Image.get_image_size_in_bytes

    def get_image_size_in_bytes(self: Any) -> int | None:
        manifest = json.loads(self.image_manifest)
        if isinstance(manifest, dict) and isinstance(manifest.get("layers"), list):
            return sum(int(layer.get("size", 0)) for layer in manifest["layers"])
        return original(self)  # type: ignore[no-any-return]

    return [_replace(Image, "get_image_size_in_bytes", get_image_size_in_bytes)]


def _patch_ecr_batch_delete_image() -> list[tuple[Any, str, Any]]:
    from moto.ecr.models import ECRBackend

    original = ECRBackend.batch_delete_image

    def batch_delete_image(
        self: Any, repository_name: str, registry_id: str | None = None, image_ids: Any = None
    ) -> dict[str, Any]:
        repository = self.repositories.get(repository_name)
        before = {image.get_image_digest() for image in repository.images} if repository is not None else set()
        result: dict[str, Any] = original(self, repository_name, registry_id=registry_id, image_ids=image_ids)
        gone = before - {image.get_image_digest() for image in repository.images} if repository is not None else set()
        if gone and HOOKS.on_ecr_images_deleted is not None:
            HOOKS.on_ecr_images_deleted(self.account_id, self.region_name, repository_name, sorted(gone))
        return result

    return [_replace(ECRBackend, "batch_delete_image", batch_delete_image)]


PATCHES: list[Patch] = [
    Patch(
        "sfn-task-tokens-while-starting",
        "SendTaskSuccess fails with a 500 (AttributeError) while any execution is created but not yet started.",
        _patch_sfn_task_tokens_while_starting,
    ),
    Patch(
        "sfn-normalise-parameters",
        "Task states never translate ASL's PascalCase parameters to boto3's names (nor responses back), so "
        "ecs:runTask fails with States.Runtime, cause 'Cluster'.",
        _patch_sfn_normalisation,
    ),
    Patch(
        "sfn-ecs-run-task-parameters",
        "ecs:runTask drops CapacityProviderStrategy, Tags and EnableECSManagedTags, which AWS accepts.",
        _patch_sfn_ecs_parameters,
    ),
    Patch(
        "sfn-ecs-sync-failure",
        "ecs:runTask.sync succeeds whatever the exit code; AWS fails the state with States.TaskFailed and the "
        "task description (PascalCase, epoch milliseconds) as the Cause.",
        _patch_sfn_ecs_sync,
    ),
    Patch(
        "sfn-ecs-error-names",
        "ecs:runTask reports every ECS API error, throttling included, as States.Runtime (never retried on AWS); AWS "
        "names modelled errors ECS.<code> and the others, throttling among them, ECS.AmazonECSException.",
        _patch_sfn_ecs_error_names,
    ),
    Patch(
        "sfn-parse-cache",
        "Every execution parses its definition again with ANTLR, about 80 ms of CPU each.",
        _patch_sfn_parse_cache,
    ),
    Patch(
        "sfn-json-path-cache",
        "Every JSONPath evaluation builds a new jsonpath-ng parser, about 0.4 ms of CPU each.",
        _patch_sfn_json_path_cache,
    ),
    Patch(
        "sfn-client-reuse",
        "Every Task state builds new boto3 clients, tens of milliseconds of CPU each.",
        _patch_sfn_client_reuse,
    ),
    Patch(
        "ecs-fargate-container-memory",
        "RunTask crashes on a Fargate task definition whose containers have no memory of their own.",
        _patch_ecs_fargate_resources,
    ),
    Patch(
        "ecs-task-lifecycle",
        "ECS tasks start RUNNING, carry no timestamps, exit or stop codes, StopTask stops at once, "
        "StopTask on an unknown task raises a bare Exception (HTTP 500), and concurrent RunTask and "
        "DescribeTasks race on the task table (HTTP 500).",
        _patch_ecs_task_lifecycle,
    ),
    Patch(
        "dynamodb-concurrency",
        "Concurrent requests race: TransactWriteItems deep-copies whole tables to roll back, fails with "
        "'dictionary changed size during iteration' and loses concurrent writes when it rolls back.",
        _patch_dynamodb_concurrency,
    ),
    Patch(
        "logs-page-size",
        "GetLogEvents returns every event up to its limit in one page, however many megabytes; AWS stops a "
        "page at 1 MB, so one page of a task that prints long lines stays small.",
        _patch_logs_page_size,
    ),
    Patch(
        "ec2-cloudformation-vpc-dns",
        "A VPC created by CloudFormation ignores EnableDnsSupport and EnableDnsHostnames, so awsvpc tasks in its "
        "subnets crash RunTask (their network interface has no private DNS name).",
        _patch_ec2_cloudformation_vpc_dns,
    ),
    Patch(
        "firehose-file-extension",
        "S3 objects of a delivery stream are named without the destination's FileExtension (the archive's .gz).",
        _patch_firehose_file_extension,
    ),
    Patch(
        "ecr-authorization-token",
        "GetAuthorizationToken gives everyone the same password (`<account>-auth-token`), expired since 2015; ECR "
        "issues a new token on each call, valid for 12 hours, which its registry then accepts.",
        _patch_ecr_authorization_token,
    ),
    Patch(
        "ecr-image-size",
        "DescribeImages reports an image's imageSizeInBytes as the size of its config blob; ECR reports the sum of "
        "its compressed layers.",
        _patch_ecr_image_size,
    ),
    Patch(
        "ecr-registry-delete",
        "ECR images are records only: BatchDeleteImage forgets them but tells no registry, which would still "
        "serve them (the local ECR's registry deletes them through a hook).",
        _patch_ecr_batch_delete_image,
    ),
    Patch("lambda-invoke-local", "Lambda functions run only in Docker.", _patch_lambda_invoke),
    Patch("events-lambda-targets", "EventBridge rules cannot target Lambda functions.", _patch_events_lambda_targets),
    Patch(
        "lambda-cloudformation-update-layers",
        "A CloudFormation update of a function with a layer of the same stack crashes (its Layers are passed as "
        "objects, not ARNs), so a stack whose template changed cannot be updated.",
        _patch_lambda_cloudformation_update_layers,
    ),
]


def apply_all() -> None:
    for patch in PATCHES:
        patch.apply()


def revert_all() -> None:
    for patch in reversed(PATCHES):
        patch.revert()


def patch_named(name: str) -> Patch:
    return next(p for p in PATCHES if p.name == name)
