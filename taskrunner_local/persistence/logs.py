"""CloudWatch Logs streams and their events, kept in the state store instead of moto's memory.

moto 5.2.5 keeps every event of every stream in a Python list (`LogStream.events`), and every `LogEvent` it ever
made also stays in `LogEvent.instances_tracked` (moto's `BaseModel` records each instance for ever), so a stack that
runs tasks for days grows without bound and loses every line when it stops. This part stores each event as a row of
`log_event`, indexed by (stream, timestamp) so that a page of GetLogEvents or FilterLogEvents is a range scan, and
each stream's facts (first and last event, stored bytes, sequence token) as a row of `log_stream`; moto keeps only
small `LogStream` objects without events. Events are committed before PutLogEvents answers, in one transaction with
the stream's facts.

Paging tokens keep AWS's shape (`f/` or `b/` and 56 digits, which clients and this project's API accept) but name
a position, the (timestamp, event id) of the page's edge, instead of moto's index into a sorted copy of the whole
stream: reading the next page seeks to it instead of sorting the stream again. A forward read from a token that
has nothing after it returns the same token, so clients that page with nextForwardToken until it repeats stop.

Behaviours moto's clients see are kept: events in timestamp order (ties in arrival order), `startFromHead`,
`limit` (10,000 by default) and AWS's 1 MB page (as the `logs-page-size` patch of moto_patches.py, whose constants
are used), FilterLogEvents' stream selection, time range, patterns as moto matches them and its
`group@stream@eventId` tokens, DescribeLogStreams' fields, order and `group@stream` tokens, and subscription filters
firing on every PutLogEvents (the S3 archive is fed through the Firehose one). Reads that moto makes over a whole
stream (Insights queries, live tail) still work, through `LogStream.events`, which then reads the rows.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import sqlite3
from collections.abc import Generator, Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from taskrunner_local.moto_patches import LOG_EVENT_OVERHEAD_BYTES, LOG_PAGE_BYTES, _replace
from taskrunner_local.persistence.store import StateStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_stream (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    region TEXT NOT NULL,
    log_group TEXT NOT NULL,
    name TEXT NOT NULL,
    arn TEXT NOT NULL,
    creation_time REAL NOT NULL,
    first_event_timestamp INTEGER,
    last_event_timestamp INTEGER,
    last_ingestion_time REAL,
    stored_bytes INTEGER NOT NULL,
    upload_sequence_token INTEGER NOT NULL,
    UNIQUE (account, region, log_group, name)
);
CREATE INDEX IF NOT EXISTS log_stream_by_last_event
    ON log_stream (account, region, log_group, coalesce(last_event_timestamp, 0), id);
CREATE TABLE IF NOT EXISTS log_event (
    id INTEGER PRIMARY KEY,
    stream INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    ingestion_time INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_event_by_time ON log_event (stream, timestamp)
"""

#: GetLogEvents and FilterLogEvents return at most this many events when the caller sets no limit
DEFAULT_EVENT_LIMIT = 10_000
#: a token's 56 digits are timestamp * POSITION_SPAN + event id
POSITION_SPAN = 10**36
_TOKEN_DIGITS = 56
#: bounds of SQLite's integers, for ranges left open
_LOWEST, _HIGHEST = -(2**63), 2**63 - 1
_INVALID_TOKEN = "The specified nextToken is invalid."
_EPOCH = datetime(1970, 1, 1)
_STREAM_COLUMNS = (
    "id, name, arn, creation_time, first_event_timestamp, last_event_timestamp, last_ingestion_time, stored_bytes, "
    "upload_sequence_token"
)

#: (timestamp, event id): where an event sits in its stream's order
Position = tuple[int, int]
#: FilterLogEvents' choice of events: (stream names, start time, end time, filter pattern, interleaved)
_Selection = tuple[list[str], int | None, int | None, str | None, bool]


@dataclass(frozen=True)
class _EventRow:
    id: int
    timestamp: int
    ingestion_time: int
    message: str

    @property
    def position(self) -> Position:
        return self.timestamp, self.id

    @property
    def page_bytes(self) -> int:
        return len(self.message.encode()) + LOG_EVENT_OVERHEAD_BYTES


@dataclass(frozen=True)
class _StreamFacts:
    """What a stream knows about its events besides the events: the fields DescribeLogStreams shows."""

    first_event_timestamp: int | None
    last_event_timestamp: int | None
    last_ingestion_time: datetime | None
    stored_bytes: int
    upload_sequence_token: int

    @classmethod
    def of(cls, stream: Any) -> _StreamFacts:
        return cls(
            stream.first_event_timestamp,
            stream.last_event_timestamp,
            stream.last_ingestion_time,
            stream.stored_bytes,
            stream.upload_sequence_token,
        )

    def after(self, events: list[dict[str, Any]], ingested: datetime) -> _StreamFacts:
        """The facts once `events` are stored, counted as moto counts them (stored bytes are characters)."""
        timestamps = [int(event["timestamp"]) for event in events]
        firsts = [t for t in (self.first_event_timestamp, *timestamps) if t is not None]
        lasts = [t for t in (self.last_event_timestamp, *timestamps) if t is not None]
        return _StreamFacts(
            min(firsts) if firsts else None,
            max(lasts) if lasts else None,
            ingested,
            self.stored_bytes + sum(len(event["message"]) for event in events),
            self.upload_sequence_token + 1,
        )

    def apply_to(self, stream: Any) -> None:
        stream.first_event_timestamp = self.first_event_timestamp
        stream.last_event_timestamp = self.last_event_timestamp
        stream.last_ingestion_time = self.last_ingestion_time
        stream.stored_bytes = self.stored_bytes
        stream.upload_sequence_token = self.upload_sequence_token


def _millis(moment: datetime) -> float:
    from moto.core.utils import unix_time_millis

    return float(unix_time_millis(moment))


def _moment(millis: float) -> datetime:
    """The naive UTC datetime moto keeps for an epoch-milliseconds value."""
    return _EPOCH + timedelta(milliseconds=millis)


def encode_token(direction: str, position: Position) -> str:
    timestamp, event_id = position
    return f"{direction}/{max(timestamp * POSITION_SPAN + event_id, 0):0{_TOKEN_DIGITS}d}"


def decode_token(token: str) -> tuple[str, Position]:
    """A GetLogEvents token's direction and position; moto's own tokens (`f/-000…1` included) decode too."""
    from moto.logs.exceptions import InvalidParameterException

    direction, slash, digits = token[:1], token[1:2], token[2:]
    if direction not in {"f", "b"} or slash != "/":
        raise InvalidParameterException(_INVALID_TOKEN)
    try:
        value = int(digits)
    except ValueError:
        raise InvalidParameterException(_INVALID_TOKEN) from None
    timestamp, event_id = divmod(max(value, 0), POSITION_SPAN)
    return direction, (min(timestamp, _HIGHEST), event_id)


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None when there is none), so that a prefix
    becomes a range of the name index."""
    for cut in range(len(prefix), 0, -1):
        code = ord(prefix[cut - 1]) + 1
        if code == 0xD800:  # surrogates cannot be stored: skip them
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[: cut - 1] + chr(code)
    return None


class LogsPart:
    """Writes log streams and events through to the state store and serves their reads from it."""

    name = "logs"

    def __init__(self, store: StateStore) -> None:
        from moto.logs.models import LogStream

        self.store = store
        self.externalized: tuple[type, ...] = (LogStream,)
        store.ensure_schema(_SCHEMA)

    # ------------------------------------------------------------------------------------------------ patching

    def install(self) -> list[tuple[Any, str, Any]]:
        from moto.logs.models import LogGroup, LogsBackend, LogStream

        part = self
        create_log_stream = LogGroup.create_log_stream
        delete_log_stream = LogGroup.delete_log_stream
        delete_log_group = LogsBackend.delete_log_group

        @functools.wraps(create_log_stream)
        def create_log_stream_durably(group: Any, log_stream_name: str) -> None:
            create_log_stream(group, log_stream_name)
            try:
                with part.store.transaction() as db:
                    part._stream_id(db, group.streams[log_stream_name])
            except BaseException:
                group.streams.pop(log_stream_name, None)  # unacknowledged: nobody saw it
                raise

        @functools.wraps(delete_log_stream)
        def delete_log_stream_durably(group: Any, log_stream_name: str) -> None:
            if log_stream_name in group.streams:  # moto raises for an unknown one below
                with part.store.transaction() as db:
                    part._delete_streams(db, group, [log_stream_name])
            delete_log_stream(group, log_stream_name)

        @functools.wraps(delete_log_group)
        def delete_log_group_durably(backend: Any, log_group_name: str) -> None:
            group = backend.groups.get(log_group_name)
            if group is not None:
                with part.store.transaction() as db:
                    part._delete_streams(db, group, None)
            delete_log_group(backend, log_group_name)

        def put_log_events(stream: Any, log_events: list[dict[str, Any]]) -> str:
            return part._put(stream, log_events)

        def get_log_events(  # noqa: PLR0917 - moto's own signature
            group: Any,
            log_stream_name: str,
            start_time: int | None,
            end_time: int | None,
            limit: int | None,
            next_token: str | None,
            start_from_head: bool,
        ) -> tuple[list[dict[str, Any]], str, str]:
            from moto.logs.exceptions import ResourceNotFoundException

            if log_stream_name not in group.streams:
                raise ResourceNotFoundException()
            return part._page(group.streams[log_stream_name], start_time, end_time, limit, next_token, start_from_head)

        def filter_stream_events(
            stream: Any, start_time: int | None, end_time: int | None, filter_pattern: str | None
        ) -> list[dict[str, Any]]:
            return list(part._filtered([stream], start_time, end_time, filter_pattern))

        def filter_log_events(  # noqa: PLR0917 - moto's own signature
            group: Any,
            log_group_name: str,
            log_stream_names: list[str],
            start_time: int | None,
            end_time: int | None,
            limit: int | None,
            next_token: str | None,
            filter_pattern: str | None,
            interleaved: bool,
        ) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
            selection = (log_stream_names, start_time, end_time, filter_pattern, interleaved)
            return part._filter(group, log_group_name, selection, limit, next_token)

        def describe_log_streams(  # noqa: PLR0917 - moto's own signature
            group: Any,
            descending: bool,
            log_group_name: str,
            log_stream_name_prefix: str,
            order_by: str,
            limit: int,
            next_token: str | None = None,
        ) -> tuple[list[dict[str, Any]], str | None]:
            return part._describe_streams(
                group, descending, log_group_name, log_stream_name_prefix or "", order_by, limit, next_token
            )

        def to_describe_dict(stream: Any) -> dict[str, Any]:
            with part.store.reading() as db:
                row = db.execute(f"SELECT {_STREAM_COLUMNS} FROM log_stream WHERE id = ?", (part._known_id(stream),))
                return _describe(row.fetchone())

        return [
            _replace(LogGroup, "create_log_stream", create_log_stream_durably),
            _replace(LogGroup, "delete_log_stream", delete_log_stream_durably),
            _replace(LogsBackend, "delete_log_group", delete_log_group_durably),
            _replace(LogStream, "put_log_events", put_log_events),
            _replace(LogGroup, "get_log_events", get_log_events),
            _replace(LogStream, "filter_log_events", filter_stream_events),
            _replace(LogGroup, "filter_log_events", filter_log_events),
            _replace(LogGroup, "describe_log_streams", describe_log_streams),
            _replace(LogStream, "to_describe_dict", to_describe_dict),
            _replace(LogStream, "events", property(self._read_all_events, _refuse_event_list)),
        ]

    # ------------------------------------------------------------------------------------------------ restoring

    def restore(self) -> None:
        """Put every stream back into the restored log groups (the snapshot holds None in their place), in the order
        they were created. A stream whose group the snapshot lacks brings its group back: the Fargate agent creates
        groups in-process, which no snapshot may have seen, and a deleted group has no rows left."""
        from moto.logs.models import LogStream, logs_backends

        restored: dict[int, dict[str, Any]] = {}  # id of a group -> its streams by name
        with self.store.reading() as db:
            rows = db.execute(f"SELECT account, region, log_group, {_STREAM_COLUMNS} FROM log_stream ORDER BY id")
            for account, region, group_name, *facts in rows:
                backend = logs_backends[account][region]
                if group_name not in backend.groups:
                    backend.ensure_log_group(group_name)
                group = backend.groups[group_name]
                stream = object.__new__(LogStream)  # not through moto's constructor: it keeps every instance for ever
                LogStream.__init__(stream, group, facts[1])
                _restore_facts(stream, facts)
                restored.setdefault(id(group), {})[stream.log_stream_name] = stream
        for account in list(logs_backends):
            for backend in list(dict.values(logs_backends[account])):
                for group in backend.groups.values():
                    group.streams = restored.get(id(group), {})

    # ------------------------------------------------------------------------------------------------ writing

    def _stream_id(self, db: sqlite3.Connection, stream: Any) -> int:
        """The row of a stream, made when it has none yet (a stream created before install)."""
        known: int | None = getattr(stream, "_durable_id", None)
        if known is not None:
            return known
        group = stream.log_group
        db.execute(
            "INSERT OR IGNORE INTO log_stream (account, region, log_group, name, arn, creation_time, "
            "first_event_timestamp, last_event_timestamp, last_ingestion_time, stored_bytes, upload_sequence_token) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                group.account_id,
                group.region,
                group.name,
                stream.log_stream_name,
                stream.arn,
                _millis(stream.creation_time),
                stream.first_event_timestamp,
                stream.last_event_timestamp,
                None if stream.last_ingestion_time is None else _millis(stream.last_ingestion_time),
                stream.stored_bytes,
                stream.upload_sequence_token,
            ),
        )
        (stream_id,) = db.execute(
            "SELECT id FROM log_stream WHERE account = ? AND region = ? AND log_group = ? AND name = ?",
            (group.account_id, group.region, group.name, stream.log_stream_name),
        ).fetchone()
        stream._durable_id = stream_id
        return int(stream_id)

    def _known_id(self, stream: Any) -> int:
        known = getattr(stream, "_durable_id", None)
        if known is None:
            with self.store.transaction() as db:
                known = self._stream_id(db, stream)
        return int(known)

    def _delete_streams(self, db: sqlite3.Connection, group: Any, names: list[str] | None) -> None:
        """Delete streams of `group` (all of them when `names` is None) with their events."""
        where = "account = ? AND region = ? AND log_group = ?"
        parameters: list[Any] = [group.account_id, group.region, group.name]
        if names is not None:
            where += f" AND name IN ({', '.join('?' * len(names))})"
            parameters += names
        db.execute(f"DELETE FROM log_event WHERE stream IN (SELECT id FROM log_stream WHERE {where})", parameters)
        db.execute(f"DELETE FROM log_stream WHERE {where}", parameters)

    def _put(self, stream: Any, log_events: list[dict[str, Any]]) -> str:
        """moto's LogStream.put_log_events with the events committed as rows instead of appended to a list; its
        body is followed rather than wrapped because it makes a LogEvent per event, which moto never frees."""
        from moto.core.utils import utcnow

        ingested = utcnow()
        ingestion_time = int(_millis(ingested))
        before: _StreamFacts | None = None
        try:
            with self.store.transaction() as db:
                # Counted under the store's write lock, so that concurrent puts count from each other's facts.
                before = _StreamFacts.of(stream)
                after = before.after(log_events, ingested)
                stream_id = self._stream_id(db, stream)
                (first_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM log_event").fetchone()
                db.executemany(
                    "INSERT INTO log_event (id, stream, timestamp, ingestion_time, message) VALUES (?, ?, ?, ?, ?)",
                    [
                        (first_id + offset, stream_id, int(event["timestamp"]), ingestion_time, event["message"])
                        for offset, event in enumerate(log_events)
                    ],
                )
                db.execute(
                    "UPDATE log_stream SET first_event_timestamp = ?, last_event_timestamp = ?, "
                    "last_ingestion_time = ?, stored_bytes = ?, upload_sequence_token = ? WHERE id = ?",
                    (
                        after.first_event_timestamp,
                        after.last_event_timestamp,
                        _millis(ingested),
                        after.stored_bytes,
                        after.upload_sequence_token,
                        stream_id,
                    ),
                )
                after.apply_to(stream)
        except BaseException:
            if before is not None:  # the commit failed: moto's stream must not show what the store lacks
                before.apply_to(stream)
            raise
        # Delivered after the commit, outside the store's lock: a Lambda destination may run code that writes too.
        delivered = [
            {"id": first_id + offset, "timestamp": event["timestamp"], "message": event["message"]}
            for offset, event in enumerate(log_events)
        ]
        for subscription in stream.log_group.subscription_filters.values():
            stream._send_log_events(
                service=subscription.destination_arn.split(":")[2],
                destination_arn=subscription.destination_arn,
                filter_name=subscription.name,
                log_events=delivered,
            )
        return f"{after.upload_sequence_token:056d}"

    # ------------------------------------------------------------------------------------------ GetLogEvents

    def _page(  # noqa: PLR0917 - moto's GetLogEvents arguments
        self,
        stream: Any,
        start_time: int | None,
        end_time: int | None,
        limit: int | None,
        next_token: str | None,
        start_from_head: bool,
    ) -> tuple[list[dict[str, Any]], str, str]:
        """One page of GetLogEvents: (events, nextBackwardToken, nextForwardToken).

        A forward token names the last event read (the next page starts after it), a backward token the first
        (the previous page ends before it). A page stops at `limit` events or at 1 MB, whichever comes first."""
        if next_token:
            direction, position = decode_token(next_token)
        else:
            direction, position = ("f", (_LOWEST, 0)) if start_from_head else ("b", (_HIGHEST, 0))
        limit = limit or DEFAULT_EVENT_LIMIT
        low, high = start_time or _LOWEST, end_time or _HIGHEST
        with self.store.reading() as db:
            if direction == "f":
                rows = db.execute(
                    "SELECT id, timestamp, ingestion_time, message FROM log_event WHERE stream = ? "
                    "AND timestamp >= ? AND timestamp <= ? AND (timestamp, id) > (?, ?) ORDER BY timestamp, id",
                    (self._known_id(stream), max(low, position[0]), high, *position),
                )
            else:
                rows = db.execute(
                    "SELECT id, timestamp, ingestion_time, message FROM log_event WHERE stream = ? "
                    "AND timestamp >= ? AND timestamp <= ? AND (timestamp, id) < (?, ?) "
                    "ORDER BY timestamp DESC, id DESC",
                    (self._known_id(stream), low, min(high, position[0]), *position),
                )
            try:
                page = _take_page(map(_event_row, rows), limit)
            finally:
                rows.close()  # an unfinished statement would pin this pooled connection's snapshot
        if direction == "b":
            page.reverse()
        events = [
            {"ingestionTime": row.ingestion_time, "message": row.message, "timestamp": row.timestamp} for row in page
        ]
        if page:
            return events, encode_token("b", page[0].position), encode_token("f", page[-1].position)
        timestamp, event_id = position
        if direction == "f":  # nothing after the position: stay there
            return events, encode_token("b", (timestamp, event_id + 1)), encode_token("f", position)
        if next_token is None:  # an empty stream read from its end: read forward from its head later
            return events, encode_token("b", (0, 0)), encode_token("f", (0, 0))
        return events, encode_token("b", position), encode_token("f", (timestamp, event_id - 1))

    # ------------------------------------------------------------------------------------------ FilterLogEvents

    def _filter(
        self, group: Any, log_group_name: str, selection: _Selection, limit: int | None, next_token: str | None
    ) -> tuple[list[dict[str, Any]], str | None, list[dict[str, Any]]]:
        """FilterLogEvents as moto answers it: the selected streams one after the other in creation order (by
        timestamp across streams when `interleaved`), matching events only, `limit` of them per page."""
        log_stream_names, start_time, end_time, filter_pattern, interleaved = selection
        streams = [stream for name, stream in group.streams.items() if not log_stream_names or name in log_stream_names]
        searched = [{"logStreamName": stream.log_stream_name, "searchedCompletely": True} for stream in streams]
        resume: tuple[int, Position] | None = None
        if next_token:
            resume = self._filter_resume(next_token, log_group_name, streams)
            if resume is None:  # AWS answers a token it did not issue with no events
                return [], None, searched
        limit = limit or DEFAULT_EVENT_LIMIT
        with closing(self._filtered(streams, start_time, end_time, filter_pattern, interleaved, resume)) as matches:
            page = list(itertools.islice(matches, limit + 1))
        token = None
        if len(page) > limit:
            page = page[:limit]
            token = f"{log_group_name}@{page[-1]['logStreamName']}@{page[-1]['eventId']}"
        return page, token, searched

    def _filter_resume(self, token: str, log_group_name: str, streams: list[Any]) -> tuple[int, Position] | None:
        """Where a FilterLogEvents token resumes: (index of its stream among `streams`, position of its event)."""
        group_name, _, rest = token.partition("@")
        stream_name, _, event_id = rest.rpartition("@")
        if group_name != log_group_name or not event_id.isdigit():
            return None
        with self.store.reading() as db:
            row = db.execute("SELECT stream, timestamp FROM log_event WHERE id = ?", (int(event_id),)).fetchone()
        for index, stream in enumerate(streams):
            if stream.log_stream_name == stream_name and row is not None and row[0] == self._known_id(stream):
                return index, (int(row[1]), int(event_id))
        return None

    def _filtered(  # noqa: PLR0917
        self,
        streams: list[Any],
        start_time: int | None,
        end_time: int | None,
        filter_pattern: str | None,
        interleaved: bool = False,
        resume: tuple[int, Position] | None = None,
    ) -> Generator[dict[str, Any], None, None]:
        """The events of `streams` that match, in FilterLogEvents' order, read lazily (a page costs what it scans,
        never the whole group)."""
        from moto.logs.utils import EventMessageFilter

        matcher = EventMessageFilter(filter_pattern or "")
        low, high = start_time or _LOWEST, end_time or _HIGHEST
        with self.store.reading() as db, ExitStack() as cursors:

            def scan(index: int, stream: Any) -> Iterator[tuple[tuple[int, int, int], Any, _EventRow]]:
                after = _resume_after(index, resume, interleaved)
                if after is None:
                    return
                cursor = db.execute(
                    "SELECT id, timestamp, ingestion_time, message FROM log_event WHERE stream = ? "
                    "AND timestamp >= ? AND timestamp <= ? AND (timestamp, id) > (?, ?) ORDER BY timestamp, id",
                    (self._known_id(stream), max(low, after[0]), high, *after),
                )
                cursors.callback(cursor.close)
                for row in map(_event_row, cursor):
                    yield (row.timestamp, index, row.id), stream, row

            scans = [scan(index, stream) for index, stream in enumerate(streams)]
            ordered = heapq.merge(*scans, key=lambda item: item[0]) if interleaved else itertools.chain(*scans)
            for _, stream, row in ordered:
                if matcher.matches(row.message):
                    yield {
                        "eventId": str(row.id),
                        "ingestionTime": row.ingestion_time,
                        "message": row.message,
                        "timestamp": row.timestamp,
                        "logStreamName": stream.log_stream_name,
                    }

    # ------------------------------------------------------------------------------------------ DescribeLogStreams

    def _describe_streams(  # noqa: PLR0917 - moto's DescribeLogStreams arguments
        self,
        group: Any,
        descending: bool,
        log_group_name: str,
        prefix: str,
        order_by: str,
        limit: int,
        next_token: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of DescribeLogStreams read from the stream rows by an index (name, or last event time then
        creation), never by describing every stream of the group."""
        where = ["account = ?", "region = ?", "log_group = ?"]
        parameters: list[Any] = [group.account_id, group.region, group.name]
        order = "DESC" if descending else "ASC"
        after_token: str | None = None
        if next_token:
            token_group, _, after_token = next_token.partition("@")
            if token_group != log_group_name:
                return [], None
        with self.store.reading() as db:
            if order_by == "LogStreamName":
                if prefix:
                    where.append("name >= ?")
                    parameters.append(prefix)
                    upper = _after_prefix(prefix)
                    if upper is not None:
                        where.append("name < ?")
                        parameters.append(upper)
                if after_token is not None:
                    where.append("name < ?" if descending else "name > ?")
                    parameters.append(after_token)
                ordering = f"name {order}"
            else:
                if after_token is not None:
                    mark = db.execute(
                        "SELECT coalesce(last_event_timestamp, 0), id FROM log_stream WHERE account = ? AND region = ? "
                        "AND log_group = ? AND name = ?",
                        (*parameters, after_token),
                    ).fetchone()
                    if mark is None:
                        return [], None
                    comparison = "<" if descending else ">"
                    where.append(f"coalesce(last_event_timestamp, 0) {comparison}= ?")
                    where.append(f"(coalesce(last_event_timestamp, 0), id) {comparison} (?, ?)")
                    parameters += [mark[0], *mark]
                ordering = f"coalesce(last_event_timestamp, 0) {order}, id {order}"
            rows = db.execute(
                f"SELECT {_STREAM_COLUMNS} FROM log_stream WHERE {' AND '.join(where)} ORDER BY {ordering} LIMIT ?",
                (*parameters, limit + 1),
            ).fetchall()
        page = [_describe(row) for row in rows[:limit] if row[1].startswith(prefix)]
        token = f"{log_group_name}@{page[-1]['logStreamName']}" if page and len(rows) > limit else None
        return page, token

    # ------------------------------------------------------------------------------------------------ whole streams

    def _read_all_events(self, stream: Any) -> list[Any]:
        """`LogStream.events` for moto's whole-stream readers (Insights queries, live tail): the stream's events
        read from their rows, as LogEvents that moto does not keep (made without its constructor)."""
        from moto.logs.models import LogEvent

        events = []
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT id, timestamp, ingestion_time, message FROM log_event WHERE stream = ? ORDER BY timestamp, id",
                (self._known_id(stream),),
            )
            for row in map(_event_row, rows):
                event = object.__new__(LogEvent)
                event.event_id, event.timestamp, event.ingestion_time, event.message = (
                    row.id,
                    row.timestamp,
                    row.ingestion_time,
                    row.message,
                )
                events.append(event)
        return events


def _refuse_event_list(stream: Any, events: list[Any]) -> None:
    """moto's LogStream constructor sets `events = []`; nothing else may keep events in memory again."""
    if events:
        raise TypeError("log events live in the state store; LogStream.events cannot be assigned")


def _event_row(row: tuple[Any, ...]) -> _EventRow:
    return _EventRow(int(row[0]), int(row[1]), int(row[2]), str(row[3]))


def _take_page(rows: Iterable[_EventRow], limit: int) -> list[_EventRow]:
    """The events of one page: at most `limit`, and at most 1 MB unless a single event is larger (as AWS does)."""
    page: list[_EventRow] = []
    size = 0
    for row in rows:
        size += row.page_bytes
        if page and size > LOG_PAGE_BYTES:
            break
        page.append(row)
        if len(page) >= limit:
            break
    return page


def _resume_after(index: int, resume: tuple[int, Position] | None, interleaved: bool) -> Position | None:
    """The position after which stream `index` is read again when FilterLogEvents resumes (None: skip the stream).

    In stream order, the streams before the token's are done and those after it start over. Interleaved, the order
    is (timestamp, stream, event): every stream resumes at the token's timestamp, before it or after it."""
    if resume is None:
        return (_LOWEST, 0)
    stream_index, (timestamp, event_id) = resume
    if index == stream_index:
        return timestamp, event_id
    if not interleaved:
        return None if index < stream_index else (_LOWEST, 0)
    return (timestamp, _HIGHEST) if index < stream_index else (timestamp, -1)


def _describe(row: tuple[Any, ...]) -> dict[str, Any]:
    """A stream as DescribeLogStreams shows it: the event fields only once it holds events, as moto does."""
    _, name, arn, creation_time, first, last, last_ingestion, stored_bytes, sequence_token = row
    described: dict[str, Any] = {
        "arn": arn,
        "creationTime": int(creation_time),
        "logStreamName": name,
        "storedBytes": stored_bytes,
    }
    if first is not None:
        described |= {
            "firstEventTimestamp": first,
            "lastEventTimestamp": last,
            "lastIngestionTime": int(last_ingestion),
            "uploadSequenceToken": str(sequence_token),
        }
    return described


def _restore_facts(stream: Any, facts: list[Any]) -> None:
    stream_id, _, arn, creation_time, first, last, last_ingestion, stored_bytes, sequence_token = facts
    stream._durable_id = stream_id
    stream.arn = arn
    stream.creation_time = _moment(creation_time)
    _StreamFacts(
        first, last, None if last_ingestion is None else _moment(last_ingestion), stored_bytes, sequence_token
    ).apply_to(stream)


__all__ = ["DEFAULT_EVENT_LIMIT", "LogsPart", "decode_token", "encode_token"]
