"""The state folder: one stack at a time, free again at once when its owner dies (kill -9), throwaway folders of
dead ephemeral stacks swept, and `reset` forgets the state but not the project's container engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from taskrunner_local.persistence.folder import EPHEMERAL_PREFIX, LOCK_FILE, StateFolder, StateFolderBusy

HOLD_FOLDER = """
import sys, time
from pathlib import Path
from taskrunner_local.persistence.folder import StateFolder
StateFolder.open(Path(sys.argv[1]), ephemeral=sys.argv[2] == "1")
print("holding", flush=True)
time.sleep(600)
"""


def holder(path: Path, *, ephemeral: bool = False) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLDER, str(path), "1" if ephemeral else "0"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "holding"
    return process


def test_a_folder_held_by_a_live_stack_is_refused_with_its_pid(tmp_path: Path) -> None:
    process = holder(tmp_path / "state")
    try:
        with pytest.raises(StateFolderBusy, match=f"pid {process.pid}"):
            StateFolder.open(tmp_path / "state")
    finally:
        process.kill()
        process.wait()


def test_a_folder_whose_stack_was_killed_is_free_at_once(tmp_path: Path) -> None:
    process = holder(tmp_path / "state")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    folder = StateFolder.open(tmp_path / "state")
    folder.close()


def test_an_ephemeral_folder_left_by_a_killed_stack_is_swept_by_the_next_ephemeral_stack() -> None:
    # Given a throwaway folder whose stack died without removing it, and one whose stack lives
    dead = Path(tempfile.mkdtemp(prefix=EPHEMERAL_PREFIX))
    (dead / LOCK_FILE).write_text("1")
    alive = Path(tempfile.mkdtemp(prefix=EPHEMERAL_PREFIX))
    process = holder(alive)
    try:
        # When an ephemeral stack starts
        folder = StateFolder.open(None, ephemeral=True)
        # Then the dead one's folder is gone, the live one's stays, and its own is removed when it stops
        assert not dead.exists() and alive.exists()
        folder.close()
        assert not folder.path.exists()
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(alive, ignore_errors=True)


def test_forget_keeps_the_container_engine_and_the_lock(tmp_path: Path) -> None:
    folder = StateFolder.open(tmp_path / "state")
    for name in ("state.sqlite3", "state.sqlite3-wal"):
        (folder.path / name).write_text("x")
    folder.sub("tasks")
    folder.sub("engine")
    (folder.path / "engine" / "storage.conf").write_text("kept")
    assert folder.forget() == ["state.sqlite3", "state.sqlite3-wal", "tasks"]
    assert sorted(p.name for p in folder.path.iterdir()) == ["engine", LOCK_FILE]
    folder.close()
