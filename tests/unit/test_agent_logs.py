"""The local Fargate agent's output path without a stack: lines into awslogs events, events into PutLogEvents
batches within CloudWatch's limits, and a bounded backlog that holds the task back."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from taskrunner_local import agent
from taskrunner_local.agent import (
    LOG_BATCH_MAX_BYTES,
    LOG_BATCH_MAX_EVENTS,
    LOG_EVENT_MAX_BYTES,
    LOG_QUEUE_MAX_BYTES,
    _LineSplitter,
    _LogShipper,
)


def events_of(data: bytes, chunk: int) -> list[tuple[str, int]]:
    splitter = _LineSplitter()
    events: list[tuple[str, int]] = []
    for start in range(0, len(data), chunk):
        events += splitter.feed(data[start : start + chunk])
    return events + splitter.flush()


def test_the_event_limit_is_cloudwatchs_256_kib_less_26_bytes() -> None:
    assert LOG_EVENT_MAX_BYTES == 262_118
    assert (LOG_BATCH_MAX_EVENTS, LOG_BATCH_MAX_BYTES) == (10_000, 1_048_576)


@pytest.mark.parametrize("chunk", [65_536, 4_093, 7])
def test_a_long_line_of_multibyte_characters_becomes_events_cut_between_characters(chunk: int) -> None:
    line = "\u00e9\u20ac\U0001f600a" * 40_000  # 400,000 bytes
    events = events_of(line.encode() + b"\ndone\n", chunk)
    assert [text for text, _ in events][-1] == "done"
    assert "".join(text for text, _ in events[:-1]) == line
    assert all(size == len(text.encode()) <= LOG_EVENT_MAX_BYTES for text, size in events)
    assert len(events) == 3


def test_lines_are_events_without_their_newline_and_a_last_partial_line_is_one_too() -> None:
    events = events_of(b"one\r\ntwo\n\nthree", 2)
    assert [text for text, _ in events] == ["one", "two", "", "three"]


def test_a_line_of_exactly_the_limit_is_one_event_and_one_byte_more_is_two() -> None:
    events = events_of(b"a" * LOG_EVENT_MAX_BYTES + b"\n" + b"b" * (LOG_EVENT_MAX_BYTES + 1) + b"\n", 65_536)
    assert [size for _, size in events] == [LOG_EVENT_MAX_BYTES, LOG_EVENT_MAX_BYTES, 1]


def test_undecodable_bytes_count_as_the_three_bytes_of_their_replacement_character() -> None:
    data = bytes(random.Random(7).getrandbits(8) for _ in range(700_000)).replace(b"\n", b"x")
    events = events_of(data, 65_536)
    assert all(size == len(text.encode()) <= LOG_EVENT_MAX_BYTES for text, size in events)
    events = events_of(b"\xff" * 600_000, 65_536)
    assert all(size <= LOG_EVENT_MAX_BYTES for _, size in events)
    assert sum(len(text) for text, _ in events) == 600_000


def test_a_50_mb_line_is_never_held_whole() -> None:
    splitter = _LineSplitter()
    count = 0
    for _ in range(800):
        count += len(splitter.feed(b"x" * 65_536))
        assert len(splitter._partial) <= LOG_EVENT_MAX_BYTES
    assert count + len(splitter.flush()) == -(-800 * 65_536 // LOG_EVENT_MAX_BYTES)


class RecordingLogs:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def create_log_stream(self, group: str, stream: str) -> None: ...

    def put_log_events(self, group: str, stream: str, events: list[dict[str, Any]]) -> None:
        assert self.gate.wait(30)
        self.batches.append(events)


def test_batches_keep_to_putlogevents_limits_and_every_line_arrives_once_in_order() -> None:
    logs = RecordingLogs()
    shipper = _LogShipper(logs, "group", "stream")  # type: ignore[arg-type]
    sent = []
    for i in range(25_000):
        text = str(i) if i % 1000 else "x" * 200_000
        shipper.line(text)
        sent.append(text)
    shipper.close()
    for batch in logs.batches:
        assert len(batch) <= LOG_BATCH_MAX_EVENTS
        assert sum(len(e["message"].encode()) + 26 for e in batch) <= LOG_BATCH_MAX_BYTES
    received = [e for batch in logs.batches for e in batch]
    assert [e["message"] for e in received] == sent
    stamps = [e["timestamp"] for e in received]
    assert stamps == sorted(stamps)


def test_the_backlog_is_bounded_and_holds_the_writer_back_until_the_stream_catches_up() -> None:
    logs = RecordingLogs()
    logs.gate.clear()
    shipper = _LogShipper(logs, "group", "stream")  # type: ignore[arg-type]
    written = 0

    def write() -> None:
        nonlocal written
        for _ in range(200):
            shipper.put("y" * 50_000, 50_000)  # 10 MB in all
            written += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(1)
    assert writer.is_alive()
    # the backlog, one batch being shipped and the event waiting to be queued
    assert written * 50_026 <= LOG_QUEUE_MAX_BYTES + LOG_BATCH_MAX_BYTES + 50_026
    logs.gate.set()
    writer.join(30)
    shipper.close()
    assert written == 200 and sum(len(b) for b in logs.batches) == 200


def test_a_shipper_that_fails_counts_its_lines_lost_and_never_blocks_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent.time, "sleep", lambda seconds: None)
    logs = RecordingLogs()

    def broken(group: str, stream: str, events: list[dict[str, Any]]) -> None:
        raise RuntimeError("endpoint down")

    logs.put_log_events = broken  # type: ignore[method-assign]
    shipper = _LogShipper(logs, "group", "stream")  # type: ignore[arg-type]
    for i in range(30_000):
        shipper.line(str(i))
    shipper.close()
    assert shipper.lost == 30_000
