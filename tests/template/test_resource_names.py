"""Names the template gives resources fit their service's limits for every stack name CloudFormation accepts
(up to 128 characters), and names in shared namespaces (the default schedule group) differ between stacks."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.template import Evaluation, of_type, transformed

LONGEST_STACK_NAME = "t" + "-x" * 63 + "y"  # 128 characters, CloudFormation's maximum
#: resource type -> (the property that names it, the service's limit on that name)
NAME_LIMITS = {
    "AWS::Scheduler::ScheduleGroup": ("Name", 64),
    "AWS::Scheduler::Schedule": ("Name", 64),
    "AWS::Lambda::LayerVersion": ("LayerName", 140),
    "AWS::Logs::LogGroup": ("LogGroupName", 512),
    "AWS::ECS::Cluster": ("ClusterName", 255),
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


def test_the_longest_stack_name_is_valid() -> None:
    assert len(LONGEST_STACK_NAME) == 128


@pytest.mark.parametrize("resource_type", sorted(NAME_LIMITS))
def test_names_fit_their_limits_whatever_the_stack_name(template: dict[str, Any], resource_type: str) -> None:
    # Given the longest stack name CloudFormation accepts
    evaluation = Evaluation(template, stack_name=LONGEST_STACK_NAME)
    name_property, limit = NAME_LIMITS[resource_type]
    for logical_id, resource in of_type(template, resource_type).items():
        # Then every name the template sets (where it sets none, CloudFormation generates one that fits)
        name = resource.get("Properties", {}).get(name_property)
        if name is None:
            continue
        assert len(evaluation.evaluate(name)) <= limit, f"{logical_id}.{name_property} may exceed {limit} characters"


def test_the_reconcilers_schedule_in_the_default_group_is_named_apart_for_each_stack(template: dict[str, Any]) -> None:
    # Given two stacks in one account and region (EventBridge Scheduler's default group is shared)
    [schedule] = [
        s["Properties"]
        for s in of_type(template, "AWS::Scheduler::Schedule").values()
        if s["Properties"]["Target"]["Arn"] == {"Fn::GetAtt": ["ReconcilerFunction", "Arn"]}
    ]
    assert "GroupName" not in schedule
    first = Evaluation(template, stack_name="taskrunner", stack_uuid="11111111-2222-3333-4444-555555555555")
    second = Evaluation(template, stack_name="taskrunner-prod", stack_uuid="66666666-7777-8888-9999-000000000000")
    # Then their reconcilers' schedules have different names
    assert first.evaluate(schedule["Name"]) != second.evaluate(schedule["Name"])
