"""Every log the stack writes has a log group the stack owns, with the stack's retention; the archive's delivery
stream logs its own errors and names its objects for what they are (gzip)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.template import Evaluation, of_type, transformed

RETENTION = {"Ref": "TaskLogRetentionDays"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


def test_every_function_logs_to_a_log_group_of_the_stack_with_its_retention(template: dict[str, Any]) -> None:
    # Given the stack's functions and log groups
    functions = of_type(template, "AWS::Lambda::Function")
    groups = of_type(template, "AWS::Logs::LogGroup")
    evaluation = Evaluation(template)
    by_name = {evaluation.evaluate(g["Properties"].get("LogGroupName")): k for k, g in groups.items()}
    for function_id, function in functions.items():
        # Then the group Lambda writes to (its LoggingConfig's, else /aws/lambda/<name>) is one of the stack's
        written_to = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
        if isinstance(written_to, dict) and set(written_to) == {"Ref"}:
            group_id = written_to["Ref"]
        else:
            name = evaluation.evaluate(written_to or {"Fn::Sub": f"/aws/lambda/${{{function_id}}}"})
            group_id = by_name.get(name, name)
        assert group_id in groups, f"{function_id} logs to {group_id}, which the stack does not create"
        group = groups[group_id]
        # with the stack's retention, deleted with the stack like its other log groups
        assert group["Properties"]["RetentionInDays"] == RETENTION, group_id
        assert group.get("DeletionPolicy") == "Delete", group_id
        assert group.get("UpdateReplacePolicy") == "Delete", group_id
    # and no two functions share one
    written = [str(f["Properties"].get("LoggingConfig")) for f in functions.values()]
    assert len(set(written)) == len(written)


def test_the_archive_delivery_stream_logs_its_errors_and_writes_gz_objects(template: dict[str, Any]) -> None:
    [stream] = of_type(template, "AWS::KinesisFirehose::DeliveryStream").values()
    destination = stream["Properties"]["ExtendedS3DestinationConfiguration"]
    # CloudWatch Logs sends gzip data; Firehose stores it as it is, so the objects are .gz files
    assert destination["CompressionFormat"] == "UNCOMPRESSED"
    assert destination["FileExtension"] == ".gz"
    # Delivery errors go to a log group and stream of the stack, which the delivery role may write to
    options = destination["CloudWatchLoggingOptions"]
    assert options["Enabled"] is True
    [group_id] = [k for k in of_type(template, "AWS::Logs::LogGroup") if options["LogGroupName"] == {"Ref": k}]
    [stream_id] = [k for k in of_type(template, "AWS::Logs::LogStream") if options["LogStreamName"] == {"Ref": k}]
    assert template["Resources"][stream_id]["Properties"]["LogGroupName"] == {"Ref": group_id}
    group = template["Resources"][group_id]
    assert group["Properties"]["RetentionInDays"] == RETENTION
    assert group.get("DeletionPolicy") == "Delete"
    role = template["Resources"]["FirehoseDeliveryRole"]["Properties"]
    writes_logs = [
        s
        for p in role["Policies"]
        for s in p["PolicyDocument"]["Statement"]
        if "logs:PutLogEvents" in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert writes_logs, "the delivery role cannot write its error log"
