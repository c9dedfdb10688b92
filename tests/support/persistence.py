"""A durable part of the local stack's state (taskrunner_local/persistence) on a real state folder, over real moto
backends, restarted as the local stack restarts after a crash: the part's backend snapshotted as the core's snapshot
takes it (the part's objects left out), the store closed, fresh backends with the snapshot loaded into them, a new
store and part on the same folder and fresh patches, then the part's restore()."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from moto.core.models import DEFAULT_ACCOUNT_ID

from taskrunner_local.moto_patches import Patch
from taskrunner_local.persistence import snapshots
from taskrunner_local.persistence.store import StateStore

PartT = TypeVar("PartT", bound=snapshots.Part)


class SimulatedCrash(Exception):
    """Raised inside a transaction, as if the process died before its commit."""


class CrashingStore(StateStore):
    """A state store whose transactions fail before committing while `crash` is set."""

    crash = False

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with super().transaction() as db:
            yield db
            if self.crash:
                raise SimulatedCrash


class LocalPart(Generic[PartT]):
    """One durable part of a local stack as one run of the stack holds it: a store on the state folder and the part,
    installed by its patch. `restart()` ends this run and starts the next one in its place."""

    #: the moto backends the part keeps objects of (a BackendDict), and the region (or partition) used here
    backends: Any
    region: str

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.start()

    def new_part(self, store: StateStore) -> PartT:
        raise NotImplementedError

    def start(self) -> None:
        self.store = CrashingStore(self.folder)
        self.part = self.new_part(self.store)
        self.patch = Patch(f"durable-{self.part.name}", f"{self.part.name} live in the state store", self.part.install)
        self.patch.apply()

    def stop(self) -> None:
        self.patch.revert()
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def backend(self) -> Any:
        return self.backends[DEFAULT_ACCOUNT_ID][self.region]

    def snapshot(self) -> bytes:
        """The part's backend as the core's snapshot holds it: the part's objects left out, loaded back as None."""
        return snapshots.dumps(self.backend, self.part.externalized)

    def restart(self, snapshot: bytes | None = None) -> None:
        """Stop and start again on the same folder from `snapshot` (by default one taken now), with fresh backends,
        a fresh store and fresh patches."""
        snapshot = self.snapshot() if snapshot is None else snapshot
        self.stop()
        self.backends[DEFAULT_ACCOUNT_ID].reset()
        dict.__setitem__(self.backends[DEFAULT_ACCOUNT_ID], self.region, snapshots.loads(snapshot))
        self.start()
        self.part.restore()
