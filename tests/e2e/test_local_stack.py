"""The whole task runner on the embedded local stack, over HTTP: real state machine, real processes."""

from __future__ import annotations

import gzip
import json
import math
import uuid
from datetime import datetime
from decimal import Decimal

import requests
from taskrunner.fargate import billed_seconds, charge, region_prices

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from taskrunner_local.stack import LocalStack
from tests.support.local_tasks import processes_with, shell, wait_until


def test_the_readme_curl_succeeds_with_60_billed_seconds_and_its_output_in_the_logs(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    # `curl -H "Authorization: Bearer $(cat .taskrunner/admin.key)" -X POST localhost:3000/tasks -d '{...}'` sends
    # the admin key, and the JSON as a form
    response = requests.post(
        f"{stack.api_url}/tasks",
        data=f'{{"image":"{PYTHON_IMAGE}","command":["sh","-c","echo hi"]}}',
        headers={
            "Authorization": f"Bearer {stack.admin.path.read_text().strip()}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/tasks/{response.json()['task_id']}"
    task = api.wait(response.json()["task_id"])
    assert task["status"] == "SUCCEEDED" and task["exit_code"] == 0
    assert task["metering"]["billed_seconds"] == 60
    assert api.logs(task["task_id"]) == ["hi"]


def test_output_reaches_the_logs_api_and_the_s3_archive(stack: LocalStack, api: TaskRunnerClient) -> None:
    marker = f"archived-{uuid.uuid4()}"
    task = api.wait(api.submit(shell(f"echo {marker}; echo line-two >&2"))["task_id"])
    assert task["status"] == "SUCCEEDED"
    # stdout and stderr are read apart, so lines of the two streams are ordered only within each
    assert sorted(api.logs(task["task_id"])) == sorted([marker, "line-two"])
    s3 = stack.client("s3")
    bucket = stack.deployment.outputs["ArchiveBucketName"]

    def archived_messages() -> list[str]:
        messages = []
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for record in _records(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body):
                if record.get("messageType") == "DATA_MESSAGE":
                    messages += [e["message"] for e in record["logEvents"]]
        return messages

    assert wait_until(lambda: marker in archived_messages())


def _records(blob: bytes) -> list[dict]:
    """Firehose concatenates records; each is a (possibly gzipped) CloudWatch Logs JSON document."""
    records, decoder, text = [], json.JSONDecoder(), blob.decode()
    index = 0
    while index < len(text):
        record, index = decoder.raw_decode(text, index)
        records.append(record)
    return records


def test_the_execution_is_named_by_the_task_id_and_runs_ecs_run_task_sync(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    task = api.wait(api.submit(shell("true"))["task_id"])
    sfn = stack.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=stack.deployment.state_machine_arn)["executions"]
    [execution] = [e for e in executions if e["name"] == task["task_id"]]
    assert execution["executionArn"] == task["execution_arn"]
    # the ECS event path may finalize the task a moment before the workflow's own Finalize state ends
    assert wait_until(lambda: sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "SUCCEEDED")
    history = sfn.get_execution_history(executionArn=task["execution_arn"])["events"]
    scheduled = [e["taskScheduledEventDetails"] for e in history if e["type"] == "TaskScheduled"]
    assert {"resourceType": "ecs", "resource": "runTask.sync"} in [
        {"resourceType": s["resourceType"], "resource": s["resource"]} for s in scheduled
    ]
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered")]
    assert entered[-3:] == ["MarkProvisioning", "RunTask", "Finalize"]


def test_a_non_zero_exit_is_failed_with_that_exit_code(stack: LocalStack, api: TaskRunnerClient) -> None:
    task = api.wait(api.submit(shell("echo failing >&2; exit 7"))["task_id"])
    assert task["status"] == "FAILED" and task["exit_code"] == 7
    assert task["stop_code"] == "EssentialContainerExited"
    assert task["metering"]["billed_seconds"] == 60
    assert api.logs(task["task_id"]) == ["failing"]
    # the workflow saw it fail the way AWS reports it: States.TaskFailed, caught into FinalizeTaskFailed
    sfn = stack.client("stepfunctions")
    assert wait_until(lambda: sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "SUCCEEDED")
    history = sfn.get_execution_history(executionArn=task["execution_arn"])["events"]
    failures = [e["taskFailedEventDetails"] for e in history if e["type"] == "TaskFailed"]
    assert any(
        f["error"] == "States.TaskFailed" and json.loads(f["cause"])["Containers"][0]["ExitCode"] == 7 for f in failures
    )
    entered = [e["stateEnteredEventDetails"]["name"] for e in history if e["type"].endswith("StateEntered")]
    assert entered[-1] == "FinalizeTaskFailed"


def test_a_command_that_cannot_start_fails_to_start(api: TaskRunnerClient) -> None:
    task = api.wait(api.submit({"image": BUSYBOX_IMAGE, "command": ["/no/such/program"]})["task_id"])
    assert task["status"] == "FAILED" and task["stop_code"] == "TaskFailedToStart"
    assert task["status_reason"].startswith("CannotStartContainerError")


def test_an_invalid_size_is_422(stack: LocalStack, http: requests.Session) -> None:
    response = http.post(f"{stack.api_url}/tasks", json={"image": "x", "cpu": 256, "memory": 4096}, timeout=30)
    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "memory" and detail["valid_values"] == [512, 1024, 2048]


def test_a_timeout_is_timed_out_and_its_process_is_gone(api: TaskRunnerClient) -> None:
    marker = f"timeout-{uuid.uuid4().hex}"
    task_id = api.submit(shell(f"sleep 300 # {marker}", timeout_seconds=2))["task_id"]
    api.wait(task_id, {"RUNNING"})
    assert wait_until(lambda: processes_with(marker))
    task = api.wait(task_id, timeout=60)
    assert task["status"] == "TIMED_OUT" and task["status_reason"] == "Timed out after 2 s"
    assert task["stop_code"] == "UserInitiated" and task["metering"]["billed_seconds"] == 60
    assert processes_with(marker) == []


def test_a_cancel_is_cancelled_with_user_initiated_and_its_process_is_gone(api: TaskRunnerClient) -> None:
    marker = f"cancel-{uuid.uuid4().hex}"
    # A task that handles SIGTERM: in container mode its shell is PID 1, which ignores the signals it has no
    # handler for (as on ECS), so without the trap it would be killed with 137 once the stop timeout ran out
    script = f"trap 'exit 143' TERM; echo started; sleep 300 & wait $! # {marker}"
    task_id = api.submit(shell(script))["task_id"]
    api.wait(task_id, {"RUNNING"})
    response = api.cancel(task_id)
    assert response.status_code == 202 and response.json()["status"] == "CANCELLED"
    task = api.wait(task_id)
    assert task["status"] == "CANCELLED" and task["stop_code"] == "UserInitiated"
    assert task["exit_code"] == 143  # SIGTERM
    assert task["metering"]["billed_seconds"] == 60
    assert processes_with(marker) == []
    assert api.cancel(task_id).status_code == 409


def test_a_task_that_exceeds_its_memory_fails_with_exit_137(api: TaskRunnerClient) -> None:
    hog = "python3 -c 'b = []\nwhile True: b.append(bytearray(64 * 1024 * 1024))'"
    task = api.wait(api.submit(shell(hog, memory=512))["task_id"], timeout=60)
    assert task["status"] == "FAILED" and task["exit_code"] == 137
    assert task["status_reason"].startswith("OutOfMemoryError")


def test_twenty_concurrent_tasks_all_finish_with_exactly_twenty_metering_records(
    stack: LocalStack, api: TaskRunnerClient
) -> None:
    ids = [api.submit(shell(f"echo task {i}; sleep 0.5"))["task_id"] for i in range(20)]
    tasks = [api.wait(task_id, timeout=120) for task_id in ids]
    assert {t["status"] for t in tasks} == {"SUCCEEDED"}
    ddb = stack.client("dynamodb")
    table = stack.deployment.outputs["TasksTableName"]
    records = []
    for page in ddb.get_paginator("scan").paginate(TableName=table):  # a census, not a request path
        records += [i for i in page["Items"] if i["pk"]["S"].startswith("METER#") and i["task_id"]["S"] in ids]
    assert len(records) == 20
    assert {r["pk"]["S"] for r in records} == {f"METER#{t['ecs_task_arn']}" for t in tasks}


def test_every_finished_tasks_metering_is_the_fargate_formula_on_its_own_timestamps(
    stack: LocalStack, http: requests.Session
) -> None:
    page = http.get(f"{stack.api_url}/tasks", params={"limit": "100"}, timeout=30).json()
    finished = [t for t in page["items"] if t["metering"]]
    assert len(finished) >= 5
    ecs = stack.client("ecs")
    cluster = stack.deployment.outputs["ClusterName"]
    prices = region_prices("us-east-1")
    for task in finished:
        metering = task["metering"]
        if not task["ecs_task_arn"]:
            assert metering["billed_seconds"] == 0
            continue
        [described] = ecs.describe_tasks(cluster=cluster, tasks=[task["ecs_task_arn"]])["tasks"]
        pulled, stopped = described.get("pullStartedAt"), described["stoppedAt"]
        expected = billed_seconds(pulled, stopped)
        if pulled is not None:
            assert expected == max(60, math.ceil((stopped - pulled).total_seconds()))
        assert metering["billed_seconds"] == expected, task["task_id"]
        spec = task["spec"]
        cost = charge(
            billed=expected,
            cpu_units=spec["cpu"],
            memory_mib=spec["memory"],
            ephemeral_storage_gib=spec["ephemeral_storage_gib"],
            architecture=spec["architecture"],
            spot=metering["capacity"] == "SPOT",
            prices=prices,
        ).cost_usd
        assert Decimal(str(metering["cost_usd"])) == cost
        if pulled is not None:
            assert datetime.fromisoformat(metering["window_start"].replace("Z", "+00:00")) == pulled


def test_an_agent_restart_re_adopts_a_container_or_settles_a_process(stack: LocalStack, api: TaskRunnerClient) -> None:
    marker = f"orphan-{uuid.uuid4().hex}"
    task_id = api.submit(shell(f"echo started; sleep 300 # {marker}"))["task_id"]
    api.wait(task_id, {"RUNNING"})
    assert wait_until(lambda: api.logs(task_id) == ["started"], timeout=30)
    stack.restart_agent()
    assert stack.choice is not None
    if stack.choice.mode == "container":
        # a container outlives its agent: the new agent re-adopts it and supervises it to its end
        assert api.get(task_id)["status"] == "RUNNING"
        assert api.cancel(task_id).status_code == 202
        task = api.wait(task_id, timeout=60)
        assert (task["status"], task["stop_code"]) == ("CANCELLED", "UserInitiated")
    else:
        # a host process cannot be adopted (its exit status is its parent's): killed, settled as stopped with the
        # stack, from its own timestamps
        task = api.wait(task_id, timeout=60)
        assert (task["status"], task["stop_code"]) == ("FAILED", "TerminationNotice"), task
        assert "local stack stopped" in task["status_reason"]
    assert task["metering"] is not None
    assert processes_with(marker) == []


def test_the_gateway_rejects_oversized_requests_with_413(stack: LocalStack) -> None:
    body = b"{" + b" " * (stack.config.max_request_bytes + 1) + b"}"
    response = requests.post(f"{stack.api_url}/tasks", data=body, timeout=30)
    assert response.status_code == 413


def test_unknown_routes_are_404_from_the_gateway(stack: LocalStack) -> None:
    assert requests.get(f"{stack.api_url}/nope", timeout=30).status_code == 404


def test_docs_and_openapi_are_served_without_a_key(stack: LocalStack) -> None:
    assert requests.get(f"{stack.api_url}/docs", timeout=30).status_code == 200
    assert "/tasks" in requests.get(f"{stack.api_url}/openapi.json", timeout=30).json()["paths"]
