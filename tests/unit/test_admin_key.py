"""The local stack's admin key in its state folder: made once, in a file only its owner can read from the first
byte on, kept across starts, made anew when deleted, forgotten by a reset; and what clients read of it."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskrunner_local.admin_key import ADMIN_KEY_FILE, ensure_admin_key, key_digest, read_admin_key
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.persistence.folder import StateFolder

KEY_FORMAT = r"trk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}"


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[StateFolder]:
    opened = StateFolder.open(tmp_path / "state")
    yield opened
    opened.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the file's mode is what the code asks for, no less."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_folder_gets_a_key_only_its_owner_can_read(folder: StateFolder, open_umask: None) -> None:
    # When a stack starts on a new folder
    admin = ensure_admin_key(folder)
    # Then it made a key, as the API makes keys, in admin.key (the key and a newline), mode 0600
    assert admin.origin == "made"
    assert re.fullmatch(KEY_FORMAT, admin.key), admin.key
    assert admin.path == folder.path / ADMIN_KEY_FILE
    assert admin.path.read_text() == f"{admin.key}\n"
    assert mode(admin.path) == 0o600
    assert admin.sha256 == key_digest(admin.key) and len(admin.sha256) == 64


def test_the_key_file_is_never_readable_by_others_not_even_before_it_is_complete(
    folder: StateFolder, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a look at the file the key is written to, just before it takes the name admin.key
    seen: list[tuple[str, int, str]] = []
    replace = os.replace

    def watched_replace(source: Path, target: Path) -> None:
        seen.append((Path(source).name, mode(Path(source)), Path(source).read_text()))
        replace(source, target)

    monkeypatch.setattr(os, "replace", watched_replace)
    # When the key is written
    admin = ensure_admin_key(folder)
    # Then that file was the owner's alone and complete, and it is admin.key now
    [(name, partial_mode, text)] = seen
    assert name != ADMIN_KEY_FILE and partial_mode == 0o600 and text == f"{admin.key}\n"
    assert sorted(p.name for p in folder.path.iterdir()) == [ADMIN_KEY_FILE, "stack.lock"]


def test_a_restart_keeps_the_key_and_a_deleted_file_gets_a_new_one(folder: StateFolder) -> None:
    first = ensure_admin_key(folder)
    again = ensure_admin_key(folder)
    assert (again.key, again.origin) == (first.key, "kept")
    first.path.unlink()
    replaced = ensure_admin_key(folder)
    assert replaced.origin == "made" and replaced.key != first.key


def test_a_key_file_others_could_read_gets_a_new_key_only_its_owner_can_read(folder: StateFolder) -> None:
    first = ensure_admin_key(folder)
    first.path.chmod(0o644)
    again = ensure_admin_key(folder)
    assert again.origin == "exposed" and again.key != first.key and again.key.startswith("trk_")
    assert mode(first.path) == 0o600


@pytest.mark.parametrize("content", ["x\n", "trk_short\n", "Bearer trk_abc\n"])
def test_a_key_file_that_holds_no_well_formed_key_gets_a_new_key(folder: StateFolder, content: str) -> None:
    (folder.path / ADMIN_KEY_FILE).write_text(content)
    (folder.path / ADMIN_KEY_FILE).chmod(0o600)
    again = ensure_admin_key(folder)
    assert again.origin == "malformed" and again.key != content.strip() and again.key.startswith("trk_")
    assert mode(again.path) == 0o600


def test_an_empty_key_file_gets_a_new_key(folder: StateFolder) -> None:
    (folder.path / ADMIN_KEY_FILE).write_text("\n")
    assert ensure_admin_key(folder).origin == "made"


def test_forget_removes_the_key_with_the_state(folder: StateFolder) -> None:
    ensure_admin_key(folder)
    assert ADMIN_KEY_FILE in folder.forget()
    assert not (folder.path / ADMIN_KEY_FILE).exists()


def test_clients_read_the_key_of_the_state_folder(
    folder: StateFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = ensure_admin_key(folder)
    assert read_admin_key(folder.path) == admin.key
    assert read_admin_key(tmp_path / "no-stack-here") is None
    # by default the folder TASKRUNNER_STATE_DIR names, as the stack does
    monkeypatch.setenv("TASKRUNNER_STATE_DIR", str(folder.path))
    client = TaskRunnerClient("http://127.0.0.1:1")
    assert client.http.headers["Authorization"] == f"Bearer {admin.key}"
    # and a key given wins
    assert TaskRunnerClient("http://127.0.0.1:1", api_key="trk_x").http.headers["Authorization"] == "Bearer trk_x"
