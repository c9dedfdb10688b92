"""Each function's role grants exactly the actions its code path calls, listed here by hand.

How the table was made: for each handler (functions/<name>/app.py), the layer's code it reaches
(layers/common/taskrunner: service.py, schedules.py, reconcile.py, idempotency.py) and the boto3 calls the adapters
make for it (adapters.py), plus what Lambda itself does for the function (its on-failure destination). A new call
in the code needs a new row here, and the test says which function lacks it.

DynamoDB: TransactWriteItems (finalize: the metering record and the final status) is authorized as the PutItem and
UpdateItem it contains; listings query an index and then read the base items with BatchGetItem.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.template import actions, statements, transformed

#: what a function does with a task record: read it, create it (PutItem), move its status (UpdateItem)
TASK_RECORDS = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}
#: listing tasks or schedules: query an index, then read the items it names
LISTING = {"dynamodb:Query", "dynamodb:BatchGetItem"}
#: finding a task's ECS task (by startedBy, else by group among its family's tasks) and stopping it
ECS_FIND_AND_STOP = {"ecs:ListTasks", "ecs:DescribeTasks", "ecs:StopTask"}
#: the fair queue's dispatch, after a slot is given back: the tenant's queued tasks (an index, then their items), a
#: grant (a TransactWriteItems of two UpdateItems), and resuming the granted task's workflow with its task token
DISPATCH = LISTING | {"dynamodb:GetItem", "dynamodb:UpdateItem", "states:SendTaskSuccess"}

ALLOWED_ACTIONS: dict[str, set[str]] = {
    # tasks, schedules, usage and logs over HTTP; Idempotency-Key through Powertools (get/put/update/delete);
    # a cancel gives back a slot and dispatches
    "ApiFunction": TASK_RECORDS
    | LISTING
    | ECS_FIND_AND_STOP
    | DISPATCH
    | {
        "dynamodb:DeleteItem",  # schedules are deleted; idempotency records of failed calls are deleted
        "states:StartExecution",
        "states:StopExecution",  # cancel
        "logs:GetLogEvents",
        "scheduler:CreateSchedule",
        "scheduler:UpdateSchedule",
        "scheduler:DeleteSchedule",
        "iam:PassRole",  # the scheduler's role, to EventBridge Scheduler
    },
    # final status and metering; when the workflow lost the ECS task, it looks for it (it never stops one)
    # and drops a recorded task definition ECS refuses to run (deregistered)
    # and gives back the task's slot, then dispatches its tenant's queue
    "FinalizeFunction": TASK_RECORDS | DISPATCH | {"dynamodb:DeleteItem", "ecs:ListTasks", "ecs:DescribeTasks"},
    # timeout: TIMED_OUT, then find and stop the ECS task (it writes no metering record)
    "StopTaskFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem"} | ECS_FIND_AND_STOP,
    # ECS events carry the ECS task ARN: RUNNING, finalize, stop a task cancelled meanwhile
    # (a finalize gives back the task's slot and dispatches)
    "TaskEventsFunction": TASK_RECORDS | DISPATCH | {"ecs:StopTask", "sqs:SendMessage"},
    # a scheduled run: the schedule's active runs (an index), cancel replaced runs, submit
    "ScheduledSubmitFunction": TASK_RECORDS
    | LISTING
    | ECS_FIND_AND_STOP
    | DISPATCH
    | {"states:StartExecution", "states:StopExecution", "sqs:SendMessage"},
    # tasks by status (an index), their executions, their ECS tasks; settles them through finalize
    # and every tenant's queue: its counters repaired, dispatched; a queued task whose execution ended started again
    "ReconcilerFunction": TASK_RECORDS
    | LISTING
    | ECS_FIND_AND_STOP
    | DISPATCH
    | {"states:DescribeExecution", "states:StopExecution", "states:StartExecution"},
    # the state machine's WaitForSlot: a queued task's token, then its tenant's dispatch
    "QueueFunction": DISPATCH,
    # the HTTP API's authorizer: a key's item (APIKEY#<sha256>) and its tenant's (enabled?), by key; nothing else
    "AuthorizerFunction": {"dynamodb:GetItem"},
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


def _granted(template: dict[str, Any], function: str) -> dict[str, list[dict[str, Any]]]:
    """Action -> the statements of the function's role that allow it."""
    role = template["Resources"][f"{function}Role"]["Properties"]
    granted: dict[str, list[dict[str, Any]]] = {}
    for _, statement in statements(role.get("Policies", [])):
        if statement.get("Effect") == "Allow":
            for action in actions(statement):
                granted.setdefault(action, []).append(statement)
    return granted


def test_the_table_covers_every_function(template: dict[str, Any]) -> None:
    functions = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}
    assert functions == set(ALLOWED_ACTIONS)


@pytest.mark.parametrize("function", sorted(ALLOWED_ACTIONS))
def test_no_function_is_granted_an_action_its_code_does_not_call(template: dict[str, Any], function: str) -> None:
    extra = set(_granted(template, function)) - ALLOWED_ACTIONS[function]
    assert not extra, f"{function} is granted actions it never calls: {sorted(extra)}"


@pytest.mark.parametrize("function", sorted(ALLOWED_ACTIONS))
def test_every_function_is_granted_what_its_code_calls(template: dict[str, Any], function: str) -> None:
    missing = ALLOWED_ACTIONS[function] - set(_granted(template, function))
    assert not missing, f"{function} lacks actions its code calls: {sorted(missing)}"


@pytest.mark.parametrize("function", sorted(ALLOWED_ACTIONS))
def test_dynamodb_actions_name_their_table_and_queries_only_indexes(template: dict[str, Any], function: str) -> None:
    for action, granting in _granted(template, function).items():
        if not action.startswith("dynamodb:"):
            continue
        for statement in granting:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert "*" not in resources, (function, action)
            text = str(resources)
            if action == "dynamodb:Query":
                assert all("/index/" in str(r) for r in resources), f"{function} may query a base table: {text}"
            else:
                assert "/index/" not in text, f"{function}: {action} on an index: {text}"
