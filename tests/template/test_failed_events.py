"""Events that asynchronously invoked functions still fail on after Lambda's retries are kept, not dropped, and
someone hears about them: on-failure destinations, and alarms on the queues and on the workflow."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.template import Evaluation, actions, of_type, statements, transformed

#: the functions other services invoke asynchronously -> the queue their failed events end in
ASYNC_FUNCTIONS = {
    "TaskEventsFunction": "TaskEventsDeadLetterQueue",  # EventBridge rule
    "ScheduledSubmitFunction": "SchedulesDeadLetterQueue",  # EventBridge Scheduler
}
STATE_MACHINE_ALARMS = {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionThrottled"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


def _alarms(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [a["Properties"] for a in of_type(template, "AWS::CloudWatch::Alarm").values()]


@pytest.mark.parametrize("function", sorted(ASYNC_FUNCTIONS))
def test_failed_async_events_go_to_the_functions_queue(template: dict[str, Any], function: str) -> None:
    queue = {"Fn::GetAtt": [ASYNC_FUNCTIONS[function], "Arn"]}
    # Given the function's asynchronous invocation configuration
    [config] = [
        c["Properties"]
        for c in of_type(template, "AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": function}
    ]
    # Then Lambda retries twice within a bounded age, and then sends the event to the queue
    assert config["MaximumRetryAttempts"] == 2
    assert 60 <= config["MaximumEventAgeInSeconds"] <= 21600
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == queue
    # which the function's role may send to
    role = template["Resources"][f"{function}Role"]["Properties"]
    assert any("sqs:SendMessage" in actions(s) and s["Resource"] == queue for _, s in statements(role["Policies"])), (
        f"{function}'s role cannot send to its on-failure destination"
    )


def test_an_alarm_fires_on_any_message_in_each_failure_queue(template: dict[str, Any]) -> None:
    queues = set(ASYNC_FUNCTIONS.values())
    alarmed = set()
    for alarm in _alarms(template):
        if alarm.get("Namespace") == "AWS/SQS" and alarm["MetricName"] == "ApproximateNumberOfMessagesVisible":
            assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
            [dimension] = alarm["Dimensions"]
            assert dimension["Name"] == "QueueName"
            alarmed.add(dimension["Value"]["Fn::GetAtt"][0])
    assert alarmed == queues


def test_alarms_watch_the_workflow_and_the_api(template: dict[str, Any]) -> None:
    watched = {
        a["MetricName"]
        for a in _alarms(template)
        if a.get("Namespace") == "AWS/States"
        and a["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": "RunTaskStateMachine"}}]
    }
    assert watched == STATE_MACHINE_ALARMS
    api = [a for a in _alarms(template) if a.get("Namespace") == "AWS/ApiGateway"]
    assert [a["MetricName"] for a in api] == ["5xx"]
    assert api[0]["Dimensions"] == [{"Name": "ApiId", "Value": {"Ref": "HttpApi"}}]


def test_every_alarm_notifies_the_alarm_topic_which_emails_only_when_asked(template: dict[str, Any]) -> None:
    [topic_id] = of_type(template, "AWS::SNS::Topic")
    for alarm in _alarms(template):
        assert alarm["AlarmActions"] == [{"Ref": topic_id}], alarm["MetricName"]
        assert alarm["TreatMissingData"] == "notBreaching", alarm["MetricName"]
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    [subscription] = of_type(template, "AWS::SNS::Subscription").values()
    assert subscription["Properties"]["TopicArn"] == {"Ref": topic_id}
    assert subscription["Properties"]["Protocol"] == "email"
    assert not Evaluation(template).condition(subscription["Condition"])
    assert Evaluation(template, {"AlarmEmail": "ops@example.com"}).condition(subscription["Condition"])
