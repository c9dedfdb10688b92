"""The task definition cache on moto: concurrent first runs of a new image register it once.

Executions run on moto's Step Functions interpreter in threads, against the in-process moto stack: the claim, the
registration, the cache and MarkProvisioning are real DynamoDB and ECS calls; RunTask and the finalize function
are mocked (moto's Fargate RunTask needs the local stack's agent).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from tests.integration.conftest import invoke
from tests.support.apigw import http_event
from tests.support.functions import load_function
from tests.support.stack import REGION, Stack, render_state_machine
from tests.support.state_machine import Interpreter, Run, local_stack_patches

api = load_function("api")

IMAGE = "registry.example.com/team/brand-new-image:1.0"
CONCURRENT_FIRST_RUNS = 5


def submit(image: str = IMAGE) -> dict[str, Any]:
    """POST /tasks, and the input of the execution it started."""
    response = invoke(api, http_event("POST", "/tasks", body={"image": image, "cpu": 256, "memory": 512}))
    assert response["statusCode"] == 202, response
    task_id = json.loads(response["body"])["task_id"]
    sfn = boto3.client("stepfunctions", region_name=REGION)
    [execution] = [
        e for e in sfn.list_executions(stateMachineArn=Stack().state_machine_arn)["executions"] if e["name"] == task_id
    ]
    return json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])  # type: ignore[no-any-return]


def ran(task_definition_arn: str) -> dict[str, Any]:
    """What runTask.sync returns for a task of this task definition that exited 0."""
    return {
        "TaskArn": f"arn:aws:ecs:{REGION}:123456789012:task/taskrunner/0f6c3a1d2b4e4f5a8c9d0e1f2a3b4c5d",
        "TaskDefinitionArn": task_definition_arn,
        "LastStatus": "STOPPED",
        "Containers": [{"Name": "main", "ExitCode": 0}],
    }


@pytest.fixture
def interpreter(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    with local_stack_patches("sfn-normalise-parameters", "sfn-client-reuse", "dynamodb-concurrency"):
        yield Interpreter(monkeypatch, aws=True)


def definition(stack: Stack, wait_seconds: int = 1) -> dict[str, Any]:
    document = json.loads(render_state_machine(stack.substitutions()))
    for state in document["States"].values():
        if state["Type"] == "Wait" and "Seconds" in state:
            state["Seconds"] = min(state["Seconds"], wait_seconds)
    return document  # type: ignore[no-any-return]


def test_concurrent_first_runs_of_a_new_image_register_one_task_definition(stack: Stack, interpreter: Any) -> None:
    # Given five tasks of an image nobody has run yet, submitted together
    inputs = [submit() for _ in range(CONCURRENT_FIRST_RUNS)]
    family = inputs[0]["task_definition"]["family"]
    assert all("prepared" not in execution_input for execution_input in inputs)
    document = definition(stack)
    responses = {
        "RunTask": ran("(any)"),
        "Finalize": {"StatusCode": 200, "Payload": {"status": "SUCCEEDED"}},
    }

    # When their executions run at the same time
    def execute(execution_input: dict[str, Any]) -> Run:
        return interpreter.run(document, execution_input, responses)

    with ThreadPoolExecutor(CONCURRENT_FIRST_RUNS) as pool:
        runs = list(pool.map(execute, inputs))

    # Then one task definition revision is registered, and every task runs with it
    ecs = boto3.client("ecs", region_name=REGION)
    revisions = ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"]
    assert len(revisions) == 1, revisions
    assert all(run.ended for run in runs), [run.entered for run in runs]
    assert {run.parameters("RunTask")["TaskDefinition"] for run in runs} == set(revisions)
    # and each task was marked PROVISIONING, with the time RunTask may have been called
    for execution_input in inputs:
        task = json.loads(invoke(api, http_event("GET", f"/tasks/{execution_input['task_id']}"))["body"])
        assert task["status"] == "PROVISIONING" and task["provisioning_at"]

    # When the image is submitted again, its execution input carries the task definition, and no ECS call is needed
    again = submit()
    assert again["prepared"] == {"task_definition_arn": revisions[0]}
    assert execute(again).entered == ["HasTaskDefinition", "MarkProvisioning", "RunTask", "Finalize"]
