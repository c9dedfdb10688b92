"""The durable core: DynamoDB items and ECS tasks written through, the control plane snapshotted, all read back
into fresh moto backends as a restarted stack reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskrunner_local import moto_patches
from taskrunner_local.persistence.durability import Durability, may_change_control_plane
from taskrunner_local.persistence.snapshots import SnapshotFormatError
from taskrunner_local.persistence.store import StateStore

ACCOUNT, REGION = "123456789012", "us-east-1"


def fresh_moto() -> None:
    """What a new process has: moto's backends, empty."""
    from moto.core.base_backend import BackendDict

    BackendDict.reset()


@pytest.fixture
def patched() -> Iterator[None]:
    fresh_moto()
    moto_patches.apply_all()
    yield
    moto_patches.revert_all()
    fresh_moto()


def durable(folder: Path) -> Durability:
    durability = Durability(StateStore(folder))
    durability.install()
    return durability


def durable_with_table(folder: Path) -> Durability:
    """A durable stack on `folder` whose snapshot holds the table "tasks", empty."""
    durability = durable(folder)
    make_table()
    durability.snapshot()
    return durability


def dynamodb() -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[ACCOUNT][REGION]


def make_table() -> None:
    dynamodb().create_table(
        "tasks",
        schema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        throughput=None,
        attr=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
        global_indexes=None,
        indexes=None,
        streams=None,
        billing_mode="PAY_PER_REQUEST",
        sse_specification=None,
        tags=[],
        deletion_protection_enabled=False,
        warm_throughput=None,
    )


def item(pk: str, sk: str, **extra: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}, **{k: {"S": v} for k, v in extra.items()}}


def restart(durability: Durability, folder: Path) -> Durability:
    durability.revert()
    durability.store.close()
    fresh_moto()
    again = durable(folder)
    assert again.restore()
    return again


def stored_items() -> dict[tuple[str, str], dict[str, Any]]:
    table = dynamodb().get_table("tasks")
    return {(i.hash_key.value, i.range_key.value): i.to_json()["Attributes"] for i in table.all_items()}


def test_given_items_written_through_when_the_stack_restarts_then_every_item_is_back(
    patched: None, tmp_path: Path
) -> None:
    durability = durable_with_table(tmp_path)
    backend = dynamodb()
    backend.put_item("tasks", item("t#1", "task", status="RUNNING"))
    backend.put_item("tasks", item("t#2", "task", status="SUBMITTED"))
    backend.update_item(
        "tasks",
        {"pk": {"S": "t#1"}, "sk": {"S": "task"}},
        update_expression="SET #s = :s",
        expression_attribute_names={"#s": "status"},
        expression_attribute_values={":s": {"S": "SUCCEEDED"}},
    )
    backend.delete_item("tasks", {"pk": {"S": "t#2"}, "sk": {"S": "task"}})
    before = stored_items()

    durability = restart(durability, tmp_path)

    assert stored_items() == before == {("t#1", "task"): item("t#1", "task", status="SUCCEEDED")}


def test_given_a_transaction_that_fails_half_way_then_neither_of_its_items_is_written(
    patched: None, tmp_path: Path
) -> None:
    durability = durable_with_table(tmp_path)
    backend = dynamodb()
    backend.put_item("tasks", item("t#1", "task", status="RUNNING"))
    good = {"Put": {"TableName": "tasks", "Item": item("t#1", "metering", billed="60")}}
    update = {
        "Update": {
            "TableName": "tasks",
            "Key": {"pk": {"S": "t#1"}, "sk": {"S": "task"}},
            "UpdateExpression": "SET #s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":s": {"S": "SUCCEEDED"}},
        }
    }
    original = durability.store.apply
    calls = []

    def crash_on_second_write(changes: Any) -> None:
        calls.append(changes)
        if len(calls) == 2:
            raise OSError("power loss")
        original(changes)

    durability.store.apply = crash_on_second_write  # type: ignore[method-assign]
    with pytest.raises(OSError, match="power loss"):
        backend.transact_write_items([good, update])
    durability.store.apply = original  # type: ignore[method-assign]

    durability = restart(durability, tmp_path)

    assert stored_items() == {("t#1", "task"): item("t#1", "task", status="RUNNING")}


def test_given_a_transaction_when_it_commits_then_both_items_are_back(patched: None, tmp_path: Path) -> None:
    durability = durable_with_table(tmp_path)
    dynamodb().transact_write_items(
        [
            {"Put": {"TableName": "tasks", "Item": item("t#1", "task", status="SUCCEEDED")}},
            {"Put": {"TableName": "tasks", "Item": item("t#1", "metering", billed="60")}},
        ]
    )

    durability = restart(durability, tmp_path)

    assert set(stored_items()) == {("t#1", "task"), ("t#1", "metering")}


def test_given_a_snapshot_of_another_moto_then_restore_says_so(patched: None, tmp_path: Path) -> None:
    durability = durable_with_table(tmp_path)
    durability.store.set_meta("snapshot-format", "moto 0.1, python 2.7")
    durability.revert()
    fresh_moto()
    again = durable(tmp_path)

    with pytest.raises(SnapshotFormatError, match=r"moto 0\.1"):
        again.restore()
    again.revert()


def test_given_an_empty_folder_then_there_is_nothing_to_restore(patched: None, tmp_path: Path) -> None:
    durability = durable(tmp_path)
    assert not durability.restore()
    durability.revert()


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "expected"),
    [
        ("POST", "/", {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.PutItem"}, b"{}", False),
        ("POST", "/", {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.CreateTable"}, b"{}", True),
        ("POST", "/", {"HTTP_X_AMZ_TARGET": "AmazonEC2ContainerServiceV20141113.RunTask"}, b"{}", False),
        ("POST", "/", {"HTTP_X_AMZ_TARGET": "AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition"}, b"", True),
        ("POST", "/", {"HTTP_X_AMZ_TARGET": "AWSStepFunctions.DescribeExecution"}, b"{}", False),
        ("POST", "/", {"CONTENT_TYPE": "application/x-www-form-urlencoded"}, b"Action=SendMessage&X=1", True),
        ("POST", "/", {"CONTENT_TYPE": "application/x-www-form-urlencoded"}, b"Action=GetQueueUrl", False),
        ("PUT", "/bucket/key", {}, b"data", False),
        ("PUT", "/bucket", {}, b"", True),
        ("GET", "/bucket/key", {}, b"", False),
        ("POST", "/2015-03-31/functions/f/invocations", {}, b"{}", False),
    ],
)
def test_which_requests_may_change_the_control_plane(
    method: str, path: str, headers: dict[str, str], body: bytes, expected: bool
) -> None:
    service = (
        "s3"
        if "bucket" in path
        else "lambda"
        if "functions" in path
        else "sqs"
        if "CONTENT_TYPE" in headers
        else {"Dyn": "dynamodb", "Ama": "ecs", "AWS": "states"}[headers["HTTP_X_AMZ_TARGET"][:3]]
    )
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential=test/20261128/us-east-1/{service}/aws4_request, X",
        **headers,
    }
    assert may_change_control_plane(environ, body) is expected


def ecs_task_rows(durability: Durability) -> dict[str, int]:
    """ECS task arn -> the size of its row in the store."""
    from taskrunner_local.persistence.moto_parts import ECS_TASK_KIND

    return {arn: len(blob) for arn, blob in durability.store.all(ECS_TASK_KIND)}


def test_given_ecs_tasks_written_through_then_restarts_neither_grow_their_rows_nor_copy_their_backend(
    patched: None, tmp_path: Path
) -> None:
    from moto.ecs.models import ecs_backends

    from tests.support.ecs import REGION as ECS_REGION
    from tests.support.ecs import EcsAccount

    # Given an account whose cluster holds five tasks, each written through
    durability = durable(tmp_path)
    account = EcsAccount(family="grow")
    tasks = [account.task(f"echo {n}") for n in range(5)]
    durability.snapshot()
    durability.ecs.task_changed(*tasks)
    sizes = ecs_task_rows(durability)
    assert len(sizes) == 5 and max(sizes.values()) < 20_000  # a task, not its backend with every other task
    # When the stack restarts three times, its tasks written again each time (as the agent does)
    for _ in range(3):
        durability = restart(durability, tmp_path)
        backend = ecs_backends[account.account][ECS_REGION]
        restored = [task for cluster in backend.tasks.values() for task in cluster.values()]
        # Then every task is back, in its live backend (not a copy of one), and its row did not grow
        assert sorted(task.task_arn for task in restored) == sorted(sizes)
        assert all(task._backend is backend for task in restored)
        durability.ecs.task_changed(*restored)
        rows = ecs_task_rows(durability)
        assert rows.keys() == sizes.keys()
        assert all(rows[arn] <= sizes[arn] + 100 for arn in rows), (rows, sizes)  # (pickle's memo varies a little)
