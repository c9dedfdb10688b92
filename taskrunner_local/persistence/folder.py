"""The state folder: where a local stack keeps everything it must not forget (`.taskrunner/` under the directory it
starts from, `TASKRUNNER_STATE_DIR` to move it), or a throwaway one (`--ephemeral`) removed when the stack stops.

One stack at a time owns a folder: it holds an exclusive `flock` on `stack.lock` for as long as it runs. The kernel
drops that lock when the process dies, however it dies, so a restart right after `kill -9` finds the folder free
(and the next ephemeral stack removes the throwaway folder a killed one left).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

LOCK_FILE = "stack.lock"
#: what `forget` leaves in a state folder: its lock, and the project's container engine (`.taskrunner/engine/`)
KEPT_BY_FORGET = frozenset({LOCK_FILE, "engine"})


EPHEMERAL_PREFIX = "taskrunner-ephemeral-"


def _sweep_dead_ephemeral_folders() -> None:
    """Remove the throwaway folders of ephemeral stacks that died without removing theirs (kill -9): those whose
    lock nobody holds."""
    for folder in Path(tempfile.gettempdir()).glob(f"{EPHEMERAL_PREFIX}*"):
        try:
            descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not made by a stack, or being made right now: left alone
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live stack's
        finally:
            os.close(descriptor)
        shutil.rmtree(folder, ignore_errors=True)


class StateFolderBusy(RuntimeError):
    """Another running stack owns the state folder."""


class StateUnusable(RuntimeError):
    """The state folder cannot be used as it is (not a folder, not writable, a damaged database, another stack's
    state): the stack does not start, and touches nothing, rather than lose what the folder holds."""


class StateFolder:
    def __init__(self, path: Path, *, ephemeral: bool = False) -> None:
        self.path = path
        self.ephemeral = ephemeral
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path: Path | None, *, ephemeral: bool = False) -> StateFolder:
        """The folder at `path` (a new temporary one when ephemeral and no path is given), locked for this stack;
        StateFolderBusy when another live stack holds it."""
        if ephemeral and path is None:
            _sweep_dead_ephemeral_folders()
            path = Path(tempfile.mkdtemp(prefix=EPHEMERAL_PREFIX))
        if path is None:
            raise ValueError("a durable stack needs a state folder")
        folder = cls(path.resolve(), ephemeral=ephemeral)
        try:
            folder._lock()
        except OSError as error:
            raise StateUnusable(
                f"the state folder {folder.path} cannot be used: {error.strerror or error} (TASKRUNNER_STATE_DIR or "
                "--state-dir chooses another)"
            ) from error
        return folder

    def _lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise StateFolderBusy(
                f"the state folder {self.path} is in use by another local stack (pid {owner}); stop it first, or "
                "give this one its own folder (TASKRUNNER_STATE_DIR) or --ephemeral"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        self._lock_fd = descriptor

    def forget(self) -> list[str]:
        """Remove everything the stack keeps here (while holding the lock, so no stack runs on it), except what is
        not its state (the container engine's configuration and image store, `engine/`). Returns what it removed."""
        removed = []
        for entry in sorted(self.path.iterdir()):
            if entry.name in KEPT_BY_FORGET:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
        return removed

    def write_private(self, name: str, text: str) -> Path:
        """Write a file of the folder that only its owner may read (mode 0600 from its first byte: it is made
        with that mode, never widened afterwards), whole or not at all: written beside it and renamed over it."""
        path = self.path / name
        partial = path.with_name(f".{name}.partial")
        partial.unlink(missing_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(descriptor, text.encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(partial, path)
        return path

    def sub(self, name: str) -> Path:
        """A folder inside the state folder, made when missing."""
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def describe(self) -> str:
        """What the banner says of where state lives."""
        if self.ephemeral:
            return f"{self.path} (ephemeral: removed when the stack stops)"
        return f"{self.path} (durable: survives Ctrl-C, kill -9 and restarts)"

    def close(self) -> None:
        """Release the folder (and remove it when ephemeral)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.ephemeral:
            shutil.rmtree(self.path, ignore_errors=True)
