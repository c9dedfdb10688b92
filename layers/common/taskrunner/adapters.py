"""The ports of `taskrunner.ports`, implemented with boto3 (DynamoDB, Step Functions, ECS, CloudWatch Logs)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from taskrunner.errors import (
    InvalidParameter,
    OrchestrationUnavailable,
    ScheduleAlreadyExists,
    ScheduleNotFound,
    StaleStatus,
    TaskAlreadyExists,
)
from taskrunner.fair_queue import COUNTERS, TenantLoad, cpu_limit, memory_limit, quotas_from_item
from taskrunner.models import CONTAINER_NAME, LogEvent, Metering, Slot, Task, TaskStatus
from taskrunner.observability import logger
from taskrunner.observation import TaskObservation
from taskrunner.schedules import START_DATE_PAST_LIMIT, Schedule, ScheduleRun
from taskrunner.service import execution_arn_for, usage_day
from taskrunner.tenant_store import TENANTS_PARTITION
from taskrunner.tenants import tenant_key

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

#: Keys only: a tenant's tasks, newest first (sharded), and its schedules, by name.
LISTING_INDEX = "gsi1"
#: Keys and `metering`: a tenant's tasks in one status (sharded; the reconciler's "unmetered only" filter runs on the
#: index), and its metering records by day (sharded; the usage query sums their `metering`). A task's entry moves
#: here at every status change anyway, so the metering it gains when it is finalized costs no extra index write.
STATUS_AND_USAGE_INDEX = "gsi2"
#: Keys only: one schedule's runs, newest first. Not sharded: a run writes its entry once, when it is created, and a
#: schedule starts runs once a minute at most (plus manual runs), far below a partition's 1,000 writes a second.
SCHEDULE_RUNS_INDEX = "gsi3"
#: How many partitions a tenant's tasks (gsi1), tasks in one status (gsi2) and metering records (gsi2) are spread
#: over, by a hash of the task id. DynamoDB gives one partition of a table or an index at most 1,000 write units a
#: second, and a throttled index throttles the table writes that update it; every task of a tenant used to write the
#: same few index partitions. With SHARDS = 8 a tenant has 8,000 WCU/s on each: its busiest, a status every task
#: enters and leaves (two one-unit index writes a task), takes 4,000 tasks/s, 200 times Fargate's default launch
#: rate (20 tasks/s). The price: every listing queries all SHARDS partitions (at once, in threads). Changing SHARDS
#: moves entries to other partitions, so every item's index keys would have to be rewritten: it is fixed.
SHARDS = 8
BATCH_GET_KEYS = 100  # BatchGetItem's limit on keys a call
#: BatchGetItem calls for keys DynamoDB leaves unprocessed (throttling), 50 ms apart and doubling: 0.75 s of waiting
BATCH_GET_ATTEMPTS = 5
#: CloudWatch Logs' forward and backward tokens of GetLogEvents: a direction and a 56-digit position.
LOG_TOKEN = re.compile(r"[fb]/[0-9]{56}")
MAX_KEY_CHARS = 1024  # DynamoDB's limit for a sort key; every key this table writes is far shorter
#: the task item's attribute that records the slot a task holds of its tenant's quota (the state machine's
#: MarkProvisioning reads it: a QUEUED task moves on only once it holds one)
SLOT_ATTRIBUTE = "slot_held"
#: TransactWriteItems calls for a transaction cancelled only by conflicts with other transactions on its items (the
#: tenant item is shared by every admission and release of the tenant) or by throttling: 20 ms apart, doubling, jittered
TRANSACTION_ATTEMPTS = 6


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _to_dynamo(value: Any) -> Any:
    """JSON-compatible python → DynamoDB-compatible python (floats as Decimal)."""
    return json.loads(json.dumps(value, default=str), parse_float=Decimal)


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def _serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in _to_dynamo(item).items()}


def _deserialize(item: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _from_dynamo({k: _deserializer.deserialize(v) for k, v in item.items()})
    return result


def task_key(task_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"TASK#{task_id}"}, "sk": {"S": "TASK"}}


def shard_of(task_id: str) -> int:
    """The shard of a task's index entries and of its metering record's: a hash of the task id, the same in every
    process and every release (Python's own hash() of a string changes from process to process)."""
    return zlib.crc32(task_id.encode()) % SHARDS


def sharded(partition: str, task_id: str) -> str:
    """The shard of `partition` that holds task `task_id`'s entry."""
    return f"{partition}#{shard_of(task_id)}"


def shards(partition: str) -> list[str]:
    """Every shard of `partition`: what a listing of it queries."""
    return [f"{partition}#{shard}" for shard in range(SHARDS)]


def tasks_partition(tenant: str) -> str:
    return f"TENANT#{tenant}#TASKS"


def status_partition(tenant: str, status: TaskStatus | str) -> str:
    return f"TENANT#{tenant}#STATUS#{TaskStatus(status).value}"


def usage_partition(tenant: str) -> str:
    return f"TENANT#{tenant}#USAGE"


def schedule_runs_partition(tenant: str, schedule: str) -> str:
    return f"TENANT#{tenant}#SCHEDULE#{schedule}"


def schedules_partition(tenant: str) -> str:
    return f"TENANT#{tenant}#SCHEDULES"


def schedule_key(tenant: str, name: str) -> dict[str, Any]:
    return {"pk": {"S": f"SCHEDULE#{tenant}#{name}"}, "sk": {"S": "SCHEDULE"}}


def _listing(index: str, partition: str, order: str, **criteria: object) -> str:
    """What names a listing in its tokens: the index, the partition (before sharding), the order and the criteria."""
    return " ".join([index, partition, order, *(f"{name}={value}" for name, value in criteria.items())])


def _encode_token(listing: str, position: str) -> str:
    token = json.dumps({"listing": listing, "after": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _decode_token(token: str, listing: str) -> str:
    """The position in a token that `listing` issued: the index sort key of the last entry it reached (the next page
    starts after it, in every shard). A token of another listing, or anything else, is the client's error."""
    try:
        padded = token + "=" * (-len(token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not (
            isinstance(decoded, dict)
            and set(decoded) == {"listing", "after"}
            and decoded["listing"] == listing
            and isinstance(decoded["after"], str)
            and 0 < len(decoded["after"]) <= MAX_KEY_CHARS
        ):
            raise ValueError("not a token of this listing")
    except (ValueError, RecursionError, binascii.Error) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidParameter("next_token", "is not a token this listing issued") from exc
    return str(decoded["after"])


_Result = TypeVar("_Result")


@cache
def _shard_threads() -> ThreadPoolExecutor:
    """Threads that query a listing's shards at once: one round trip a page rather than SHARDS."""
    return ThreadPoolExecutor(max_workers=SHARDS, thread_name_prefix="taskrunner-shards")


def _each(partitions: Sequence[str], query: Callable[[str], _Result]) -> list[_Result]:
    if len(partitions) == 1:
        return [query(partitions[0])]
    return list(_shard_threads().map(query, partitions))


def _index_page(
    ddb: Any,
    table: str,
    index: str,
    partitions: Sequence[str],
    *,
    limit: int,
    newest_first: bool,
    after: str | None,
    since: str | None = None,
    filter_expression: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a listing of `index` over `partitions` (a partition's shards), in sort key order: at most `limit`
    entries (each item's index projection) and the position the next page starts after (None: nothing is left).

    Every partition is queried once, for `limit` entries past `after` (and, oldest first, from `since` on). A partition
    that has more stopped at some position, and another may hold entries before it that it has not read yet: the
    entries past the nearest such stop are left to the next page, so that every entry comes exactly once. A filter
    may leave a page short, even empty, while a position follows."""
    pk, sk = f"{index}pk", f"{index}sk"

    assert since is None or not newest_first, "`since` bounds oldest-first listings only"

    def query(partition: str) -> tuple[list[dict[str, Any]], str | None]:
        condition, values = "#pk = :pk", {":pk": {"S": partition}}
        if after is not None and (since is None or after >= since):
            condition += f" AND #sk {'<' if newest_first else '>'} :start"
            values[":start"] = {"S": after}
        elif since is not None:  # the first page (or a position from before `since`)
            condition += " AND #sk >= :start"
            values[":start"] = {"S": since}
        request: dict[str, Any] = {
            "TableName": table,
            "IndexName": index,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#pk": pk, **({"#sk": sk} if ":start" in values else {})},
            "ExpressionAttributeValues": values,
            "ScanIndexForward": not newest_first,
            "Limit": limit,
        }
        if filter_expression:
            request["FilterExpression"] = filter_expression
        response = ddb.query(**request)
        stop = response.get("LastEvaluatedKey")
        return response.get("Items", []), (stop[sk]["S"] if stop else None)

    results = _each(partitions, query)
    stops = [stop for _, stop in results if stop is not None]
    reached = (max(stops) if newest_first else min(stops)) if stops else None  # every partition is read up to here
    entries = [
        entry
        for found, _ in results
        for entry in found
        if reached is None or (entry[sk]["S"] >= reached if newest_first else entry[sk]["S"] <= reached)
    ]
    entries.sort(key=lambda entry: str(entry[sk]["S"]), reverse=newest_first)
    if len(entries) > limit:
        entries = entries[:limit]
        return entries, str(entries[-1][sk]["S"])
    return entries, reached


def _item_key(entry: dict[str, Any]) -> tuple[str, str]:
    return str(entry["pk"]["S"]), str(entry["sk"]["S"])


def _batch_get(ddb: Any, table: str, entries: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The items of index `entries` that exist, by (pk, sk), read with BatchGetItem, 100 keys a call, asking again
    for the keys DynamoDB leaves unprocessed. The reads are consistent: an index entry is written after its item,
    and an eventually consistent read could miss the item an entry names, or see it as it was."""
    keys = list({_item_key(entry): {"pk": entry["pk"], "sk": entry["sk"]} for entry in entries}.values())
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for start in range(0, len(keys), BATCH_GET_KEYS):
        pending: dict[str, Any] = {table: {"Keys": keys[start : start + BATCH_GET_KEYS], "ConsistentRead": True}}
        for attempt in range(BATCH_GET_ATTEMPTS):
            if attempt:
                time.sleep(0.05 * 2 ** (attempt - 1))
            response = ddb.batch_get_item(RequestItems=pending)
            for item in response.get("Responses", {}).get(table, []):
                found[_item_key(item)] = item
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                break
        else:
            left = len(pending[table]["Keys"])
            raise RuntimeError(f"DynamoDB left {left} keys unprocessed after {BATCH_GET_ATTEMPTS} BatchGetItem calls")
    return found


class DynamoTaskStore:
    def __init__(self, table: str, client: Any) -> None:
        self.table = table
        self.ddb = client

    # -- items

    def _task_item(self, task: Task) -> dict[str, Any]:
        data = task.model_dump(mode="json", exclude_none=True)
        data.update(
            pk=f"TASK#{task.task_id}",
            sk="TASK",
            gsi1pk=sharded(tasks_partition(task.tenant), task.task_id),
            gsi1sk=task.task_id,
            gsi2pk=self.status_key(task, task.status),
            gsi2sk=task.task_id,
        )
        if task.schedule:
            data.update(gsi3pk=schedule_runs_partition(task.tenant, task.schedule), gsi3sk=task.task_id)
        if task.slot_held is not None:  # the fair queue's bookkeeping, which responses leave out
            data[SLOT_ATTRIBUTE] = task.slot_held.model_dump()
        if task.queue_token is not None:
            data["queue_token"] = task.queue_token
        return data

    @staticmethod
    def _task(item: dict[str, Any]) -> Task:
        return Task.model_validate(_deserialize(item))

    def _listed(
        self, entries: list[dict[str, Any]], status: TaskStatus | None, *, unmetered_only: bool = False
    ) -> list[Task]:
        """The tasks of listed index entries, in their order, read from the table. The index is eventually
        consistent: a task whose status moved on from `status` since (or that gained its metering, when only
        unmetered ones are listed) is left out; its new status lists it."""
        found = _batch_get(self.ddb, self.table, entries)
        tasks = [self._task(found[key]) for key in map(_item_key, entries) if key in found]
        return [
            task
            for task in tasks
            if (status is None or task.status is status) and not (unmetered_only and task.metering is not None)
        ]

    def _set_clause(self, changes: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets: list[str] = []
        for i, (field, value) in enumerate(changes.items()):
            names[f"#f{i}"] = field
            values[f":v{i}"] = _serializer.serialize(
                _to_dynamo(value.isoformat() if isinstance(value, datetime) else value)
            )
            sets.append(f"#f{i} = :v{i}")
        return ", ".join(sets), names, values

    def _status_update(self, task: Task, new_status: TaskStatus, changes: dict[str, Any]) -> dict[str, Any]:
        clause, names, values = self._set_clause(
            {**changes, "status": new_status.value, "gsi2pk": self.status_key(task, new_status)}
        )
        names["#status"] = "status"
        values[":expected"] = {"S": task.status.value}
        return {
            "TableName": self.table,
            "Key": task_key(task.task_id),
            "UpdateExpression": f"SET {clause}",
            "ConditionExpression": "#status = :expected",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    # -- TaskStore

    def create(self, task: Task) -> None:
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item=_serialize(self._task_item(task)),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise TaskAlreadyExists(task.task_id) from exc
            raise

    def get(self, task_id: str) -> Task | None:
        item = self.ddb.get_item(TableName=self.table, Key=task_key(task_id), ConsistentRead=True).get("Item")
        return self._task(item) if item else None

    def list_tasks(
        self, tenant: str, status: TaskStatus | None, limit: int, next_token: str | None, schedule: str | None = None
    ) -> tuple[list[Task], str | None]:
        if schedule is not None:  # a schedule's runs; in one status: its runs, filtered once read from the table
            index, partitions = SCHEDULE_RUNS_INDEX, [schedule_runs_partition(tenant, schedule)]
            listing = _listing(index, partitions[0], "newest first", status=status)
        elif status is None:
            index, partitions = LISTING_INDEX, shards(tasks_partition(tenant))
            listing = _listing(index, tasks_partition(tenant), "newest first")
        else:
            index, partitions = STATUS_AND_USAGE_INDEX, shards(status_partition(tenant, status))
            listing = _listing(index, status_partition(tenant, status), "newest first")
        after = _decode_token(next_token, listing) if next_token else None
        entries, position = _index_page(
            self.ddb, self.table, index, partitions, limit=limit, newest_first=True, after=after
        )
        return self._listed(entries, status), _encode_token(listing, position) if position else None

    def list_in_status(
        self,
        tenant: str,
        status: TaskStatus,
        limit: int,
        next_token: str | None,
        *,
        created_since: str | None = None,
        unmetered_only: bool = False,
    ) -> tuple[list[Task], str | None]:
        partition = status_partition(tenant, status)
        listing = _listing(
            STATUS_AND_USAGE_INDEX, partition, "oldest first", since=created_since, unmetered_only=unmetered_only
        )
        after = _decode_token(next_token, listing) if next_token else None
        entries, position = _index_page(
            self.ddb,
            self.table,
            STATUS_AND_USAGE_INDEX,
            shards(partition),
            limit=limit,
            newest_first=False,  # oldest first: the tasks most likely to be stuck
            after=after,
            since=created_since,
            filter_expression="attribute_not_exists(metering)" if unmetered_only else None,
        )
        tasks = self._listed(entries, status, unmetered_only=unmetered_only)
        return tasks, _encode_token(listing, position) if position else None

    def transition(self, task: Task, new_status: TaskStatus, changes: dict[str, Any]) -> Task:
        try:
            response = self.ddb.update_item(**self._status_update(task, new_status, changes), ReturnValues="ALL_NEW")
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise StaleStatus(f"task {task.task_id} is no longer {task.status}") from exc
            raise
        return self._task(response["Attributes"])

    def update(self, task: Task, changes: dict[str, Any]) -> Task:
        clause, names, values = self._set_clause(changes)
        names["#status"] = "status"
        values[":expected"] = {"S": task.status.value}
        try:
            response = self.ddb.update_item(
                TableName=self.table,
                Key=task_key(task.task_id),
                UpdateExpression=f"SET {clause}",
                ConditionExpression="#status = :expected",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise StaleStatus(f"task {task.task_id} is no longer {task.status}") from exc
            raise
        return self._task(response["Attributes"])

    def finalize(
        self, task: Task, new_status: TaskStatus, changes: dict[str, Any], metering_key: str, metering: Metering
    ) -> Task:
        now = changes.get("updated_at") or datetime.now(UTC)
        metering_json = metering.model_dump(mode="json")
        update = self._status_update(task, new_status, {**changes, "metering": metering_json})
        update["ConditionExpression"] += " AND attribute_not_exists(metering)"
        record = {
            "pk": f"METER#{metering_key}",
            "sk": "METER",
            "gsi2pk": sharded(usage_partition(task.tenant), task.task_id),
            "gsi2sk": f"{usage_day(metering, now).isoformat()}#{task.task_id}",
            "task_id": task.task_id,
            "tenant": task.tenant,
            "metering": metering_json,
            "recorded_at": now.isoformat(),
        }
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": _serialize(record),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {"Update": update},
        ]
        # What the task took of its tenant's quota goes back in the same transaction: exactly once, since the
        # metering record is written once.
        if task.slot_held is not None:
            update["ConditionExpression"] += f" AND attribute_exists({SLOT_ATTRIBUTE})"
            items.append({"Update": self._tenant_update(task.tenant, _slot_delta(task.slot_held, -1))})
        else:
            update["ConditionExpression"] += f" AND attribute_not_exists({SLOT_ATTRIBUTE})"
            if task.status is TaskStatus.QUEUED:
                items.append({"Update": self._tenant_update(task.tenant, {"queued_tasks": -1})})
        if self._transact(items) is not None:
            raise StaleStatus(f"task {task.task_id} changed or was metered meanwhile")
        # The transaction succeeded against exactly `task`: what is stored now is `task` with these changes.
        return task.model_copy(update={**changes, "status": new_status, "metering": metering})

    def usage(self, tenant: str, start: date, end: date) -> list[tuple[date, Metering]]:
        def rows_of(partition: str) -> list[tuple[date, Metering]]:
            request: dict[str, Any] = {
                "TableName": self.table,
                "IndexName": STATUS_AND_USAGE_INDEX,
                "KeyConditionExpression": "gsi2pk = :pk AND gsi2sk BETWEEN :start AND :end",
                "ExpressionAttributeValues": {
                    ":pk": {"S": partition},
                    ":start": {"S": start.isoformat()},
                    ":end": {"S": end.isoformat() + "#~"},
                },
            }
            rows: list[tuple[date, Metering]] = []
            while True:
                response = self.ddb.query(**request)
                for raw in response.get("Items", []):
                    item = _deserialize(raw)
                    rows.append((date.fromisoformat(item["gsi2sk"][:10]), Metering.model_validate(item["metering"])))
                if "LastEvaluatedKey" not in response:
                    return rows
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

        return [row for rows in _each(shards(usage_partition(tenant)), rows_of) for row in rows]

    def status_key(self, task: Task, status: TaskStatus | str) -> str:
        """The status index partition (gsi2pk) of `task` in `status`: its status's shard for the task. The state
        machine's MarkProvisioning writes it too, so the execution input carries it."""
        return sharded(status_partition(task.tenant, status), task.task_id)

    # -- the fair queue (taskrunner.fair_queue): the tenant item's counters, ADDed only, in transactions

    def tenant_load(self, tenant: str) -> TenantLoad:
        names = {f"#{name}": name for name in ("quotas", "enabled", *COUNTERS)}
        item = (
            self.ddb.get_item(
                TableName=self.table,
                Key=tenant_key(tenant),
                ConsistentRead=True,
                ProjectionExpression=", ".join(names),
                ExpressionAttributeNames=names,
            ).get("Item")
            or {}
        )
        values = _deserialize(item)
        return TenantLoad(
            tenant=tenant,
            enabled=values.get("enabled") is not False,
            quotas=quotas_from_item(values.get("quotas")),
            quotas_as_read=item.get("quotas"),
            **{name: int(values.get(name) or 0) for name in COUNTERS},
        )

    def admit(self, task: Task, load: TenantLoad) -> bool:
        assert task.slot_held is not None, "an admitted task holds a slot"
        tenant_update = self._tenant_update(
            task.tenant, _slot_delta(task.slot_held, 1), self._fitting(load, task.slot_held, nobody_queued=True)
        )
        reasons = self._transact([self._new_task(task), {"Update": tenant_update}])
        if reasons is None:
            return True
        if reasons[0] == "ConditionalCheckFailed":
            raise TaskAlreadyExists(task.task_id)
        return False

    def enqueue(self, task: Task) -> None:
        reasons = self._transact(
            [self._new_task(task), {"Update": self._tenant_update(task.tenant, {"queued_tasks": 1})}]
        )
        if reasons is None:
            return
        if reasons[0] == "ConditionalCheckFailed":
            raise TaskAlreadyExists(task.task_id)
        raise StaleStatus(f"task {task.task_id} could not be queued: {', '.join(reasons)}")

    def grant(self, task: Task, slot: Slot, load: TenantLoad, changes: dict[str, Any]) -> bool:
        clause, names, values = self._set_clause({**changes, SLOT_ATTRIBUTE: slot.model_dump()})
        names["#status"], names["#slot"] = "status", SLOT_ATTRIBUTE
        values[":queued"] = {"S": TaskStatus.QUEUED.value}
        task_update = {
            "TableName": self.table,
            "Key": task_key(task.task_id),
            "UpdateExpression": f"SET {clause}",
            "ConditionExpression": "#status = :queued AND attribute_not_exists(#slot)",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        tenant_update = self._tenant_update(
            task.tenant, {**_slot_delta(slot, 1), "queued_tasks": -1}, self._fitting(load, slot, nobody_queued=False)
        )
        reasons = self._transact([{"Update": task_update}, {"Update": tenant_update}])
        if reasons is None:
            return True
        if reasons[0] == "ConditionalCheckFailed":
            raise StaleStatus(f"task {task.task_id} is no longer queued without a slot")
        return False

    def adjust_counters(self, tenant: str, expected: TenantLoad, delta: dict[str, int]) -> bool:
        conditions, values = [], {}
        for name, value in expected.counters().items():
            values[f":was_{name}"] = {"N": str(value)}
            missing = f"attribute_not_exists(#{name}) OR " if value == 0 else ""
            conditions.append(f"({missing}#{name} = :was_{name})")
        names = {f"#{name}": name for name in COUNTERS}
        update = self._tenant_update(tenant, delta, (" AND ".join(conditions), names, values))
        try:
            self.ddb.update_item(**update)
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def tenants(self) -> list[str]:
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": LISTING_INDEX,
            "KeyConditionExpression": "gsi1pk = :tenants",
            "ExpressionAttributeValues": {":tenants": {"S": TENANTS_PARTITION}},
        }
        names: list[str] = []
        while True:
            response = self.ddb.query(**request)
            names += [str(entry["gsi1sk"]["S"]) for entry in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                return names
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _new_task(self, task: Task) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table,
                "Item": _serialize(self._task_item(task)),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _tenant_update(
        self,
        tenant: str,
        delta: dict[str, int],
        condition: tuple[str, dict[str, str], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An UpdateItem of the tenant item that ADDs `delta` to its counters (creating the item of a tenant that
        has none), if `condition` (expression, names, values) holds."""
        names = {f"#{name}": name for name in delta}
        values = {f":add_{name}": {"N": str(amount)} for name, amount in delta.items()}
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": tenant_key(tenant),
            "UpdateExpression": "ADD " + ", ".join(f"#{name} :add_{name}" for name in delta),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        if condition is not None:
            expression, more_names, more_values = condition
            update["ConditionExpression"] = expression
            names.update(more_names)
            values.update(more_values)
        return update

    @staticmethod
    def _fitting(load: TenantLoad, slot: Slot, *, nobody_queued: bool) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The condition on the tenant item under which one more task of `slot` is within the quotas `load` read:
        the quotas are still those, each counter leaves room for the slot, and (for a newcomer) nobody waits."""
        names = {"#quotas": "quotas"}
        values: dict[str, Any] = {}
        if load.quotas_as_read is None:
            conditions = ["attribute_not_exists(#quotas)"]
        else:
            conditions = ["#quotas = :quotas"]
            values[":quotas"] = load.quotas_as_read
        for name, limit, amount in (
            ("running_tasks", load.quotas.max_running_tasks, 1),
            ("running_cpu", cpu_limit(load.quotas), slot.cpu),
            ("running_memory", memory_limit(load.quotas), slot.memory),
        ):
            if limit is not None:
                names[f"#{name}"] = name
                values[f":room_{name}"] = {"N": str(limit - amount)}
                conditions.append(f"(attribute_not_exists(#{name}) OR #{name} <= :room_{name})")
        if nobody_queued:
            names["#queued_tasks"] = "queued_tasks"
            values[":nobody"] = {"N": "0"}
            conditions.append("(attribute_not_exists(#queued_tasks) OR #queued_tasks <= :nobody)")
        return " AND ".join(conditions), names, values

    def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Run TransactWriteItems: None when it succeeded, else the cancellation reason of each item (in order:
        `ConditionalCheckFailed`, `None`, ...). A transaction cancelled only by conflicts or throttling is retried."""
        reasons: list[str] = []
        for attempt in range(TRANSACTION_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, 0.02 * 2 ** (attempt - 1)))
            try:
                self.ddb.transact_write_items(TransactItems=items)
                return None
            except ClientError as exc:
                if _error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = [str(r.get("Code") or "None") for r in exc.response.get("CancellationReasons", [])]
                reasons += ["None"] * (len(items) - len(reasons))
                if "ConditionalCheckFailed" in reasons or not _PASSING_CANCELLATIONS & set(reasons):
                    return reasons
        return reasons


#: cancellation reasons of a transaction that may succeed when run again
_PASSING_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)


def _slot_delta(slot: Slot, sign: int) -> dict[str, int]:
    """The counters' change when a task of `slot` takes (sign 1) or gives back (sign -1) its slot."""
    return {"running_tasks": sign, "running_cpu": sign * slot.cpu, "running_memory": sign * slot.memory}


class TaskTokens:
    """The task tokens of waiting Task states (`.waitForTaskToken`): completing one resumes its execution. A token
    needs no state machine ARN, so functions the state machine references may resume executions too."""

    #: SendTaskSuccess errors that mean nobody waits for the token any more: it was delivered already, or its
    #: execution ended, or the Task state timed out
    GONE = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})

    def __init__(self, client: Any) -> None:
        self.sfn = client

    def resume(self, token: str, output: Any) -> bool:
        try:
            self.sfn.send_task_success(taskToken=token, output=json.dumps(output))
        except ClientError as exc:
            if _error_code(exc) in self.GONE:
                return False
            raise
        return True


class StepFunctionsOrchestrator(TaskTokens):
    def __init__(self, state_machine_arn: str, client: Any) -> None:
        super().__init__(client)
        self.state_machine_arn = state_machine_arn

    def start(self, name: str, execution_input: dict[str, Any]) -> str:
        try:
            return str(
                self.sfn.start_execution(
                    stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(execution_input)
                )["executionArn"]
            )
        except ClientError as exc:
            if _error_code(exc) == "ExecutionAlreadyExists":
                # AWS answers a repeated name with the same input by returning the running execution;
                # moto raises instead. Either way the execution exists.
                return execution_arn_for(self.state_machine_arn, name)
            raise OrchestrationUnavailable(f"{_error_code(exc)}: {exc}") from exc

    def stop(self, execution_arn: str, cause: str) -> None:
        try:
            self.sfn.stop_execution(executionArn=execution_arn, cause=cause)
        except ClientError as exc:
            logger.warning("could not stop execution", execution_arn=execution_arn, error=_error_code(exc))


class EcsCompute:
    def __init__(self, cluster: str, client: Any) -> None:
        self.cluster = cluster
        self.ecs = client

    def find_task(self, task_id: str, group: str, family: str, *, max_scanned: int) -> str | None:
        for desired in ("RUNNING", "STOPPED"):
            arns = self.ecs.list_tasks(cluster=self.cluster, startedBy=task_id, desiredStatus=desired)
            if arns.get("taskArns"):
                return str(arns["taskArns"][0])
        # Step Functions' .sync integration sets startedBy itself ("AWS Step Functions"): look for the group among
        # the family's tasks, running ones first (those are the ones a cancel or timeout must stop), and never more
        # than `max_scanned` of them: a popular image has thousands, and stopped ones stay listed for an hour.
        budget = max_scanned
        for desired in ("RUNNING", "STOPPED"):
            token: str | None = None
            while budget > 0:
                request: dict[str, Any] = {
                    "cluster": self.cluster,
                    "family": family,
                    "desiredStatus": desired,
                    "maxResults": min(100, budget),
                }
                if token:
                    request["nextToken"] = token
                page = self.ecs.list_tasks(**request)
                arns = page.get("taskArns") or []
                budget -= len(arns)
                if arns:
                    described = self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)
                    for ecs_task in described.get("tasks", []):
                        if ecs_task.get("group") == group:
                            return str(ecs_task["taskArn"])
                token = page.get("nextToken")
                if not token or not arns:
                    break
        return None

    def stop_task(self, ecs_task_arn: str, reason: str) -> None:
        try:
            self.ecs.stop_task(cluster=self.cluster, task=ecs_task_arn, reason=reason[:255])
        except ClientError as exc:
            logger.warning("could not stop ECS task", ecs_task_arn=ecs_task_arn, error=_error_code(exc))

    def describe_task(self, ecs_task_arn: str) -> TaskObservation | None:
        described = self.ecs.describe_tasks(cluster=self.cluster, tasks=[ecs_task_arn]).get("tasks") or []
        return TaskObservation.from_description(described[0], CONTAINER_NAME) if described else None


class StepFunctionsExecutions:
    """Executions by ARN: what the reconciler asks of Step Functions."""

    def __init__(self, client: Any) -> None:
        self.sfn = client

    def status(self, execution_arn: str) -> str | None:
        try:
            return str(self.sfn.describe_execution(executionArn=execution_arn)["status"])
        except ClientError as exc:
            if _error_code(exc) == "ExecutionDoesNotExist":
                return None
            raise

    def stop(self, execution_arn: str, cause: str) -> None:
        try:
            self.sfn.stop_execution(executionArn=execution_arn, cause=cause[:32768])
        except ClientError as exc:
            logger.warning("could not stop execution", execution_arn=execution_arn, error=_error_code(exc))


class CloudWatchLogReader:
    def __init__(self, log_group: str, client: Any) -> None:
        self.log_group = log_group
        self.logs = client

    def read(self, stream: str, limit: int, next_token: str | None) -> tuple[list[LogEvent], str | None]:
        request: dict[str, Any] = {
            "logGroupName": self.log_group,
            "logStreamName": stream,
            "startFromHead": True,
            "limit": limit,
        }
        if next_token:
            if not LOG_TOKEN.fullmatch(next_token):
                raise InvalidParameter("next_token", "is not a token this listing issued")
            request["nextToken"] = next_token
        try:
            response = self.logs.get_log_events(**request)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ResourceNotFoundException":
                return [], None
            if code == "InvalidParameterException" and next_token:
                raise InvalidParameter("next_token", "is not a token this listing issued") from exc
            raise
        events = [
            LogEvent(timestamp=datetime.fromtimestamp(e["timestamp"] / 1000, tz=UTC), message=e["message"])
            for e in response.get("events", [])
        ]
        token = response.get("nextForwardToken")
        return events, (token if events and token and token != next_token else None)


class DynamoScheduleStore:
    """Schedules live in the tasks table: one item per schedule, listed by name through gsi1."""

    def __init__(self, table: str, client: Any) -> None:
        self.table = table
        self.ddb = client

    def _item(self, schedule: Schedule) -> dict[str, Any]:
        data = schedule.model_dump(mode="json", exclude_none=True, exclude={"next_run_times"})
        data.update(
            pk=f"SCHEDULE#{schedule.tenant}#{schedule.name}",
            sk="SCHEDULE",
            gsi1pk=schedules_partition(schedule.tenant),
            gsi1sk=schedule.name,
        )
        return data

    def create(self, schedule: Schedule) -> None:
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item=_serialize(self._item(schedule)),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise ScheduleAlreadyExists(schedule.name) from exc
            raise

    def get(self, tenant: str, name: str) -> Schedule | None:
        item = self.ddb.get_item(TableName=self.table, Key=schedule_key(tenant, name), ConsistentRead=True).get("Item")
        return Schedule.model_validate(_deserialize(item)) if item else None

    def list_schedules(self, tenant: str, limit: int, next_token: str | None) -> tuple[list[Schedule], str | None]:
        partition = schedules_partition(tenant)
        listing = _listing(LISTING_INDEX, partition, "by name")
        after = _decode_token(next_token, listing) if next_token else None
        entries, position = _index_page(
            self.ddb, self.table, LISTING_INDEX, [partition], limit=limit, newest_first=False, after=after
        )
        found = _batch_get(self.ddb, self.table, entries)
        items = [Schedule.model_validate(_deserialize(found[key])) for key in map(_item_key, entries) if key in found]
        return items, _encode_token(listing, position) if position else None

    def replace(self, schedule: Schedule) -> None:
        try:
            self.ddb.put_item(
                TableName=self.table, Item=_serialize(self._item(schedule)), ConditionExpression="attribute_exists(pk)"
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise ScheduleNotFound(schedule.name) from exc
            raise

    def delete(self, tenant: str, name: str) -> bool:
        response = self.ddb.delete_item(TableName=self.table, Key=schedule_key(tenant, name), ReturnValues="ALL_OLD")
        return "Attributes" in response

    def record_run(self, tenant: str, name: str, run: ScheduleRun) -> None:
        value = _serializer.serialize(_to_dynamo(run.model_dump(mode="json", exclude_none=True)))
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key=schedule_key(tenant, name),
                UpdateExpression="SET last_run = :run",
                ConditionExpression="attribute_exists(pk) AND "
                "(attribute_not_exists(last_run) OR last_run.scheduled_time <= :time)",
                ExpressionAttributeValues={
                    ":run": value,
                    ":time": {"S": run.model_dump(mode="json")["scheduled_time"]},
                },
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":  # deleted meanwhile, or a later run is recorded
                raise


#: the longest name EventBridge Scheduler takes
SCHEDULER_NAME_MAX = 64


class EventBridgeScheduler:
    """Each schedule is an EventBridge Scheduler schedule in the stack's group, targeting the scheduled-submission
    function: no flexible window, retries, and a dead-letter queue for runs that could not be delivered."""

    RETRY_POLICY = {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 3}

    def __init__(self, group: str, role_arn: str, target_arn: str, dead_letter_arn: str | None, client: Any) -> None:
        self.group = group
        self.role_arn = role_arn
        self.target_arn = target_arn
        self.dead_letter_arn = dead_letter_arn
        self.scheduler = client

    @staticmethod
    def schedule_name(tenant: str, name: str) -> str:
        """The EventBridge schedule of a tenant's schedule: `<tenant>.<name>`, unique in the group. Scheduler names
        stop at 64 characters, so a longer one keeps its first 47 and ends in a digest of the whole name (cutting
        it alone would give two schedules that share their first characters one EventBridge schedule)."""
        full = f"{tenant}.{name}"
        if len(full) <= SCHEDULER_NAME_MAX:
            return full
        digest = hashlib.sha256(full.encode()).hexdigest()[:16]
        return f"{full[: SCHEDULER_NAME_MAX - len(digest) - 1]}-{digest}"

    def request(self, schedule: Schedule) -> dict[str, Any]:
        target: dict[str, Any] = {
            "Arn": self.target_arn,
            "RoleArn": self.role_arn,
            "Input": json.dumps(
                {
                    "tenant": schedule.tenant,
                    "schedule_name": schedule.name,
                    "scheduled_time": "<aws.scheduler.scheduled-time>",
                }
            ),
            "RetryPolicy": self.RETRY_POLICY,
        }
        if self.dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self.dead_letter_arn}
        request: dict[str, Any] = {
            "Name": self.schedule_name(schedule.tenant, schedule.name),
            "GroupName": self.group,
            "ScheduleExpression": schedule.schedule_expression,
            "ScheduleExpressionTimezone": schedule.timezone,
            "State": "ENABLED" if schedule.enabled else "DISABLED",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": target,
            "ActionAfterCompletion": "NONE",
        }
        if schedule.description:
            request["Description"] = schedule.description
        if schedule.start_date and schedule.start_date >= datetime.now(UTC) - START_DATE_PAST_LIMIT:
            # An update that keeps a start date now past: the schedule has started, and EventBridge Scheduler
            # refuses a start date more than 5 minutes old, so it is left out.
            request["StartDate"] = schedule.start_date
        if schedule.end_date:
            request["EndDate"] = schedule.end_date
        return request

    def put(self, schedule: Schedule) -> None:
        request = self.request(schedule)
        try:
            self.scheduler.create_schedule(**request)
        except ClientError as exc:
            if _error_code(exc) != "ConflictException":
                raise
            self.scheduler.update_schedule(**request)

    def delete(self, tenant: str, name: str) -> None:
        try:
            self.scheduler.delete_schedule(Name=self.schedule_name(tenant, name), GroupName=self.group)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
