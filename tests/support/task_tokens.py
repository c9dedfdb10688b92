"""Executions on moto's interpreter (tests/support/state_machine.py) that wait for task tokens and call Lambda functions,
for integration tests of the fair queue.

- `deliver_task_tokens`: SendTaskSuccess reaches the executions the interpreter runs. moto's default Step Functions
  backend (the one `mock_aws` serves without `execute_state_machine`) accepts SendTaskSuccess and drops it; here it
  completes the waiting Task state of whichever running execution holds the token, as Step Functions does, and answers
  InvalidToken (or TaskTimedOut) otherwise.
- `functions_in_process`: `lambda:invoke` states call the repository's handlers in this process: each named
  function exists in moto's Lambda, and the local stack's patch hands its invocations to the handler module.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto.core.exceptions import AWSError
from moto.stepfunctions.models import StepFunctionBackend
from moto.stepfunctions.parser.asl.eval.callback.callback import (
    CallbackNotifyConsumerError,
    CallbackOutcomeSuccess,
    CallbackPoolManager,
)

from taskrunner_local.moto_patches import HOOKS
from tests.support.lambda_context import LambdaContext
from tests.support.stack import REGION
from tests.support.state_machine import local_stack_patches


class InvalidToken(AWSError):
    TYPE = "InvalidToken"
    STATUS = 400


class TaskTimedOut(AWSError):
    TYPE = "TaskTimedOut"
    STATUS = 400


def deliver_task_tokens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Route SendTaskSuccess to the interpreter's executions (until the test ends). Returns the tokens delivered, in
    order."""
    pools: weakref.WeakSet[CallbackPoolManager] = weakref.WeakSet()
    delivered: list[str] = []
    init = CallbackPoolManager.__init__

    def remembered(self: CallbackPoolManager, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        pools.add(self)

    def send_task_success(self: StepFunctionBackend, task_token: str, outcome: str) -> None:
        for pool in list(pools):
            try:
                if pool.notify(task_token, CallbackOutcomeSuccess(callback_id=task_token, output=outcome)):
                    delivered.append(task_token)
                    return
            except CallbackNotifyConsumerError as gone:
                raise TaskTimedOut("Task Timed Out") from gone
        raise InvalidToken("Invalid Token")

    monkeypatch.setattr(CallbackPoolManager, "__init__", remembered)
    monkeypatch.setattr(StepFunctionBackend, "send_task_success", send_task_success)
    return delivered


@contextmanager
def functions_in_process(monkeypatch: pytest.MonkeyPatch, handlers: Mapping[str, ModuleType]) -> Iterator[None]:
    """Lambda functions named as the keys of `handlers` (the stack's substitutions name them), whose invocations run
    the handler modules here, in the invoking thread."""
    role = boto3.client("iam", region_name=REGION).create_role(
        RoleName="functions-in-process", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )["Role"]["Arn"]
    lambdas = boto3.client("lambda", region_name=REGION)
    for name in handlers:
        lambdas.create_function(
            FunctionName=name,
            Runtime="python3.13",
            Role=role,
            Handler="app.lambda_handler",
            Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
        )

    def invoke(name: str, payload: bytes, kind: str) -> tuple[bytes, str | None]:
        try:
            result = handlers[name].lambda_handler(json.loads(payload or b"{}"), LambdaContext(function_name=name))
        except Exception as exc:  # Lambda reports an unhandled error in its own shape
            return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}).encode(), "Unhandled"
        return json.dumps(result).encode(), None

    monkeypatch.setattr(HOOKS, "invoke_lambda", invoke)
    with local_stack_patches("lambda-invoke-local"):
        yield
