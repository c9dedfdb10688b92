"""S3 objects kept durable: every object's body is a file in the objects folder, its metadata a row of the store.

moto 5.2.5 keeps each object's body in a SpooledTemporaryFile of its `FakeKey`, in memory below about 5 MB, and
loses it when the process stops. This part writes the body of every object a call creates to a file of its own
(a temporary name, fsync, rename, fsync of the folder) before the row that names it commits, and then points the
`FakeKey` at that file (`DurableBody`), so bodies stay out of memory and no file descriptor is held per object.

What is written: the after-image of every object name a call touched (all its versions and delete markers, with
their metadata, ACL, lock settings and tags), in one transaction per call, before the call answers. A call is an
S3 request (the whole of moto's handler, which sets metadata and tags after creating the object) or a direct call
of a backend method from inside the process, as moto's Firehose makes when it delivers to its S3 destination.
Calls nest (CopyObject, CompleteMultipartUpload and DeleteObjects are made of PutObject and DeleteObject); only the
outermost one writes. Bodies no row names any more are deleted after the commit; a crash between the two leaves
files that the next restore sweeps.

Not kept: parts of multipart uploads still in progress (the upload is dropped at restore, as an abandoned upload
would be) and the parts of completed ones (moto frees them too).

Write-throughs are serialized by a lock of this part taken before the store's: an object must not be written from
inside a store transaction on another thread (the logs part delivers to Firehose after its commit for this reason).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import itertools
import os
import pickle
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from taskrunner_local.moto_patches import _replace
from taskrunner_local.persistence.store import StateStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS s3_object (
    account TEXT NOT NULL,
    partition TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    body TEXT,
    state BLOB NOT NULL,
    PRIMARY KEY (account, partition, bucket, key, position)
) WITHOUT ROWID
"""

#: bytes copied at a time between a body buffer and its file
_CHUNK = 1 << 20
_TEMPORARY_SUFFIX = ".tmp"
#: FakeKey attributes that are not metadata: the body, its lock, and the upload it was assembled from
_NOT_METADATA = frozenset({"_value_buffer", "lock", "multipart"})

#: (account, partition, bucket, key name): one object name, with all its versions
ObjectName = tuple[str, str, str, str]


def _key_and_bucket(arguments: dict[str, Any]) -> tuple[str, str]:
    return arguments["bucket_name"], arguments["key_name"]


def _tagged_key(arguments: dict[str, Any]) -> tuple[str, str]:
    key = arguments["key"]  # moto refuses a delete marker before it gets here
    return key.bucket_name, key.name


#: backend methods that change one object name, and how to find that name in their arguments
_OBJECT_WRITES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "put_object": _key_and_bucket,
    "delete_object": _key_and_bucket,
    "put_object_acl": _key_and_bucket,
    "put_object_legal_hold": _key_and_bucket,
    "put_object_retention": _key_and_bucket,
    "delete_object_tagging": _key_and_bucket,
    "restore_object": _key_and_bucket,
    "put_object_tagging": _tagged_key,
}
#: backend methods that change objects through the methods above, then change them further themselves
_COMPOSITE_WRITES = ("copy_object", "complete_multipart_upload", "delete_objects")
#: moto's S3 request handlers: PutObject sets metadata, ACL and tags after the backend made the object
_REQUEST_HANDLERS = ("key_response", "bucket_response")


class DurableBody:
    """Stands in for a FakeKey's SpooledTemporaryFile once its body is a durable file.

    Reads open the file each time (no descriptor held per object, no bytes kept). Should moto write a new value
    in place, the body moves to a fresh spooled buffer and the durable file stays as it was: the next write
    through gives the object a new file."""

    __slots__ = ("_max_buffer_size", "_position", "_replacement", "borrowed", "closed", "path")

    def __init__(self, path: Path, max_buffer_size: int, *, borrowed: bool = False) -> None:
        self.path = path
        self._max_buffer_size = max_buffer_size
        #: the file belongs to another object (this one is a copy): written through, this one gets its own file
        self.borrowed = borrowed
        self._position = 0
        self._replacement: IO[bytes] | None = None
        self.closed = False

    @property
    def intact(self) -> bool:
        """Whether the body is still exactly the durable file."""
        return self._replacement is None

    def reopen(self) -> DurableBody:
        """Another reader of the same file, for a copy of the object."""
        return DurableBody(self.path, self._max_buffer_size, borrowed=True)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")  # what moto's buffer raises once disposed

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if self._replacement is not None:
            return self._replacement.seek(offset, whence)
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self.path.stat().st_size
        self._position = max(offset, 0)
        return self._position

    def tell(self) -> int:
        self._check_open()
        return self._replacement.tell() if self._replacement is not None else self._position

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if self._replacement is not None:
            return self._replacement.read(-1 if size is None else size)
        with self.path.open("rb") as file:
            file.seek(self._position)
            data = file.read(-1 if size is None or size < 0 else size)
        self._position += len(data)
        return data

    def _detach(self) -> IO[bytes]:
        if self._replacement is None:
            replacement: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=self._max_buffer_size)  # noqa: SIM115
            with self.path.open("rb") as file:
                while chunk := file.read(_CHUNK):
                    replacement.write(chunk)
            replacement.seek(self._position)
            self._replacement = replacement
        return self._replacement

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        return self._detach().truncate(size)

    def write(self, data: bytes) -> int:
        self._check_open()
        return self._detach().write(data)

    def close(self) -> None:
        """moto disposes of an object's buffer when the object goes; the file is the store's to delete."""
        if self._replacement is not None:
            self._replacement.close()
        self.closed = True


@dataclass
class _Calls:
    """The calls in progress on one thread: how deep they nest and which object names they touched."""

    depth: int = 0
    touched: dict[tuple[str, str], Any] = field(default_factory=dict)  # (bucket, key name) -> backend


@dataclass
class _Version:
    """One entry of an object name's version list, as a row holds it."""

    body: str | None
    state: bytes


class S3Part:
    """Writes S3 objects through to the state store (metadata) and the objects folder (bodies)."""

    name = "s3"

    def __init__(self, store: StateStore, folder: Path) -> None:
        from moto.s3.models import FakeDeleteMarker, FakeKey

        self.store = store
        self.folder = folder
        self.externalized: tuple[type, ...] = (FakeKey, FakeDeleteMarker)
        folder.mkdir(parents=True, exist_ok=True)
        store.ensure_schema(_SCHEMA)
        self._local = threading.local()
        #: one write through at a time: a body file is never deleted while another call is about to name it
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ patching

    def install(self) -> list[tuple[Any, str, Any]]:
        from moto.s3.models import FakeKey, S3Backend
        from moto.s3.responses import S3Response

        part = self
        originals: list[tuple[Any, str, Any]] = []

        def scope(original: Callable[..., Any], touches: Callable[[dict[str, Any]], tuple[str, str]] | None) -> Any:
            signature = inspect.signature(original)

            @functools.wraps(original)
            def call_writing_through(owner: Any, *args: Any, **kwargs: Any) -> Any:
                with part._call():
                    if touches is not None:
                        bucket_name, key_name = touches(signature.bind(owner, *args, **kwargs).arguments)
                        part._calls().touched[(bucket_name, key_name)] = owner
                    return original(owner, *args, **kwargs)

            return call_writing_through

        for method, touches in _OBJECT_WRITES.items():
            originals.append(_replace(S3Backend, method, scope(getattr(S3Backend, method), touches)))
        for method in _COMPOSITE_WRITES:
            originals.append(_replace(S3Backend, method, scope(getattr(S3Backend, method), None)))
        for handler in _REQUEST_HANDLERS:
            originals.append(_replace(S3Response, handler, scope(getattr(S3Response, handler), None)))
        originals.append(_replace(FakeKey, "__deepcopy__", _copy_key))
        return originals

    def _calls(self) -> _Calls:
        calls: _Calls | None = getattr(self._local, "calls", None)
        if calls is None:
            calls = self._local.calls = _Calls()
        return calls

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One call that may change objects; the outermost one on a thread writes what they all touched."""
        calls = self._calls()
        calls.depth += 1
        try:
            yield
        finally:
            calls.depth -= 1
            if calls.depth == 0 and calls.touched:
                touched, calls.touched = calls.touched, {}
                self._write_through(touched)

    # ------------------------------------------------------------------------------------------------ writing

    def _write_through(self, touched: dict[tuple[str, str], Any]) -> None:
        """Make the touched object names on disk what they are in moto: new bodies to files first, then every
        name's versions in one transaction, then the bodies no row names any more away."""
        from moto.s3.exceptions import MissingBucket

        with self._lock:
            images: dict[ObjectName, list[_Version]] = {}
            written: list[tuple[Any, Path]] = []  # (FakeKey, its new body file)
            try:
                for (bucket_name, key_name), backend in touched.items():
                    try:
                        bucket = backend.get_bucket(bucket_name)
                    except MissingBucket:
                        continue
                    versions = list(bucket.keys.getlist(key_name) or [])
                    owner = (bucket.account_id, bucket.partition, bucket.name, key_name)
                    images[owner] = [self._version(backend, entry, versions, written) for entry in versions]
                if written and self.store.durable:
                    _fsync_folder(self.folder)
                with self.store.transaction() as db:
                    stale = self._replace_rows(db, images)
            except BaseException:
                for _, path in written:  # named by no committed row
                    path.unlink(missing_ok=True)
                raise
            for key, path in written:
                _point_at(key, path)
            for name in stale:
                (self.folder / name).unlink(missing_ok=True)

    def _version(self, backend: Any, entry: Any, versions: list[Any], written: list[tuple[Any, Path]]) -> _Version:
        from moto.s3.models import FakeKey

        if not isinstance(entry, FakeKey):
            return _Version(None, pickle.dumps(_marker_state(entry, versions)))
        buffer = vars(entry).get("_value_buffer")
        if isinstance(buffer, DurableBody) and buffer.intact and not buffer.borrowed:
            body = buffer.path.name  # already on disk: one file per object, never shared
        else:
            path = self._write_body(entry)
            written.append((entry, path))
            body = path.name
        return _Version(body, pickle.dumps(_key_state(backend, entry)))

    def _write_body(self, key: Any) -> Path:
        """Copy an object's body to a new file of the folder, on disk when this returns (the folder's entry once
        the folder is fsynced); the ETag is computed on the way when moto has not yet."""
        name = uuid.uuid4().hex
        temporary = self.folder / f"{name}{_TEMPORARY_SUFFIX}"
        digest = hashlib.md5(usedforsecurity=False)
        with key.lock, temporary.open("xb") as file:
            key._value_buffer.seek(0)
            while chunk := key._value_buffer.read(_CHUNK):
                file.write(chunk)
                digest.update(chunk)
            file.flush()
            if self.store.durable:
                os.fsync(file.fileno())
        if key._etag is None:
            key._etag = digest.hexdigest()
        path = self.folder / name
        os.replace(temporary, path)
        return path

    def _replace_rows(self, db: sqlite3.Connection, images: dict[ObjectName, list[_Version]]) -> set[str]:
        """Write the after-images; return the body files that no row names any more."""
        before: set[str] = set()
        after: set[str] = set()
        for owner, versions in images.items():
            rows = db.execute(
                "SELECT body FROM s3_object WHERE account = ? AND partition = ? AND bucket = ? AND key = ?", owner
            )
            before.update(body for (body,) in rows if body is not None)
            db.execute("DELETE FROM s3_object WHERE account = ? AND partition = ? AND bucket = ? AND key = ?", owner)
            db.executemany(
                "INSERT INTO s3_object (account, partition, bucket, key, position, body, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*owner, position, version.body, version.state) for position, version in enumerate(versions)],
            )
            after.update(version.body for version in versions if version.body is not None)
        return before - after

    # ------------------------------------------------------------------------------------------------ restoring

    def restore(self) -> None:
        """Put every object back into the restored buckets (the snapshot holds None in their place); drop the rows
        of buckets that no longer exist, uploads whose parts are gone, and body files that no row names."""
        from moto.s3.models import s3_backends

        restored: set[int] = set()
        gone: list[tuple[str, str, str]] = []
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT account, partition, bucket, key, position, body, state FROM s3_object "
                "ORDER BY account, partition, bucket, key, position"
            )
            for (account, partition, bucket_name), bucket_rows in itertools.groupby(rows, key=lambda row: row[:3]):
                backend = s3_backends[account][partition]
                bucket = backend.buckets.get(bucket_name)
                if bucket is None:
                    gone.append((account, partition, bucket_name))
                    continue
                dict.clear(bucket.keys)  # the snapshot's placeholders
                for key_name, key_rows in itertools.groupby(bucket_rows, key=lambda row: row[3]):
                    versions = self._revive(backend, [(body, state) for *_, body, state in key_rows])
                    dict.__setitem__(bucket.keys, key_name, versions)
                restored.add(id(bucket))
        for backend in _all_backends():
            for bucket in backend.buckets.values():
                # moto finds a bucket's account through this registry, which lives outside the backends
                s3_backends.bucket_accounts[bucket.name] = (backend.partition, backend.account_id)
                if id(bucket) not in restored:
                    dict.clear(bucket.keys)
                for upload_id, upload in list(dict.items(bucket.multiparts)):
                    if any(part is None for part in upload.parts.values()):
                        upload.parts = {}  # moto keeps the upload (and disposes of its parts at reset)
                        del bucket.multiparts[upload_id]
        if gone:
            with self.store.transaction() as db:
                db.executemany("DELETE FROM s3_object WHERE account = ? AND partition = ? AND bucket = ?", gone)
        self._sweep()

    def _revive(self, backend: Any, rows: list[tuple[str | None, bytes]]) -> list[Any]:
        """An object name's version list from its rows: FakeKeys reading their body files, delete markers."""
        from moto.s3.models import FakeDeleteMarker, FakeKey

        versions: list[Any] = []
        for body, blob in rows:
            state = pickle.loads(blob)
            if body is None:
                marker: Any = object.__new__(FakeDeleteMarker)  # moto's constructors keep every instance for ever
                marker.__dict__.update(state["attributes"])
                marker.key = _marked(state["marks"], versions, marker.name)
                versions.append(marker)
                continue
            key: Any = object.__new__(FakeKey)
            key.__dict__.update(state["attributes"])
            key.multipart = _revive_upload(state["multipart"])
            key.lock = threading.Lock()
            key._value_buffer = DurableBody(self.folder / body, key._max_buffer_size)
            backend.tagger.delete_all_tags_for_resource(key.arn)
            if state["tags"]:
                backend.tagger.tag_resource(key.arn, [{"Key": k, "Value": v} for k, v in state["tags"].items()])
            versions.append(key)
        return versions

    def _sweep(self) -> None:
        """Delete the files of the objects folder that no row names: bodies of writes that never committed, or
        whose deletion a crash interrupted."""
        with self.store.reading() as db:
            named = {body for (body,) in db.execute("SELECT body FROM s3_object WHERE body IS NOT NULL")}
        for path in self.folder.iterdir():
            if path.is_file() and path.name not in named:
                path.unlink(missing_ok=True)


def _all_backends() -> Iterator[Any]:
    from moto.s3.models import s3_backends

    for account in list(s3_backends):
        yield from list(dict.values(s3_backends[account]))


def _fsync_folder(folder: Path) -> None:
    """Make the folder's new entries (renamed files) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _point_at(key: Any, path: Path) -> None:
    """Serve the key's body from its durable file and free the buffer that held it."""
    with key.lock:
        previous = key._value_buffer
        key._value_buffer = DurableBody(path, key._max_buffer_size)
    previous.close()


def _key_state(backend: Any, key: Any) -> dict[str, Any]:
    """What a row keeps of a FakeKey besides its body: its attributes, the upload it came from (without the parts,
    which moto frees once the upload completes) and its tags (kept by the backend's tagger, not the key)."""
    upload = key.multipart
    return {
        "attributes": {name: value for name, value in vars(key).items() if name not in _NOT_METADATA},
        "multipart": None if upload is None else {**vars(upload), "parts": {}},
        "tags": backend.tagger.get_tag_dict_for_resource(key.arn),
    }


def _marker_state(marker: Any, versions: list[Any]) -> dict[str, Any]:
    """What a row keeps of a delete marker. Its `key` (the version it hid) matters to moto only for its type, so
    the row says which version it was, or that it was another marker."""
    from moto.s3.models import FakeDeleteMarker

    hidden = marker.key
    if isinstance(hidden, FakeDeleteMarker):
        marks: str | None = None
    else:
        marks = hidden.version_id if any(entry is hidden for entry in versions) else ""
    return {"attributes": {name: value for name, value in vars(marker).items() if name != "key"}, "marks": marks}


def _marked(marks: str | None, versions: list[Any], name: str) -> Any:
    """The entry a restored delete marker hides: the version it names when it is still there, else a stand-in of
    the right type."""
    from moto.s3.models import FakeDeleteMarker, FakeKey

    if marks is None:
        marker: Any = object.__new__(FakeDeleteMarker)
        marker.name = name
        return marker
    for entry in versions:
        if isinstance(entry, FakeKey) and entry.version_id == marks:
            return entry
    stand_in: Any = object.__new__(FakeKey)
    stand_in.__dict__.update(name=name, _version_id=marks or None, disposed=True)
    return stand_in


def _revive_upload(state: dict[str, Any] | None) -> Any:
    from moto.s3.models import FakeMultipart

    if state is None:
        return None
    upload = object.__new__(FakeMultipart)
    upload.__dict__.update(state)
    return upload


def _copy_key(key: Any, memo: dict[int, Any]) -> Any:
    """FakeKey's deep copy (moto's ListObjectVersions copies every version). By default a copy reads the whole body
    into a new buffer and, made through moto's constructor, is kept for ever: a durable copy reads the same file."""
    clone = object.__new__(type(key))
    memo[id(key)] = clone
    buffer = vars(key).get("_value_buffer")
    if isinstance(buffer, DurableBody) and buffer.intact:
        attributes = {name: value for name, value in vars(key).items() if name not in {"_value_buffer", "lock"}}
        clone.__dict__.update(copy.deepcopy(attributes, memo))
        clone._value_buffer = buffer.reopen()
        clone.lock = threading.Lock()
    else:
        clone.__setstate__(copy.deepcopy(key.__getstate__(), memo))
    return clone
