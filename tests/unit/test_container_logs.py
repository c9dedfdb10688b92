"""A re-adopted container's output read from its k8s-file log, as `podman logs` gives it: each record to its
stream, a piece (`P`) without a newline, a full line (`F`) with one, the file followed until the container exited."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from taskrunner_local.container_logs import follow_file

RECORDS = [
    b"2026-11-28T12:00:00.1+00:00 stdout F first line",
    b"2026-11-28T12:00:00.2+00:00 stdout P a long line, ",
    b"2026-11-28T12:00:00.3+00:00 stdout F its end",
    b"2026-11-28T12:00:00.4+00:00 stderr F on stderr: \xff not UTF-8",
    b"2026-11-28T12:00:00.5+00:00 stdout F ",
    b"2026-11-28T12:00:00.6+00:00 stdout P no newline at the end",
]


def test_records_go_to_their_stream_as_podman_logs_writes_them(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_bytes(b"\n".join(RECORDS) + b"\n")
    out, err = io.BytesIO(), io.BytesIO()
    follow_file(str(log), lambda: True, out, err)
    assert out.getvalue() == b"first line\na long line, its end\n\nno newline at the end"
    assert err.getvalue() == b"on stderr: \xff not UTF-8\n"


def test_the_file_is_followed_until_the_container_exited_and_read_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_bytes(RECORDS[0] + b"\n")
    exited = threading.Event()

    def container() -> None:  # writes more, a record in two writes, then exits
        time.sleep(0.3)
        with log.open("ab") as file:
            file.write(RECORDS[1] + b"\n" + RECORDS[2][:20])
            file.flush()
            time.sleep(0.3)
            file.write(RECORDS[2][20:] + b"\n")
        exited.set()

    writer = threading.Thread(target=container)
    writer.start()
    out, err = io.BytesIO(), io.BytesIO()
    follow_file(str(log), exited.is_set, out, err)
    writer.join()
    assert out.getvalue() == b"first line\na long line, its end\n"
