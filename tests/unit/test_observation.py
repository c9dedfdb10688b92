"""Reading ECS task descriptions in the three shapes they reach us."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from taskrunner.observation import TaskObservation, parse_timestamp

ARN = "arn:aws:ecs:us-east-1:123456789012:task/taskrunner/0123456789abcdef0123456789abcdef"


def test_sync_output_in_pascal_case_with_epoch_milliseconds():
    obs = TaskObservation.from_description(
        {
            "TaskArn": ARN,
            "LastStatus": "STOPPED",
            "StopCode": "EssentialContainerExited",
            "StoppedReason": "Essential container in task exited",
            "CapacityProviderName": "FARGATE",
            "PullStartedAt": 1795818201000,
            "StoppedAt": 1795818201500,
            "Containers": [{"Name": "sidecar", "ExitCode": 3}, {"Name": "main", "ExitCode": 0}],
        },
        "main",
    )
    assert obs.ecs_task_arn == ARN and obs.stopped and obs.exit_code == 0
    assert obs.pull_started_at == datetime(2026, 11, 27, 22, 23, 21, tzinfo=UTC)
    assert (obs.stopped_at - obs.pull_started_at).total_seconds() == 0.5


def test_event_detail_in_camel_case_with_iso_timestamps():
    obs = TaskObservation.from_description(
        {
            "taskArn": ARN,
            "lastStatus": "RUNNING",
            "startedBy": "01ABC",
            "startedAt": "2026-11-27T22:23:21.250Z",
            "containers": [{"name": "main"}],
        }
    )
    assert obs.started_by == "01ABC" and obs.last_status == "RUNNING" and obs.exit_code is None
    assert obs.started_at == datetime(2026, 11, 27, 22, 23, 21, 250000, tzinfo=UTC)


def test_task_failed_cause_is_parsed_and_other_causes_are_not():
    cause = json.dumps(
        {
            "TaskArn": ARN,
            "LastStatus": "STOPPED",
            "StopCode": "TaskFailedToStart",
            "Containers": [{"Name": "main", "Reason": "CannotStartContainerError"}],
        }
    )
    obs = TaskObservation.from_error_cause(cause, "main")
    assert obs is not None and obs.stop_code == "TaskFailedToStart" and obs.container_reason
    assert TaskObservation.from_error_cause("RunTask failed: capacity", "main") is None
    assert TaskObservation.from_error_cause(json.dumps({"Failures": []}), "main") is None
    assert TaskObservation.from_error_cause(None, "main") is None


def test_timestamps_in_seconds_naive_and_offset_forms():
    assert parse_timestamp(1795818201) == parse_timestamp(1795818201000)
    assert parse_timestamp("2026-11-27T22:23:21") == datetime(2026, 11, 27, 22, 23, 21, tzinfo=UTC)
    assert parse_timestamp("2026-11-27T23:23:21+01:00") == datetime(2026, 11, 27, 22, 23, 21, tzinfo=UTC)
    assert parse_timestamp(None) is None and parse_timestamp("") is None


def test_the_task_id_comes_from_our_ecs_group_before_started_by():
    ours = TaskObservation.from_description(
        {"taskArn": ARN, "group": "taskrunner:01ABC", "startedBy": "AWS Step Functions"}
    )
    assert ours.task_id("taskrunner:") == "01ABC"
    by_started_by = TaskObservation.from_description({"taskArn": ARN, "group": "family:x", "startedBy": "01ABC"})
    assert by_started_by.task_id("taskrunner:") == "01ABC"
