"""What template.yaml gives the task definitions' naming (the functions) and their cache (the state machine)."""

from __future__ import annotations

from typing import Any

from tests.support.template import actions, of_type, statements, transformed

ROLES = {
    "TASK_ROLE_ARN": {"Fn::GetAtt": ["TaskRole", "Arn"]},
    "TASK_EXECUTION_ROLE_ARN": {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]},
}


def _allowed(resource: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    return [
        (action, statement.get("Resource"))
        for _, statement in statements(resource)
        if statement.get("Effect") == "Allow"
        for action in actions(statement)
        if action.startswith(prefix)
    ]


def test_every_function_knows_the_roles_its_task_definitions_name() -> None:
    # Families are named after the roles (and log group) their revisions embed: every function names families.
    for name, function in of_type(transformed(), "AWS::Lambda::Function").items():
        variables = function["Properties"]["Environment"]["Variables"]
        assert {key: variables.get(key) for key in ROLES} == ROLES, name


def test_the_state_machine_reads_and_writes_task_records_and_the_cache_with_exactly_four_actions() -> None:
    role = transformed()["Resources"]["RunTaskStateMachineRole"]
    dynamodb = _allowed(role, "dynamodb:")
    assert {action for action, _ in dynamodb} == {
        "dynamodb:GetItem",  # a run that lost the registration claim reads the winner's task definition
        "dynamodb:PutItem",  # the claim
        "dynamodb:DeleteItem",  # a failed registration releases its claim
        "dynamodb:UpdateItem",  # MarkProvisioning, the registered task definition, a finalize failure
    }
    assert {str(resource) for _, resource in dynamodb} == {str({"Fn::GetAtt": ["TasksTable", "Arn"]})}


def test_the_state_machine_no_longer_describes_task_definitions() -> None:
    role = transformed()["Resources"]["RunTaskStateMachineRole"]
    ecs = {action for action, _ in _allowed(role, "ecs:")}
    assert "ecs:DescribeTaskDefinition" not in ecs
    assert {"ecs:RegisterTaskDefinition", "ecs:RunTask"} <= ecs
