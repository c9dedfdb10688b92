"""`python -m taskrunner_local.container_logs <engine> <container>`: the whole output of a container a re-adopting
agent follows, each stream on its own (stdout to stdout, stderr to stderr), from its start to its end.

Podman 4.3.1's `logs --follow` loses lines: it skips a run of lines in the middle, or stops early, when it reads an
exited container's log faster than its reader takes it, and it returns at once for a container that is stopping.
So for Podman this reads the container's log file itself (the k8s-file driver: one record per line or piece of a
line, `<time> <stdout|stderr> <F|P> <content>`, `P` for a piece without its newline), as `podman logs` does, and
follows it until the container has exited and every record is read. Docker's `logs --follow` keeps every line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

#: how long to wait for more of the log before looking whether the container has exited
POLL_SECONDS = 0.2
CHUNK_BYTES = 64 * 1024
_EXITED = ("exited", "stopped", "dead")


def _inspect(engine: str, container: str) -> dict[str, object]:
    """What `<engine> inspect` says of the container ({} when it cannot say)."""
    described = subprocess.run([engine, "inspect", container], capture_output=True, text=True, check=False)
    if described.returncode != 0:
        return {}
    found = json.loads(described.stdout)  # a list of one
    return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else {}


def _status(engine: str, container: str) -> str:
    state = _inspect(engine, container).get("State")
    return str(state.get("Status", "")) if isinstance(state, dict) else ""


def write_record(record: bytes, out: BinaryIO, err: BinaryIO) -> None:
    """One k8s-file record (without its newline) written to the stream it names, as `podman logs` writes it."""
    _time, stream, tag, content = [*record.split(b" ", 3), b"", b"", b""][:4]
    target = err if stream == b"stderr" else out
    target.write(content + (b"\n" if tag == b"F" else b""))


def follow_file(path: str, exited: Callable[[], bool], out: BinaryIO, err: BinaryIO) -> None:
    """Copy the records of the log file at `path` as they come, until `exited()` is true and the file is read to
    its end."""
    pending = b""
    with open(path, "rb") as log:
        while True:
            chunk = log.read(CHUNK_BYTES)
            if chunk:
                pending += chunk
                *records, pending = pending.split(b"\n")
                for record in records:
                    write_record(record, out, err)
                out.flush()
                err.flush()
                continue
            if exited():
                rest = log.read()  # what conmon wrote before the container's exit was seen
                if not rest:
                    break
                pending += rest
                continue
            time.sleep(POLL_SECONDS)
    if pending:  # a record cut short (conmon always ends one with a newline)
        write_record(pending, out, err)
    out.flush()
    err.flush()


def main(argv: list[str]) -> int:
    engine, container = argv[1], argv[2]
    out, err = sys.stdout.buffer, sys.stderr.buffer
    config = _inspect(engine, container).get("HostConfig")
    log = config.get("LogConfig") if isinstance(config, dict) else None
    path = log.get("Path") if isinstance(log, dict) else None
    if os.path.basename(engine) == "podman" and isinstance(path, str) and os.path.exists(path):
        follow_file(path, lambda: _status(engine, container) in _EXITED, out, err)
        return 0
    follow = subprocess.run([engine, "logs", "--follow", container], stdin=subprocess.DEVNULL, check=False)
    return follow.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
