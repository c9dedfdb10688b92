"""The tasks table at scale, against moto in-process (which honours the indexes' projections, so a query that reads
an attribute its index does not project fails here as it would on AWS):

- one tenant's tasks and metering records spread their index partitions over every shard;
- a task's life writes little into the indexes, whatever the size of its spec;
- every listing stays exact across the shards: newest first (the reconciler's: oldest first), pages of `limit`
  whose tokens cover every item exactly once, and tokens of another listing, or forged ones, refused.
"""

from __future__ import annotations

import base64
import json
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from taskrunner.adapters import SHARDS, DynamoScheduleStore, DynamoTaskStore
from taskrunner.errors import InvalidParameter
from taskrunner.models import Architecture, Capacity, Metering, Task, TaskSpec, TaskStatus
from taskrunner.schedules import Schedule
from taskrunner.service import TaskService, new_task_id, task_id_at

from tests.integration.conftest import invoke
from tests.support.apigw import http_event
from tests.support.fakes import FakeCompute, FakeLogs, RecordingOrchestrator
from tests.support.functions import load_function
from tests.support.sample_events import NIGHTLY
from tests.support.stack import table_request, template

TENANT = "default"
ECS_TASK_ARN_PREFIX = "arn:aws:ecs:us-east-1:123456789012:task/taskrunner/"
LIMITS = [1, 7, 100]
api = load_function("api")

Page = tuple[list[Any], str | None]


def a_task(
    status: TaskStatus = TaskStatus.SUBMITTED,
    *,
    schedule: str | None = None,
    environment: dict[str, str] | None = None,
    tenant: str = TENANT,
    task_id: str | None = None,
) -> Task:
    now = datetime.now(UTC)
    return Task(
        task_id=task_id or new_task_id(),
        tenant=tenant,
        status=status,
        spec=TaskSpec(image="busybox", environment=environment),
        created_at=now,
        updated_at=now,
        schedule=schedule,
    )


def a_metering(cost_usd: float, ended: datetime) -> Metering:
    return Metering(
        billed_seconds=60,
        vcpu=0.25,
        memory_gib=0.5,
        vcpu_seconds=15.0,
        gib_seconds=30.0,
        ephemeral_storage_gib_seconds=0.0,
        architecture=Architecture.X86_64,
        capacity=Capacity.ON_DEMAND,
        cost_usd=cost_usd,
        window_start=ended - timedelta(seconds=60),
        window_end=ended,
    )


def finalize(store: DynamoTaskStore, task: Task, status: TaskStatus, metering: Metering | None = None) -> Task:
    metering = metering or a_metering(0.01, datetime.now(UTC))
    return store.finalize(task, status, {"updated_at": datetime.now(UTC)}, f"task/{task.task_id}", metering)


def every_page(listing: Callable[[int, str | None], Page], limit: int) -> list[list[Any]]:
    pages: list[list[Any]] = []
    token: str | None = None
    while True:
        items, token = listing(limit, token)
        pages.append(items)
        assert len(items) <= limit
        if not token:
            return pages
        assert len(pages) < 1000, "the tokens do not move on"


def ids(pages: list[list[Task]]) -> list[str]:
    return [task.task_id for page in pages for task in page]


def assert_full_pages(pages: list[list[Any]], limit: int) -> None:
    """Every page but the last holds `limit` items (a last page may be empty: a token may follow a full page)."""
    assert [len(page) for page in pages[:-1]] == [limit] * (len(pages) - 1)


def scan(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=table):  # a census of the table, for the test only
        items += page["Items"]
    return items


@pytest.fixture
def store(stack: Any, ddb: Any) -> DynamoTaskStore:
    return DynamoTaskStore(stack.tasks_table, ddb)


# ---------------------------------------------------------------------------------------------- spreading writes


def test_one_tenants_tasks_and_metering_records_spread_over_every_shard(stack, ddb, store):
    # Given 200 tasks of one tenant (ids as the service makes them, from a fixed seed: the test never flakes)
    seeded = random.Random(200)
    start = datetime(2026, 11, 27, 12, tzinfo=UTC)
    tasks = [a_task(task_id=task_id_at(start + timedelta(seconds=i), seeded.getrandbits(80))) for i in range(200)]
    # When they are created, then 64 of them finalized with their metering records (moto's transactions are slow)
    for task in tasks:
        store.create(task)
    created = [i for i in scan(ddb, stack.tasks_table) if i["sk"]["S"] == "TASK"]
    metered = tasks[:64]
    for task in metered:
        finalize(store, task, TaskStatus.SUCCEEDED)
    items = scan(ddb, stack.tasks_table)
    # Then their listing (gsi1) and status (gsi2) partitions, created and final, spread over the SHARDS shards,
    # none with much more than its share, and so do the metering records' partitions
    finalized = [i for i in items if i["sk"]["S"] == "TASK" and i["status"]["S"] == "SUCCEEDED"]
    for attribute, stored in [("gsi1pk", created), ("gsi2pk", created), ("gsi2pk", finalized)]:
        per_partition = Counter(item[attribute]["S"] for item in stored)
        assert len(per_partition) == SHARDS, (attribute, per_partition)
        assert max(per_partition.values()) <= 2.5 * len(stored) / SHARDS, (attribute, per_partition)
    records = [i for i in items if i["pk"]["S"].startswith("METER#")]
    record_partitions = Counter(
        value["S"]
        for record in records
        for name, value in record.items()
        if name.startswith("gsi") and name.endswith("pk")
    )
    assert len(records) == len(metered) and len(record_partitions) == SHARDS, record_partitions
    assert max(record_partitions.values()) <= 2.5 * len(metered) / SHARDS, record_partitions


# ---------------------------------------------------------------------------------------------- write amplification


def _size(value: dict[str, Any]) -> int:
    """DynamoDB's item size of one attribute value (UTF-8 bytes of names and strings; about half a byte a digit)."""
    (kind, inner), *_ = value.items()
    if kind in ("S", "B"):
        return len(inner.encode()) if isinstance(inner, str) else len(inner)
    if kind == "N":
        return math.ceil(len(inner.lstrip("-").replace(".", "")) / 2) + 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _size(v) for k, v in inner.items())
    if kind == "L":
        return 3 + sum(1 + _size(v) for v in inner)
    return 1


def _write_units(entry: dict[str, Any]) -> int:
    return math.ceil(sum(len(name.encode()) + _size(value) for name, value in entry.items()) / 1024)


def _index_entry(item: dict[str, Any] | None, index: dict[str, Any]) -> dict[str, Any] | None:
    keys = [k["AttributeName"] for k in index["KeySchema"]]
    if item is None or not all(k in item for k in keys):
        return None  # not in this (sparse) index
    projection = index["Projection"]
    if projection["ProjectionType"] == "ALL":
        return dict(item)
    kept = {"pk", "sk", *keys, *projection.get("NonKeyAttributes", [])}
    return {name: value for name, value in item.items() if name in kept}


def index_writes(before: dict[str, Any] | None, after: dict[str, Any] | None, index: dict[str, Any]) -> list[int]:
    """The writes one table write makes in `index`, each as write units (1 KB, rounded up): none when the item's
    index entry is unchanged, a delete and a put when its index key changes."""
    old, new = _index_entry(before, index), _index_entry(after, index)
    if old == new:
        return []
    if old is None or new is None:
        return [_write_units(old or new or {})]
    keys = [k["AttributeName"] for k in index["KeySchema"]]
    if any(old[k] != new[k] for k in keys):
        return [_write_units(old), _write_units(new)]
    return [max(_write_units(old), _write_units(new))]


def lifecycle_index_writes(
    stack: Any, ddb: Any, store: DynamoTaskStore, environment: dict[str, str] | None
) -> list[int]:
    """The index writes of one task's life: created, PROVISIONING (as MarkProvisioning writes it), RUNNING (as the
    ECS event writes it), SUCCEEDED with its metering record."""
    indexes = template()["Resources"]["TasksTable"]["Properties"]["GlobalSecondaryIndexes"]
    task = a_task(environment=environment)
    ecs_task_arn = ECS_TASK_ARN_PREFIX + uuid.uuid4().hex
    keys = [
        {"pk": {"S": f"TASK#{task.task_id}"}, "sk": {"S": "TASK"}},
        {"pk": {"S": f"METER#{ecs_task_arn}"}, "sk": {"S": "METER"}},
    ]

    def stored() -> list[dict[str, Any] | None]:
        return [ddb.get_item(TableName=stack.tasks_table, Key=key).get("Item") for key in keys]

    now = datetime.now(UTC)
    steps: list[Callable[[Task], Task | None]] = [
        store.create,  # type: ignore[list-item]
        lambda t: store.transition(t, TaskStatus.PROVISIONING, {"provisioning_at": now, "updated_at": now}),
        lambda t: store.transition(t, TaskStatus.RUNNING, {"started_at": now, "ecs_task_arn": ecs_task_arn}),
        lambda t: store.finalize(
            t, TaskStatus.SUCCEEDED, {"stopped_at": now, "exit_code": 0}, ecs_task_arn, a_metering(0.01, now)
        ),
    ]
    writes: list[int] = []
    before = stored()
    for step in steps:
        task = step(task) or task
        after = stored()
        writes += [
            w
            for old, new in zip(before, after, strict=True)
            for index in indexes
            for w in index_writes(old, new, index)
        ]
        before = after
    return writes


def test_a_tasks_life_writes_few_small_index_entries_whatever_the_size_of_its_spec(stack, ddb, store):
    # Given a task without environment, and one with 6 KB of environment
    # When each lives its life: created, PROVISIONING, RUNNING, SUCCEEDED and metered
    small = lifecycle_index_writes(stack, ddb, store, None)
    large = lifecycle_index_writes(stack, ddb, store, {"PAYLOAD": "x" * 6000})
    # Then the indexes cost the same for both: one write unit a write, nine writes in all (the listing entry once,
    # the status entry moved three times, the metering record's entry once), the spec never copied into an index
    assert small == large == [1] * 9


# ---------------------------------------------------------------------------------------------- listings


def make_tasks(store: DynamoTaskStore, statuses: list[TaskStatus], schedules: list[str | None]) -> list[Task]:
    tasks = []
    for i, status in enumerate(statuses):
        task = a_task(status, schedule=schedules[i % len(schedules)])
        store.create(task)
        tasks.append(task)
    return tasks


STATUS_CYCLE = [TaskStatus.SUBMITTED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.RUNNING, TaskStatus.FAILED]


@pytest.mark.parametrize("limit", LIMITS)
def test_tasks_list_newest_first_across_shards_in_pages_that_cover_each_once(store, limit):
    # Given 45 tasks in several statuses, some of them runs of two schedules
    tasks = make_tasks(store, STATUS_CYCLE * 9, [None, "nightly", None, "hourly"])
    newest_first = [t.task_id for t in reversed(tasks)]

    # When every listing is paged through with this limit
    def listing(status: TaskStatus | None = None, schedule: str | None = None) -> list[list[Task]]:
        return every_page(lambda n, token: store.list_tasks(TENANT, status, n, token, schedule), limit)

    # Then each holds exactly its tasks, newest first, once, in full pages
    everything = listing()
    assert ids(everything) == newest_first
    assert_full_pages(everything, limit)
    for status in TaskStatus:
        pages = listing(status)
        assert ids(pages) == [t.task_id for t in reversed(tasks) if t.status is status], status
        assert_full_pages(pages, limit)
        assert all(task.status is status for page in pages for task in page)
    for schedule in ("nightly", "hourly"):
        runs = listing(schedule=schedule)
        assert ids(runs) == [t.task_id for t in reversed(tasks) if t.schedule == schedule]
        running = listing(TaskStatus.RUNNING, schedule)
        assert ids(running) == [t.task_id for t in reversed(tasks) if t.schedule == schedule and t.status == "RUNNING"]
    assert {t.task_id: t for page in everything for t in page} == {t.task_id: t for t in tasks}  # whole tasks


def test_one_page_queries_each_shard_once_and_reads_its_tasks_in_one_batch(stack, ddb, store):
    # Given 30 tasks, and a count of the DynamoDB calls the store makes
    make_tasks(store, [TaskStatus.SUBMITTED] * 30, [None])
    calls: list[str] = []
    ddb.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    # When one page of 20 is listed
    items, token = store.list_tasks(TENANT, None, 20, None)
    # Then it took one query per shard and one BatchGetItem
    assert len(items) == 20 and token
    assert Counter(calls) == {"Query": SHARDS, "BatchGetItem": 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    statuses=st.lists(st.sampled_from(list(TaskStatus)), max_size=40),
    status=st.none() | st.sampled_from(list(TaskStatus)),
    limit=st.integers(min_value=1, max_value=12),
)
def test_any_listing_covers_its_tasks_exactly_once_newest_first(stack, ddb, statuses, status, limit):
    # Given a fresh table with tasks in any statuses
    table = f"tasks-{uuid.uuid4().hex[:12]}"
    ddb.create_table(**table_request("TasksTable", table))
    store = DynamoTaskStore(table, ddb)
    tasks = make_tasks(store, statuses, [None])
    # When the tasks (in one status, or all) are paged through
    pages = every_page(lambda n, token: store.list_tasks(TENANT, status, n, token), limit)
    # Then every one of them comes once, newest first, in full pages
    assert ids(pages) == [t.task_id for t in reversed(tasks) if status is None or t.status is status]
    assert_full_pages(pages, limit)


@pytest.mark.parametrize("limit", LIMITS)
def test_the_reconcilers_status_listing_pages_oldest_first_across_shards(store, limit):
    # Given submitted tasks, and failed ones of which every third is metered
    submitted = make_tasks(store, [TaskStatus.SUBMITTED] * 20, [None])
    failed = make_tasks(store, [TaskStatus.FAILED] * 21, [None])
    metered = {finalize(store, t, TaskStatus.FAILED).task_id for t in failed[::3]}

    def listing(status: TaskStatus, **criteria: Any) -> list[list[Task]]:
        return every_page(lambda n, token: store.list_in_status(TENANT, status, n, token, **criteria), limit)

    # When they are listed as the reconciler lists them
    # Then they come oldest first, once each; the creation bound and the metering filter hold
    assert ids(listing(TaskStatus.SUBMITTED)) == [t.task_id for t in submitted]
    assert ids(listing(TaskStatus.SUBMITTED, created_since=submitted[8].task_id)) == [t.task_id for t in submitted[8:]]
    assert ids(listing(TaskStatus.FAILED)) == [t.task_id for t in failed]
    unmetered = listing(TaskStatus.FAILED, unmetered_only=True)
    assert ids(unmetered) == [t.task_id for t in failed if t.task_id not in metered]
    assert all(task.metering is None for page in unmetered for task in page)
    since = failed[10].task_id
    assert ids(listing(TaskStatus.FAILED, created_since=since, unmetered_only=True)) == [
        t.task_id for t in failed[10:] if t.task_id not in metered
    ]


def test_usage_totals_are_the_sum_of_the_metering_records(stack, store):
    # Given 30 tasks metered over three days at different costs
    days = [datetime(2026, 11, d, 12, tzinfo=UTC) for d in (26, 27, 28)]
    written: list[tuple[date, float]] = []
    for i in range(30):
        day, cost = days[i % 3], round(0.001 * (i + 1), 6)
        task = a_task()
        store.create(task)
        finalize(store, task, TaskStatus.SUCCEEDED, a_metering(cost, day))
        written.append((day.date(), cost))
    service = TaskService(
        store=store,
        orchestrator=RecordingOrchestrator(),
        compute=FakeCompute(),
        logs=FakeLogs(),
        settings=stack.settings(),
    )
    # When the usage of all three days, and of the middle one, is asked for
    usage = service.usage(TENANT, days[0].date(), days[2].date())
    middle = service.usage(TENANT, days[1].date(), days[1].date())
    # Then the totals are the sums of the records, per day and over the range
    assert usage.totals.tasks == 30 and usage.totals.billed_seconds == 30 * 60
    assert usage.totals.cost_usd == pytest.approx(sum(cost for _, cost in written))
    assert [(d.date, d.tasks) for d in usage.days] == [(day.date(), 10) for day in days]
    for row in usage.days:
        assert row.cost_usd == pytest.approx(sum(cost for d, cost in written if d == row.date))
    assert middle.totals.tasks == 10 and [d.date for d in middle.days] == [days[1].date()]
    assert sorted((d, round(m.cost_usd, 6)) for d, m in store.usage(TENANT, days[0].date(), days[2].date())) == sorted(
        written
    )


def a_schedule(name: str) -> Schedule:
    now = datetime.now(UTC)
    return Schedule.model_validate({**NIGHTLY, "name": name, "tenant": TENANT, "created_at": now, "updated_at": now})


@pytest.mark.parametrize("limit", LIMITS)
def test_schedules_list_by_name_in_pages_that_cover_each_once(stack, ddb, limit):
    # Given 15 schedules, one of them deleted, and tasks in the same table
    schedules = DynamoScheduleStore(stack.tasks_table, ddb)
    names = [f"s-{i:02d}" for i in range(15)]
    for name in reversed(names):
        schedules.create(a_schedule(name))
    schedules.delete(TENANT, "s-03")
    make_tasks(DynamoTaskStore(stack.tasks_table, ddb), [TaskStatus.SUBMITTED] * 5, [None])
    # When they are paged through
    pages = every_page(lambda n, token: schedules.list_schedules(TENANT, n, token), limit)
    # Then each remaining schedule comes once, by name, whole
    listed = [s for page in pages for s in page]
    assert [s.name for s in listed] == [n for n in names if n != "s-03"]
    assert all(s.task.image == NIGHTLY["task"]["image"] and s.tenant == TENANT for s in listed)
    assert_full_pages(pages, limit)


class ThrottledBatchGets:
    """The DynamoDB client, except that BatchGetItem leaves the second half of its keys unprocessed, as a throttled
    table does, the first `throttled` times it is called; and `answer` may change what it returns."""

    def __init__(self, ddb: Any, throttled: int, answer: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]):
        self.ddb, self.throttled, self.answer = ddb, throttled, answer
        self.batch_gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ddb, name)

    def batch_get_item(self, **call: Any) -> dict[str, Any]:
        self.batch_gets += 1
        [(table, request)] = call["RequestItems"].items()
        keys, unprocessed = request["Keys"], []
        if self.batch_gets <= self.throttled:
            keys, unprocessed = keys[: len(keys) // 2], keys[len(keys) // 2 :]
        response: dict[str, Any] = {"Responses": {table: []}}
        if keys:
            response = self.ddb.batch_get_item(RequestItems={table: {**request, "Keys": keys}})
        response["Responses"][table] = self.answer(response["Responses"][table])
        response["UnprocessedKeys"] = {table: {**request, "Keys": unprocessed}} if unprocessed else {}
        return response


def test_keys_left_unprocessed_are_asked_for_again_and_the_order_is_kept(stack, ddb, store):
    # Given 12 tasks, and a table that leaves half the keys of the first two BatchGetItem calls unprocessed
    tasks = make_tasks(store, [TaskStatus.RUNNING] * 12, [None])
    throttled = ThrottledBatchGets(ddb, throttled=2, answer=lambda items: items[::-1])
    # When a page of 10 is listed
    listed, _ = DynamoTaskStore(stack.tasks_table, throttled).list_tasks(TENANT, None, 10, None)
    # Then every task of the page is there, newest first, after three calls
    assert [t.task_id for t in listed] == [t.task_id for t in reversed(tasks)][:10]
    assert throttled.batch_gets == 3


def test_keys_still_unprocessed_after_the_retries_are_an_error_not_a_short_page(stack, ddb, store):
    make_tasks(store, [TaskStatus.RUNNING] * 4, [None])
    throttled = ThrottledBatchGets(ddb, throttled=100, answer=lambda items: items)
    with pytest.raises(RuntimeError, match="unprocessed"):
        DynamoTaskStore(stack.tasks_table, throttled).list_tasks(TENANT, None, 4, None)


def test_tasks_that_vanished_or_moved_on_since_the_index_was_read_are_left_out(stack, ddb, store):
    # Given six RUNNING tasks, of which the table (read after the index) no longer has one and has another FAILED
    tasks = make_tasks(store, [TaskStatus.RUNNING] * 6, [None])
    gone, moved = tasks[1].task_id, tasks[4].task_id

    def as_read_later(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [i for i in items if i["task_id"]["S"] != gone]
        return [{**i, "status": {"S": "FAILED"}} if i["task_id"]["S"] == moved else i for i in kept]

    later = DynamoTaskStore(stack.tasks_table, ThrottledBatchGets(ddb, throttled=0, answer=as_read_later))
    # When the RUNNING tasks are listed
    running, _ = later.list_tasks(TENANT, TaskStatus.RUNNING, 10, None)
    # Then those two are left out and the others keep their order
    assert [t.task_id for t in running] == [t.task_id for t in reversed(tasks) if t.task_id not in (gone, moved)]
    # And the reconciler's listing leaves them out too
    oldest_first, _ = later.list_in_status(TENANT, TaskStatus.RUNNING, 10, None)
    assert [t.task_id for t in oldest_first] == [t.task_id for t in tasks if t.task_id not in (gone, moved)]


# ---------------------------------------------------------------------------------------------- tokens


def _forge(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_a_token_is_only_good_for_the_listing_that_issued_it(stack, ddb, store):
    # Given tasks (some runs of a schedule, some of another tenant) and schedules, and a token from each listing
    make_tasks(store, [TaskStatus.SUBMITTED, TaskStatus.RUNNING] * 3, [None, "nightly"])
    for _ in range(2):
        store.create(a_task(tenant="other"))
    schedules = DynamoScheduleStore(stack.tasks_table, ddb)
    for name in ("a", "b"):
        schedules.create(a_schedule(name))
    listings: dict[str, Callable[[str | None], Page]] = {
        "all tasks": lambda token: store.list_tasks(TENANT, None, 1, token),
        "submitted tasks": lambda token: store.list_tasks(TENANT, TaskStatus.SUBMITTED, 1, token),
        "running tasks": lambda token: store.list_tasks(TENANT, TaskStatus.RUNNING, 1, token),
        "runs of nightly": lambda token: store.list_tasks(TENANT, None, 1, token, "nightly"),
        "running runs of nightly": lambda token: store.list_tasks(TENANT, TaskStatus.RUNNING, 1, token, "nightly"),
        "another tenant's tasks": lambda token: store.list_tasks("other", None, 1, token),
        "submitted, oldest first": lambda token: store.list_in_status(TENANT, TaskStatus.SUBMITTED, 1, token),
        "schedules": lambda token: schedules.list_schedules(TENANT, 1, token),
    }
    tokens = {name: listing(None)[1] for name, listing in listings.items()}
    assert all(tokens.values()), tokens
    # When each listing is given its own token, and every other listing's
    # Then its own pages on, and every other one is refused as the client's error, naming next_token
    for name, listing in listings.items():
        for issuer, token in tokens.items():
            if issuer == name:
                listing(token)
                continue
            with pytest.raises(InvalidParameter) as refused:
                listing(token)
            assert refused.value.field == "next_token", (issuer, name)


FORGED = [
    "garbage!",
    "!!!!",
    "e30",  # {}
    _forge([1, 2]),
    _forge("text"),
    _forge(None),
    _forge({"pk": {"S": "x"}, "sk": {"S": "x"}, "gsi1pk": {"S": "TENANT#default#TASKS"}, "gsi1sk": {"S": "x"}}),
    _forge({"gsi1pk": {"S": "TENANT#default#TASKS"}}),
    "A" * 4096,
]


@pytest.mark.parametrize("token", FORGED)
def test_a_forged_token_is_refused_by_every_listing(stack, ddb, store, token):
    schedules = DynamoScheduleStore(stack.tasks_table, ddb)
    for listing in (
        lambda: store.list_tasks(TENANT, None, 5, token),
        lambda: store.list_tasks(TENANT, TaskStatus.RUNNING, 5, token),
        lambda: store.list_tasks(TENANT, None, 5, token, "nightly"),
        lambda: store.list_in_status(TENANT, TaskStatus.SUBMITTED, 5, token),
        lambda: schedules.list_schedules(TENANT, 5, token),
    ):
        with pytest.raises(InvalidParameter) as refused:
            listing()
        assert refused.value.field == "next_token"


def test_the_api_answers_a_token_of_another_listing_with_a_422_naming_next_token(stack):
    # Given two submitted tasks and a token of the SUBMITTED listing
    for _ in range(2):
        assert invoke(api, http_event("POST", "/tasks", body={"image": "busybox"}))["statusCode"] == 202
    page = json.loads(invoke(api, http_event("GET", "/tasks", query={"status": "SUBMITTED", "limit": "1"}))["body"])
    assert page["next_token"]
    # When it is given to the listing of all tasks, and to the schedules
    for path in ("/tasks", "/schedules"):
        response = invoke(api, http_event("GET", path, query={"next_token": page["next_token"]}))
        # Then the answer is a 422 naming next_token
        body = json.loads(response["body"])
        assert response["statusCode"] == 422 and body["error"]["details"][0]["field"] == "next_token", body
