"""Snapshots of moto's backends: the emulated AWS account as one pickle, minus its hot objects.

The control plane (the deployed stack's roles, functions, tables, cluster, task definitions, queues, schedules,
repositories, …) changes rarely; it is pickled whole, in one piece so that objects shared between services (a
CloudFormation stack and the resources it made) stay shared, after every request that changes it. The objects that
change on every task (DynamoDB items, ECS tasks, executions, log streams, S3 objects) are *externalized*: the
pickler writes a persistent reference instead of the object, they load back as None, and the part that owns them
writes each one through on its own and puts them back (`Part.restore`).

moto's objects hold what cannot be pickled: locks and threads are written as fresh ones, private keys as PEM, weak
dictionaries and defaultdicts of local factories as their plain equivalents. A snapshot names the moto and Python it
was written by; another moto cannot read it (its classes differ), and the stack says so instead of failing half-way.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import weakref
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

from taskrunner_local.persistence.store import StateStore

SNAPSHOT_KIND = "snapshot"
SNAPSHOT_KEY = "moto"
#: what a snapshot needs to be read back: the same moto, the same Python
FORMAT_META = "snapshot-format"
#: a pickle taken while another thread adds to a dict fails; it is taken again this many times
PICKLE_ATTEMPTS = 20

_LOCK_TYPES: tuple[type, ...] = (type(threading.Lock()), type(threading.RLock()))


class Part(Protocol):
    """A durable part of moto's state that is written through object by object, not snapshotted."""

    name: str
    externalized: tuple[type, ...]

    def install(self) -> list[tuple[Any, str, Any]]: ...

    def restore(self) -> None: ...


class SnapshotFormatError(RuntimeError):
    """The state folder was written by another moto or Python."""


def snapshot_format() -> str:
    import moto

    return f"moto {moto.__version__}, python {sys.version_info.major}.{sys.version_info.minor}"


def _new_lock(reentrant: bool) -> Any:
    return threading.RLock() if reentrant else threading.Lock()


def _nothing() -> None:
    return None


def _weak_values(items: dict[Any, Any]) -> weakref.WeakValueDictionary[Any, Any]:
    return weakref.WeakValueDictionary(items)


def _weak_keys(items: dict[Any, Any]) -> weakref.WeakKeyDictionary[Any, Any]:
    return weakref.WeakKeyDictionary(items)


def _defaultdict(factory: type, items: dict[Any, Any]) -> defaultdict[Any, Any]:
    return defaultdict(factory, items)


def _plain_factory(factory: Any) -> type | None:
    """The built-in type a local default factory (`lambda: {}`) makes, which pickles where the lambda cannot."""
    made = factory()
    return type(made) if type(made) in (dict, list, set) and not made else None


def _private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(pem, password=None)


def _private_key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, externalized: tuple[type, ...]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.externalized = externalized

    def persistent_id(self, obj: Any) -> Any:
        if self.externalized and isinstance(obj, self.externalized):
            return type(obj).__name__
        return None

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _LOCK_TYPES:
            return _new_lock, (kind is type(threading.RLock()),)
        if kind is threading.Condition:
            return threading.Condition, ()
        if kind is threading.Event:
            return threading.Event, ()
        if kind is weakref.WeakValueDictionary:  # its values are held elsewhere in the same pickle
            return _weak_values, (dict(obj.items()),)
        if kind is weakref.WeakKeyDictionary:
            return _weak_keys, (dict(obj.items()),)
        if kind is defaultdict and "<locals>" in getattr(obj.default_factory, "__qualname__", ""):
            factory = _plain_factory(obj.default_factory)
            if factory is not None:
                return _defaultdict, (factory, dict(obj))
        if isinstance(obj, threading.Thread):
            return _nothing, ()
        if kind.__module__.startswith("cryptography.") and hasattr(obj, "private_bytes"):
            return _private_key, (_private_key_pem(obj),)  # an SNS topic's signing key, say
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> None:
        return None  # an externalized object: its part puts it back


def dumps(value: Any, externalized: tuple[type, ...] = ()) -> bytes:
    """`value` pickled, with instances of `externalized` left out (they load as None). Taken again when another
    thread changed a dict while it was being pickled."""
    for attempt in range(PICKLE_ATTEMPTS):
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, externalized).dump(value)
        except RuntimeError:  # "dictionary changed size during iteration"
            if attempt == PICKLE_ATTEMPTS - 1:
                raise
            continue
        return buffer.getvalue()
    raise AssertionError("unreachable")


def loads(blob: bytes) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()


def _backend_dicts() -> Iterator[Any]:
    from moto.core.base_backend import BackendDict

    yield from list(BackendDict._instances)  # type: ignore[misc]  # moto's registry of the backends in use


def _backend_name(backends: Any) -> str:
    """A backend dict's name in a snapshot: its backend class (a service name is not enough: moto has two Step
    Functions backends, and only one of them runs executions)."""
    return f"{backends.backend.__module__}:{backends.backend.__qualname__}"


def _backend_dict_named(name: str) -> Any:
    """The backend dict (in its module, imported if need be) whose backend class `name` names."""
    import importlib

    from moto.core.base_backend import BackendDict

    module_name, qualname = name.split(":")
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if isinstance(value, BackendDict) and value.backend.__qualname__ == qualname:
            return value
    for backends in _backend_dicts():
        if _backend_name(backends) == name:
            return backends
    raise SnapshotFormatError(f"the snapshot names a moto backend this moto does not have: {name}")


class Snapshots:
    """Takes and loads the snapshot of moto's backends. `take` is safe to call from any thread: concurrent calls
    are coalesced (a snapshot begun after a change covers it), and each is written in one transaction."""

    def __init__(self, store: StateStore, externalized: tuple[type, ...]) -> None:
        self.store = store
        self.externalized = externalized
        self._lock = threading.Lock()
        self._changes = 0  # counts changes that need a snapshot
        self._covered = 0  # the count the last written snapshot covers
        self._counter_lock = threading.Lock()
        self.taken = 0

    def changed(self) -> int:
        """Note a change; returns its number (a snapshot taken after this covers it)."""
        with self._counter_lock:
            self._changes += 1
            return self._changes

    def take(self, change: int | None = None) -> None:
        """Write a snapshot that covers `change` (every change so far when None)."""
        if change is None:
            change = self.changed()
        with self._lock:
            if self._covered >= change:
                return  # a snapshot that began after this change was written meanwhile
            with self._counter_lock:
                covers = self._changes
            state = {
                _backend_name(backends): {account: dict(regions) for account, regions in list(backends.items())}
                for backends in _backend_dicts()
            }
            blob = dumps(state, self.externalized)
            with self.store.transaction() as connection:
                connection.execute(
                    "INSERT OR REPLACE INTO entity (kind, key, blob) VALUES (?, ?, ?)",
                    (SNAPSHOT_KIND, SNAPSHOT_KEY, blob),
                )
                connection.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (FORMAT_META, snapshot_format())
                )
            self._covered = covers
            self.taken += 1

    def exists(self) -> bool:
        return self.store.get(SNAPSHOT_KIND, SNAPSHOT_KEY) is not None

    def load(self) -> bool:
        """Put the last snapshot into moto's backends (externalized objects as None); False when there is none."""
        blob = self.store.get(SNAPSHOT_KIND, SNAPSHOT_KEY)
        if blob is None:
            return False
        written_by = self.store.meta(FORMAT_META)
        if written_by != snapshot_format():
            raise SnapshotFormatError(
                f"the state folder was written by {written_by}, and this is {snapshot_format()}: it cannot be read "
                "back (move the folder away, or start with --ephemeral)"
            )
        state: dict[str, dict[str, dict[str, Any]]] = loads(blob)
        for name, accounts in state.items():
            backends = _backend_dict_named(name)
            for account, regions in accounts.items():
                account_backends = backends[account]
                for region, backend in regions.items():
                    dict.__setitem__(account_backends, region, backend)
        return True
