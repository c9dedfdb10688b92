"""A module of the project run as a child process (a local stack, say), whose output is collected line by line as
it comes, for a test to wait for the line that says the child got somewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from taskrunner_local.config import ROOT

#: how many of the child's last lines a failed wait shows
SHOWN_LINES = 80


class ChildProcess:
    """`python -m <module> <args>` in the project's folder, in this environment plus `env`, unbuffered; its stderr
    merged into its stdout, which a thread reads into `output` (one line an item, without its newline)."""

    def __init__(
        self, module: str, *args: str, env: dict[str, str], stdin: int = subprocess.DEVNULL, new_session: bool = False
    ) -> None:
        """`stdin`: subprocess.PIPE to write to the child; `new_session`: the child leads a process group of its
        own (which a crash kills whole)."""
        self.module = module
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=new_session,
        )
        self.output: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.output.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0, *, at_start: bool = False) -> str:
        """The last line so far that contains `text` (`at_start`: that starts with it), once there is one; fails
        when the child exits or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.output if (line.startswith(text) if at_start else text in line)]
                if found:
                    return found[-1]
                if self.process.poll() is not None or time.monotonic() > deadline:
                    shown = "\n".join(self.output[-SHOWN_LINES:])
                    raise AssertionError(f"no line with {text!r} from {self.module}:\n{shown}")
                self._changed.wait(0.5)

    def read_to_end(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until the child's output is all read, as it is once every process that
        could write to it has exited; whether it was."""
        self._reader.join(timeout)
        return not self._reader.is_alive()
