"""Helpers of the end-to-end tests: task specs for the local stack, and what runs on this machine."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from taskrunner_local.config import ROOT
from taskrunner_local.images import PYTHON_IMAGE


def shell(script: str, **spec: object) -> dict[str, object]:
    """A task spec that runs `script` with sh, in the offline Python image (a container in container mode, a host
    process in process mode)."""
    return {"image": PYTHON_IMAGE, "command": ["sh", "-c", script], **spec}


def processes_with(marker: str) -> list[int]:
    """The pids of this machine's processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def process_state(pid: int) -> tuple[str, int] | None:
    """A process's state letter (`Z` for a zombie) and parent pid, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.1) -> bool:
    """Whether `predicate` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


#: the line `taskrunner local up` ends its banner with, once the stack serves
UP_BANNER_END = "Ctrl-C stops the stack"


def read_banner(process: subprocess.Popen[str], timeout: float) -> list[str]:
    """The lines `taskrunner local up` printed up to the end of its banner (or until it exited or `timeout`)."""
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if UP_BANNER_END in line or not line:
            break
    return output


def admin_key_in(banner: str) -> tuple[str, Path]:
    """The admin key the banner of `taskrunner local up` shows, and the file it says the key is saved in
    (`Admin key      trk_... (saved in <file>)`; a relative file is under the project's folder, where tests start
    stacks)."""
    [line] = [line for line in banner.splitlines() if line.strip().startswith("Admin key ")]
    key, saved_in = line.split(maxsplit=2)[2].split(" (saved in ", 1)
    return key, ROOT / saved_in.removesuffix(")")
