"""Asynchronous invocations that keep failing end in the function's on-failure destination, as on AWS, in
Lambda's destination record format; nothing is dropped."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from taskrunner_local.stack import LocalStack

#: the asynchronously invoked functions -> the queue template.yaml sends their failed events to
ON_FAILURE_QUEUES = {
    "TaskEventsFunction": "TaskEventsDeadLetterQueue",
    "ScheduledSubmitFunction": "SchedulesDeadLetterQueue",
}


def _records_about(stack: LocalStack, queue: str, marker: str, timeout: float) -> list[dict[str, Any]]:
    sqs = stack.client("sqs")
    url = sqs.get_queue_url(QueueName=stack.deployment.physical_ids[queue].rsplit("/", 1)[-1])["QueueUrl"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            record = json.loads(message["Body"])
            if record.get("requestPayload", {}).get("marker") == marker:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                return [record]
    return []


@pytest.mark.parametrize("function", sorted(ON_FAILURE_QUEUES))
def test_an_event_its_handler_keeps_failing_on_ends_in_the_on_failure_queue(stack: LocalStack, function: str) -> None:
    # Given an event that the function fails on every time (it is not the event the handler parses)
    marker = f"undeliverable-{uuid.uuid4()}"
    name = stack.deployment.function_names[function]
    # When it is invoked asynchronously, as EventBridge and EventBridge Scheduler invoke it
    stack.client("lambda").invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"marker": marker}))
    # Then after the first attempt and two retries, the event is in the function's on-failure queue
    [record] = _records_about(stack, ON_FAILURE_QUEUES[function], marker, timeout=30)
    assert record["version"] == "1.0"
    context = record["requestContext"]
    assert context["condition"] == "RetriesExhausted"
    assert context["approximateInvokeCount"] == 3
    assert context["functionArn"].endswith(f":function:{name}:$LATEST")
    assert context["requestId"]
    assert record["requestPayload"] == {"marker": marker}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"]
    assert record["timestamp"].endswith("Z")
