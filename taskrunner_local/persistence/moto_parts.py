"""DynamoDB items and ECS tasks, written through to the state store one object at a time.

Both change on every task (a submission, its status changes, its metering record; RunTask, each step of the agent)
and both outgrow a snapshot, so each object is an entity of its own: its after-image is written before the call
that changed it returns. A DynamoDB transaction (the final status and the metering record of a task) is written in
one store transaction: after a crash both are there or neither is.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from moto.core.base_backend import BaseBackend

from taskrunner_local.moto_patches import _replace, dynamodb_lock
from taskrunner_local.persistence.snapshots import dumps, loads
from taskrunner_local.persistence.store import Change, StateStore

ITEM_KIND = "dynamodb-item"
ECS_TASK_KIND = "ecs-task"


def _dynamodb_backends() -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends


class DynamoDBPart:
    """Every item of every table, as DynamoDB JSON, keyed by (account, region, table, hash key, range key)."""

    name = "dynamodb-items"

    def __init__(self, store: StateStore) -> None:
        from moto.dynamodb.models.dynamo_type import Item

        self.store = store
        self.externalized: tuple[type, ...] = (Item,)

    @staticmethod
    def _key(backend: Any, table_name: str, hash_value: Any, range_value: Any) -> str:
        parts = [
            backend.account_id,
            backend.region_name,
            table_name,
            hash_value.to_json(),
            None if range_value is None else range_value.to_json(),
        ]
        return json.dumps(parts, sort_keys=True, separators=(",", ":"))

    def _after_image(self, backend: Any, table_name: str, key: dict[str, Any]) -> Change:
        table = backend.get_table(table_name)
        hash_value, range_value = backend.get_keys_value(table, key)
        item = table.get_item(hash_value, range_value)
        blob = None if item is None else json.dumps(item.to_json()["Attributes"]).encode()
        return ITEM_KIND, self._key(backend, table_name, hash_value, range_value), blob

    @staticmethod
    def _key_of_item(backend: Any, table_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
        table = backend.get_table(table_name)
        key = {table.hash_key_attr: attributes[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = attributes[table.range_key_attr]
        return key

    def install(self) -> list[tuple[Any, str, Any]]:
        from moto.dynamodb.models import DynamoDBBackend

        part = self
        put_item, update_item = DynamoDBBackend.put_item, DynamoDBBackend.update_item
        delete_item, transact_write_items = DynamoDBBackend.delete_item, DynamoDBBackend.transact_write_items

        def written_through(original: Callable[..., Any], key_of: Callable[..., dict[str, Any]]) -> Any:
            def method(self: Any, table_name: str, *args: Any, **kwargs: Any) -> Any:
                with dynamodb_lock(self):
                    result = original(self, table_name, *args, **kwargs)
                    part.store.apply([part._after_image(self, table_name, key_of(self, table_name, args, kwargs))])
                return result

            method.__name__ = original.__name__
            return method

        def item_key(backend: Any, table_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            attributes = args[0] if args else kwargs["item_attrs"]
            return part._key_of_item(backend, table_name, attributes)

        def given_key(backend: Any, table_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            return dict(args[0] if args else kwargs["key"])

        def transact(self: Any, transact_items: list[dict[str, Any]]) -> None:
            # The writes inside (put/update/delete above) join this one store transaction: all or nothing.
            with dynamodb_lock(self), part.store.transaction():
                transact_write_items(self, transact_items)

        return [
            _replace(DynamoDBBackend, "put_item", written_through(put_item, item_key)),
            _replace(DynamoDBBackend, "update_item", written_through(update_item, given_key)),
            _replace(DynamoDBBackend, "delete_item", written_through(delete_item, given_key)),
            _replace(DynamoDBBackend, "transact_write_items", transact),
        ]

    def restore(self) -> None:
        """Every table's items back from the store (the snapshot holds the tables, with their items left out);
        items of tables that no longer exist are dropped."""
        backends = _dynamodb_backends()
        tables: dict[tuple[str, str, str], Any] = {}
        for account, regions in backends.items():
            for region, backend in regions.items():
                for name, table in backend.tables.items():
                    table.items = defaultdict(dict)
                    tables[(account, region, name)] = table
        orphans: list[Change] = []
        for key, blob in self.store.all(ITEM_KIND):
            account, region, table_name, _hash, _range = json.loads(key)
            table = tables.get((account, region, table_name))
            if table is None:
                orphans.append((ITEM_KIND, key, None))
                continue
            table.put_item(json.loads(blob), overwrite=True)
        self.store.apply(orphans)


class EcsTasksPart:
    """Every ECS task, pickled whole after each change: RunTask, StopTask, and each step of the Fargate agent
    (which changes tasks in place and calls `task_changed`)."""

    name = "ecs-tasks"

    def __init__(self, store: StateStore) -> None:
        from moto.ecs.models import Task

        self.store = store
        self.externalized: tuple[type, ...] = (Task,)
        # A task is pickled and written under one lock, so that the last change of a task is the last written.
        self._lock = threading.Lock()

    @staticmethod
    def _cluster_name(task: Any) -> str:
        return str(task.cluster_arn).rsplit("/", 1)[-1]

    def task_changed(self, *tasks: Any) -> None:
        """Write these tasks' current state through (the agent calls this after every change it makes)."""
        with self._lock:
            changes: list[Change] = []
            for task in tasks:
                account, region = task.task_arn.split(":")[4], task.task_arn.split(":")[3]
                # its own backend (moto's Task keeps a reference to it) is left out, and given back at restore
                blob = dumps((account, region, self._cluster_name(task), task), externalized=(BaseBackend,))
                changes.append((ECS_TASK_KIND, task.task_arn, blob))
            self.store.apply(changes)

    def install(self) -> list[tuple[Any, str, Any]]:
        from moto.ecs.models import EC2ContainerServiceBackend

        part = self
        run_task, start_task, stop_task = (
            EC2ContainerServiceBackend.run_task,
            EC2ContainerServiceBackend.start_task,
            EC2ContainerServiceBackend.stop_task,
        )

        def launching(original: Callable[..., list[Any]]) -> Any:
            def method(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
                tasks = original(self, *args, **kwargs)
                part.task_changed(*tasks)
                return tasks

            method.__name__ = original.__name__
            return method

        def stopping(self: Any, *args: Any, **kwargs: Any) -> Any:
            task = stop_task(self, *args, **kwargs)
            part.task_changed(task)
            return task

        return [
            _replace(EC2ContainerServiceBackend, "run_task", launching(run_task)),
            _replace(EC2ContainerServiceBackend, "start_task", launching(start_task)),
            _replace(EC2ContainerServiceBackend, "stop_task", stopping),
        ]

    def restore(self) -> None:
        """Every ECS task back into its cluster (the snapshot holds the clusters, with their tasks left out)."""
        from moto.ecs.models import ecs_backends

        for regions in ecs_backends.values():
            for backend in regions.values():
                backend.tasks = {}
        for _arn, blob in self.store.all(ECS_TASK_KIND):
            account, region, cluster_name, task = loads(blob)
            backend = ecs_backends[account][region]
            task._backend = backend
            backend.tasks.setdefault(cluster_name, {})[task.task_arn] = task
