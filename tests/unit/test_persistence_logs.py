"""Log streams and events in the state store (taskrunner_local/persistence/logs.py), with real moto backends and a
real SQLite store: written through before the call answers, served from the store with moto's answers, and back
after a restart, which these tests play as the local stack does: the logs backend pickled with its streams left
out (as the core's snapshot does), the store closed, a fresh store and fresh patches, the snapshot loaded into a
fresh backend and the part's restore()."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.logs.models import logs_backends

from taskrunner_local.moto_patches import Patch, patch_named
from taskrunner_local.persistence.logs import DEFAULT_EVENT_LIMIT, LogsPart
from taskrunner_local.persistence.s3 import S3Part
from taskrunner_local.persistence.store import StateStore
from tests.support.moto_in_process import patch_state
from tests.support.persistence import LocalPart, SimulatedCrash

REGION = "us-east-1"
GROUP, STREAM = "/tasks", "task/main/1"


class LocalLogs(LocalPart[LogsPart]):
    """The logs side of a local stack: a state folder, its store and the installed part."""

    backends = logs_backends
    region = REGION

    def new_part(self, store: StateStore) -> LogsPart:
        return LogsPart(store)


@pytest.fixture
def local(aws: None, tmp_path: Path) -> Iterator[LocalLogs]:
    with LocalLogs(tmp_path / "state") as started:
        yield started


@pytest.fixture
def logs(aws: None) -> Any:
    return boto3.client("logs", region_name=REGION)


def now_ms() -> int:
    return int(time.time() * 1000)


def make_streams(logs: Any, *names: str) -> None:
    """The group GROUP, with the streams `names` (STREAM without names)."""
    logs.create_log_group(logGroupName=GROUP)
    for name in names or (STREAM,):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=name)


def put(logs: Any, messages: list[str], start: int, stream: str = STREAM) -> None:
    events = [{"timestamp": start + i, "message": m} for i, m in enumerate(messages)]
    logs.put_log_events(logGroupName=GROUP, logStreamName=stream, logEvents=events)


def read_forward(logs: Any, limit: int, stream: str = STREAM, token: str | None = None) -> tuple[list[str], str]:
    """Page forward as boto3 clients do: until the forward token repeats."""
    messages: list[str] = []
    while True:
        request: dict[str, Any] = {
            "logGroupName": GROUP,
            "logStreamName": stream,
            "startFromHead": True,
            "limit": limit,
        }
        if token:
            request["nextToken"] = token
        page = logs.get_log_events(**request)
        messages += [event["message"] for event in page["events"]]
        if page["nextForwardToken"] == token:
            return messages, page["nextForwardToken"]
        token = page["nextForwardToken"]


def describe(logs: Any, **request: Any) -> list[dict[str, Any]]:
    return logs.describe_log_streams(logGroupName=GROUP, **request)["logStreams"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- round trips


def test_given_events_put_when_the_stack_restarts_then_pages_and_tokens_read_them_again(
    local: LocalLogs, logs: Any
) -> None:
    # Given a stream created after the last snapshot, with events put in three calls, read once to the end
    logs.create_log_group(logGroupName=GROUP)
    snapshot = local.snapshot()
    logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    start = now_ms()
    put(logs, [f"line {i}" for i in range(5)], start)
    put(logs, [f"line {i}" for i in range(5, 8)], start + 5)
    before, token = read_forward(logs, limit=3)
    put(logs, ["line 8", "line 9"], start + 8)

    # When the stack restarts from that snapshot
    local.restart(snapshot)

    # Then the stream pages from its head as before, and the token read before the restart goes on where it stopped
    assert before == [f"line {i}" for i in range(8)]
    assert read_forward(logs, limit=4)[0] == [f"line {i}" for i in range(10)]
    assert read_forward(logs, limit=4, token=token)[0] == ["line 8", "line 9"]


def test_given_a_stream_when_the_stack_restarts_then_describe_log_streams_shows_the_same_facts(
    local: LocalLogs, logs: Any
) -> None:
    # Given streams with events (one of them with none) and a snapshot taken after they were created
    make_streams(logs, "a", "b", "c")
    snapshot = local.snapshot()
    start = now_ms()
    put(logs, ["x" * 10, "yy"], start, stream="b")
    put(logs, ["zzz"], start + 100, stream="a")
    described = describe(logs)

    # When the stack restarts
    local.restart(snapshot)

    # Then DescribeLogStreams answers exactly as before
    assert describe(logs) == described
    b = next(stream for stream in described if stream["logStreamName"] == "b")
    assert (b["firstEventTimestamp"], b["lastEventTimestamp"], b["storedBytes"]) == (start, start + 1, 12)
    assert b["uploadSequenceToken"] == "1" and "firstEventTimestamp" not in described[2]
    assert logs.describe_log_groups()["logGroups"][0]["storedBytes"] == 15


def test_given_many_streams_then_describe_log_streams_pages_by_name_and_by_last_event_time(
    local: LocalLogs, logs: Any
) -> None:
    # Given five streams whose last events came in the reverse order of their names
    logs.create_log_group(logGroupName=GROUP)
    start = now_ms()
    for offset, name in enumerate(["task/e", "task/d", "task/c", "task/b", "other/a"]):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=name)
        put(logs, ["m"], start + offset, stream=name)

    # When they are listed two at a time, by name with a prefix and by last event time, newest first
    def listing(**request: Any) -> list[str]:
        names, token = [], None
        while True:
            page = logs.describe_log_streams(
                logGroupName=GROUP, limit=2, **request, **({"nextToken": token} if token else {})
            )
            names += [stream["logStreamName"] for stream in page["logStreams"]]
            token = page.get("nextToken")
            if not token:
                return names

    # Then the pages follow moto's orders
    assert listing(logStreamNamePrefix="task/") == ["task/b", "task/c", "task/d", "task/e"]
    assert listing(logStreamNamePrefix="task/", descending=True) == ["task/e", "task/d", "task/c", "task/b"]
    assert listing(orderBy="LastEventTime", descending=True) == ["other/a", "task/b", "task/c", "task/d", "task/e"]
    assert listing(orderBy="LastEventTime") == ["task/e", "task/d", "task/c", "task/b", "other/a"]


def test_given_events_in_several_streams_when_the_stack_restarts_then_filter_log_events_finds_them(
    local: LocalLogs, logs: Any
) -> None:
    # Given two streams whose events alternate in time
    make_streams(logs, "s1", "s2")
    start = now_ms()
    logs.put_log_events(
        logGroupName=GROUP,
        logStreamName="s1",
        logEvents=[
            {"timestamp": start + t, "message": f"s1 {word} {t}"} for t, word in [(0, "ok"), (2, "error"), (4, "ok")]
        ],
    )
    logs.put_log_events(
        logGroupName=GROUP,
        logStreamName="s2",
        logEvents=[{"timestamp": start + t, "message": f"s2 {word} {t}"} for t, word in [(1, "error"), (3, "ok")]],
    )

    # When the stack restarts and the group is filtered
    local.restart()

    def messages(**request: Any) -> list[str]:
        found, token = [], None
        while True:
            page = logs.filter_log_events(logGroupName=GROUP, **request, **({"nextToken": token} if token else {}))
            found += [event["message"] for event in page["events"]]
            token = page.get("nextToken")
            if not token:
                return found

    # Then streams, time range, pattern, interleaving and pages all select as moto does
    assert messages() == ["s1 ok 0", "s1 error 2", "s1 ok 4", "s2 error 1", "s2 ok 3"]
    assert messages(interleaved=True, limit=2) == ["s1 ok 0", "s2 error 1", "s1 error 2", "s2 ok 3", "s1 ok 4"]
    assert messages(limit=1) == ["s1 ok 0", "s1 error 2", "s1 ok 4", "s2 error 1", "s2 ok 3"]
    assert messages(filterPattern="error") == ["s1 error 2", "s2 error 1"]
    assert messages(filterPattern='"s2 ok"') == ["s2 ok 3"]
    assert messages(logStreamNames=["s2"], startTime=start + 2) == ["s2 ok 3"]
    assert messages(startTime=start + 1, endTime=start + 2, interleaved=True) == ["s2 error 1", "s1 error 2"]
    first = logs.filter_log_events(logGroupName=GROUP, limit=1)
    assert first["events"][0]["logStreamName"] == "s1" and first["nextToken"].startswith(f"{GROUP}@s1@")
    assert logs.filter_log_events(logGroupName=GROUP, nextToken=f"{GROUP}@s1@999999")["events"] == []


def test_given_a_scenario_then_the_answers_are_moto_s_own(aws: None, tmp_path: Path) -> None:
    # Given one scenario played on plain moto and on moto with the part
    def play() -> dict[str, Any]:
        logs = boto3.client("logs", region_name=REGION)
        make_streams(logs, "b", "a")
        start = now_ms()
        logs.put_log_events(
            logGroupName=GROUP,
            logStreamName="a",
            logEvents=[{"timestamp": start + t, "message": f"a {t}"} for t in (0, 0, 5, 9)],
        )
        logs.put_log_events(
            logGroupName=GROUP, logStreamName="a", logEvents=[{"timestamp": start + 3, "message": "late"}]
        )
        logs.put_log_events(logGroupName=GROUP, logStreamName="b", logEvents=[{"timestamp": start + 1, "message": "b"}])

        def events(page: dict[str, Any]) -> list[tuple[int, str]]:
            return [(event["timestamp"] - start, event["message"]) for event in page["events"]]

        answers: dict[str, Any] = {
            "head": events(logs.get_log_events(logGroupName=GROUP, logStreamName="a", startFromHead=True, limit=3)),
            "tail": events(logs.get_log_events(logGroupName=GROUP, logStreamName="a", limit=2)),
            "window": events(
                logs.get_log_events(
                    logGroupName=GROUP, logStreamName="a", startFromHead=True, startTime=start + 3, endTime=start + 5
                )
            ),
            "filter": events(logs.filter_log_events(logGroupName=GROUP)),
            "interleaved": events(logs.filter_log_events(logGroupName=GROUP, interleaved=True)),
            "streams": [
                {k: v for k, v in s.items() if k not in {"creationTime", "lastIngestionTime", "arn"}}
                for s in logs.describe_log_streams(logGroupName=GROUP)["logStreams"]
            ],
        }
        answers["streams"] = [
            {**s, **{k: s[k] - start for k in ("firstEventTimestamp", "lastEventTimestamp") if k in s}}
            for s in answers["streams"]
        ]
        logs.delete_log_group(logGroupName=GROUP)
        return answers

    moto_answers = play()
    with LocalLogs(tmp_path):
        # When the part serves the same calls
        durable_answers = play()

    # Then every answer is the same
    assert durable_answers == moto_answers


# ---------------------------------------------------------------------------------------------- paging


def test_given_large_events_then_a_forward_page_stops_at_one_megabyte(local: LocalLogs, logs: Any) -> None:
    # Given twelve events of 200,000 bytes
    make_streams(logs)
    put(logs, [f"{i:02d}" + "x" * 199_998 for i in range(12)], now_ms())

    # When they are read forward, and backward from the end
    pages, token = [], None
    for _ in range(4):
        request: dict[str, Any] = {"nextToken": token} if token else {}
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, startFromHead=True, **request)
        pages.append([event["message"][:2] for event in page["events"]])
        token = page["nextForwardToken"]
    tail = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM)

    # Then each page holds what fits in 1 MB (5 x (200,000 + 26) bytes), the last page repeats its token empty
    assert [len(page) for page in pages] == [5, 5, 2, 0]
    assert [message for page in pages for message in page] == [f"{i:02d}" for i in range(12)]
    assert [event["message"][:2] for event in tail["events"]] == [f"{i:02d}" for i in range(7, 12)]


@pytest.mark.parametrize("order", ["page-size patch first", "part first"])
def test_given_the_page_size_patch_too_then_pages_are_the_same_in_either_order(
    aws: None, logs: Any, tmp_path: Path, order: str
) -> None:
    # Given moto_patches' logs-page-size patch applied before or after the part
    with patch_state("logs-page-size", order == "page-size patch first"), LocalLogs(tmp_path):
        patch_named("logs-page-size").apply()
        make_streams(logs)
        put(logs, ["x" * 200_000] * 12, now_ms())

        # When the stream is read forward
        sizes, token = [], None
        for _ in range(3):
            request: dict[str, Any] = {"nextToken": token} if token else {}
            page = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, startFromHead=True, **request)
            sizes.append(len(page["events"]))
            token = page["nextForwardToken"]

        # Then the pages are the part's
        assert sizes == [5, 5, 2]


def test_given_no_limit_then_a_page_holds_ten_thousand_events(local: LocalLogs, logs: Any) -> None:
    # Given more events than a page holds by default
    make_streams(logs)
    backend = logs_backends[DEFAULT_ACCOUNT_ID][REGION]
    start = now_ms()
    backend.put_log_events(GROUP, STREAM, [{"timestamp": start, "message": str(i)} for i in range(10_005)])

    # When it is read from its head, then on
    first = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, startFromHead=True)
    rest = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken=first["nextForwardToken"])

    # Then the first page stops at the default limit and the next one has the rest, in arrival order
    assert len(first["events"]) == DEFAULT_EVENT_LIMIT
    assert [event["message"] for event in rest["events"]] == [str(i) for i in range(10_000, 10_005)]


def test_given_an_empty_stream_when_read_forward_then_the_token_repeats_and_later_events_appear(
    local: LocalLogs, logs: Any
) -> None:
    # Given an empty stream read from its head, and from its end
    make_streams(logs)
    head = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, startFromHead=True)
    again = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken=head["nextForwardToken"])
    tail = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM)

    # When events arrive
    put(logs, ["first"], now_ms())

    # Then the forward tokens read them
    assert head["events"] == again["events"] == tail["events"] == []
    assert again["nextForwardToken"] == head["nextForwardToken"]
    for token in (head["nextForwardToken"], tail["nextForwardToken"]):
        page = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken=token)
        assert [event["message"] for event in page["events"]] == ["first"]
    with pytest.raises(logs.exceptions.InvalidParameterException):
        logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, nextToken="x/123")


def test_given_concurrent_puts_to_one_stream_then_every_event_and_byte_is_counted(local: LocalLogs, logs: Any) -> None:
    # Given a stream
    make_streams(logs)
    backend = logs_backends[DEFAULT_ACCOUNT_ID][REGION]
    start = now_ms()

    # When four threads put fifty batches of ten events each at the same time
    def writer(n: int) -> None:
        for batch in range(50):
            backend.put_log_events(GROUP, STREAM, [{"timestamp": start + batch, "message": f"{n}"} for _ in range(10)])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then the stream holds all 2,000 events, and its facts count all 200 puts
    [stream] = describe(logs)
    assert (stream["storedBytes"], stream["uploadSequenceToken"]) == (2_000, "200")
    assert len(read_forward(logs, limit=10_000)[0]) == 2_000


# ---------------------------------------------------------------------------------------------- deletes, crashes


def test_given_deleted_streams_and_groups_when_the_stack_restarts_then_they_stay_deleted(
    local: LocalLogs, logs: Any
) -> None:
    # Given a group with two streams and a second group, in the snapshot; then one stream and that group deleted
    for group in (GROUP, "/other"):
        logs.create_log_group(logGroupName=group)
        for name in ("kept", "gone"):
            logs.create_log_stream(logGroupName=group, logStreamName=name)
            put_to = {"logGroupName": group, "logStreamName": name}
            logs.put_log_events(**put_to, logEvents=[{"timestamp": now_ms(), "message": name}])
    snapshot = local.snapshot()
    logs.delete_log_stream(logGroupName=GROUP, logStreamName="gone")
    logs.delete_log_group(logGroupName="/other")

    # When the stack restarts from the snapshot taken before the deletes
    local.restart(snapshot)

    # Then the deleted stream is gone, and so are the deleted group's streams (the group is the stale snapshot's)
    assert [stream["logStreamName"] for stream in describe(logs)] == ["kept"]
    assert logs.describe_log_streams(logGroupName="/other")["logStreams"] == []
    with local.store.reading() as db:
        assert db.execute("SELECT count(*) FROM log_event").fetchone()[0] == 1


def test_given_a_group_the_snapshot_never_saw_when_the_stack_restarts_then_it_comes_back_with_its_streams(
    local: LocalLogs, logs: Any
) -> None:
    # Given a snapshot taken before the agent created a group and a stream in-process
    snapshot = local.snapshot()
    backend = logs_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.create_log_group(GROUP, {})
    backend.create_log_stream(GROUP, STREAM)
    backend.put_log_events(GROUP, STREAM, [{"timestamp": now_ms(), "message": "hello"}])

    # When the stack restarts from it
    local.restart(snapshot)

    # Then the group is there, with its stream and events
    assert read_forward(logs, limit=10)[0] == ["hello"]


def test_given_a_crash_inside_put_log_events_then_the_stream_keeps_its_old_state(local: LocalLogs, logs: Any) -> None:
    # Given a stream with one event
    make_streams(logs)
    put(logs, ["kept"], now_ms())
    described = describe(logs)
    backend = logs_backends[DEFAULT_ACCOUNT_ID][REGION]

    # When a put and a stream creation fail inside their transactions
    local.store.crash = True
    with pytest.raises(SimulatedCrash):
        backend.put_log_events(GROUP, STREAM, [{"timestamp": now_ms(), "message": "lost"}])
    with pytest.raises(SimulatedCrash):
        backend.create_log_stream(GROUP, "never")
    local.store.crash = False

    # Then neither shows, in this process or after a restart
    assert describe(logs) == described and read_forward(logs, limit=10)[0] == ["kept"]
    local.restart()
    assert describe(logs) == described and read_forward(logs, limit=10)[0] == ["kept"]


# ---------------------------------------------------------------------------------------------- moto's other readers


def test_given_a_subscription_filter_then_put_log_events_still_delivers_to_the_firehose_archive(
    local: LocalLogs, logs: Any, tmp_path: Path
) -> None:
    # Given a group subscribed to a Firehose stream that writes to an S3 bucket, S3 durable too
    s3_part = S3Part(local.store, tmp_path / "objects")
    s3_patch = Patch("durable-s3", "objects on disk", s3_part.install)
    s3_patch.apply()
    try:
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="archive")
        firehose = boto3.client("firehose", region_name=REGION)
        role = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/r"
        stream_arn = firehose.create_delivery_stream(
            DeliveryStreamName="archive",
            ExtendedS3DestinationConfiguration={"RoleARN": role, "BucketARN": "arn:aws:s3:::archive"},
        )["DeliveryStreamARN"]
        make_streams(logs)
        logs.put_subscription_filter(
            logGroupName=GROUP, filterName="archive", filterPattern="", destinationArn=stream_arn, roleArn=role
        )

        # When events are put
        put(logs, ["one", "two"], now_ms())

        # Then the archive holds them, with the ids the store gave them
        [item] = s3.list_objects_v2(Bucket="archive")["Contents"]
        body = json.loads(gzip.decompress(s3.get_object(Bucket="archive", Key=item["Key"])["Body"].read()))
        assert [event["message"] for event in body["logEvents"]] == ["one", "two"]
        with local.store.reading() as db:
            ids = [row[0] for row in db.execute("SELECT id FROM log_event ORDER BY id")]
        assert [event["id"] for event in body["logEvents"]] == ids
        assert len(list((tmp_path / "objects").iterdir())) == 1
    finally:
        s3_patch.revert()


def test_given_events_then_moto_s_whole_stream_readers_see_them(local: LocalLogs, logs: Any) -> None:
    # Given a stream with events
    make_streams(logs)
    start = now_ms()
    put(logs, ["b", "c"], start + 1)
    put(logs, ["a"], start)

    # When moto reads the whole stream (as Insights queries and live tail do)
    stream = logs_backends[DEFAULT_ACCOUNT_ID][REGION].groups[GROUP].streams[STREAM]

    # Then it sees the events in time order, and cannot put a list of events back in memory
    assert [event.message for event in stream.events] == ["a", "b", "c"]
    with pytest.raises(TypeError):
        stream.events = stream.events


# ---------------------------------------------------------------------------------------------- memory


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_given_200k_events_of_200_bytes_then_memory_stays_flat(local: LocalLogs, logs: Any) -> None:
    # Given a stream, warmed up by a first batch
    make_streams(logs)
    backend = logs_backends[DEFAULT_ACCOUNT_ID][REGION]
    start = now_ms()

    def put_batches(first: int, count: int) -> None:
        for batch in range(first, first + count):
            events = [
                {"timestamp": start + batch, "message": f"{batch:06d}-{i:04d}".ljust(200, "x")} for i in range(1_000)
            ]
            backend.put_log_events(GROUP, STREAM, events)

    put_batches(0, 1)
    before = resident_bytes()

    # When 200,000 events (40 MB of messages) are put
    put_batches(1, 200)
    grown = resident_bytes() - before

    # Then the process grew by far less than the events weigh (moto alone grows by several times their size)
    print(f"\nRSS growth for 200,000 events of 200 bytes: {grown / 1e6:.1f} MB")
    assert grown < 50e6
    tail = logs.get_log_events(logGroupName=GROUP, logStreamName=STREAM, limit=1)
    assert tail["events"][0]["message"].startswith("000200-0999")
