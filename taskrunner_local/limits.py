"""Memory and CPU limits for local tasks.

Where the kernel lets us (root, cgroup v1 or v2 writable), each task gets its own cgroup: memory is capped, so
exceeding it gets the process OOM-killed by the kernel (SIGKILL, exit 137), and CPU is capped to the task's
vCPUs with a CFS quota. Elsewhere a watchdog samples the resident memory of each task's process group and
kills the group when it passes the limit; CPU is then not limited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _oom_kills(counters: Path) -> int:
    """The `oom_kill` counter of a cgroup's memory.oom_control (v1) or memory.events (v2) file."""
    try:
        for line in counters.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _remove_cgroup(directory: Path) -> None:
    """A cgroup can be removed once its last process is gone, which the kernel notes a moment later."""
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except OSError:
            time.sleep(0.02)


class TaskLimits:
    """The limits of one task. `enter()` runs in the child between fork and exec."""

    def __init__(self, name: str, memory_bytes: int, vcpu: float) -> None:
        self.name = name
        self.memory_bytes = memory_bytes
        self.vcpu = vcpu
        self.killed_for_memory = False

    def enter(self) -> None: ...

    def started(self, pid: int) -> None: ...

    def oom_killed(self) -> bool:
        return self.killed_for_memory

    def close(self) -> None: ...


class _CgroupV1Limits(TaskLimits):
    def __init__(self, name: str, memory_bytes: int, vcpu: float) -> None:
        super().__init__(name, memory_bytes, vcpu)
        self.memory_dir = CGROUP_ROOT / "memory" / "taskrunner-local" / name
        self.cpu_dir = CGROUP_ROOT / "cpu" / "taskrunner-local" / name
        self.memory_dir.mkdir(parents=True, exist_ok=True)
        (self.memory_dir / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = self.memory_dir / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            with contextlib.suppress(OSError):  # no escape into swap
                memsw.write_text(str(memory_bytes))
        try:
            self.cpu_dir.mkdir(parents=True, exist_ok=True)
            (self.cpu_dir / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.cpu_dir / "cpu.cfs_quota_us").write_text(str(max(1000, int(vcpu * CPU_PERIOD_US))))
        except OSError:
            self.cpu_dir = None  # type: ignore[assignment]
        self._procs = [str(self.memory_dir / "cgroup.procs")] + (
            [str(self.cpu_dir / "cgroup.procs")] if self.cpu_dir else []
        )

    def enter(self) -> None:
        pid = str(os.getpid())
        for procs in self._procs:
            with open(procs, "w") as handle:
                handle.write(pid)

    def oom_killed(self) -> bool:
        return _oom_kills(self.memory_dir / "memory.oom_control") > 0 or self.killed_for_memory

    def close(self) -> None:
        for directory in (self.memory_dir, self.cpu_dir):
            if directory is not None:
                _remove_cgroup(directory)


class _CgroupV2Limits(TaskLimits):
    def __init__(self, name: str, memory_bytes: int, vcpu: float) -> None:
        super().__init__(name, memory_bytes, vcpu)
        self.dir = CGROUP_ROOT / "taskrunner-local" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "memory.max").write_text(str(memory_bytes))
        with contextlib.suppress(OSError):
            (self.dir / "memory.swap.max").write_text("0")
        with contextlib.suppress(OSError):
            (self.dir / "cpu.max").write_text(f"{max(1000, int(vcpu * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        self._procs = str(self.dir / "cgroup.procs")

    def enter(self) -> None:
        with open(self._procs, "w") as handle:
            handle.write(str(os.getpid()))

    def oom_killed(self) -> bool:
        return _oom_kills(self.dir / "memory.events") > 0 or self.killed_for_memory

    def close(self) -> None:
        _remove_cgroup(self.dir)


class _WatchedLimits(TaskLimits):
    def __init__(self, name: str, memory_bytes: int, vcpu: float, watchdog: MemoryWatchdog) -> None:
        super().__init__(name, memory_bytes, vcpu)
        self.watchdog = watchdog
        self.pgid: int | None = None

    def started(self, pid: int) -> None:
        self.pgid = pid  # the task runs in its own session, so its process group id is its pid
        self.watchdog.watch(self)

    def close(self) -> None:
        self.watchdog.forget(self)


class MemoryWatchdog:
    """One thread for all tasks: sums resident memory per process group from /proc, kills groups over limit."""

    def __init__(self, interval_seconds: float = 0.05) -> None:
        self.interval = interval_seconds
        self._watched: dict[int, _WatchedLimits] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, limits: _WatchedLimits) -> None:
        assert limits.pgid is not None
        with self._lock:
            self._watched[limits.pgid] = limits
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="memory-watchdog")
                self._thread.start()

    def forget(self, limits: _WatchedLimits) -> None:
        with self._lock:
            if limits.pgid is not None:
                self._watched.pop(limits.pgid, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                watched = dict(self._watched)
            if not watched:
                continue
            usage: dict[int, int] = dict.fromkeys(watched, 0)
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat") as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                pgid = int(fields[2])
                if pgid in usage:
                    usage[pgid] += int(fields[21]) * _PAGE
            for pgid, rss in usage.items():
                limits = watched[pgid]
                if rss > limits.memory_bytes and not limits.killed_for_memory:
                    limits.killed_for_memory = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)


def _writable(path: Path) -> bool:
    try:
        probe = path / f"taskrunner-probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


class LimitsFactory:
    def __init__(self) -> None:
        self.watchdog = MemoryWatchdog()
        if (CGROUP_ROOT / "memory" / "memory.limit_in_bytes").exists() or (CGROUP_ROOT / "memory").is_dir():
            base = CGROUP_ROOT / "memory" / "taskrunner-local"
            self.kind = "cgroup-v1" if _writable_dir(base) else "watchdog"
        elif (CGROUP_ROOT / "cgroup.controllers").exists():
            base = CGROUP_ROOT / "taskrunner-local"
            self.kind = "cgroup-v2" if _writable_dir(base) and _enable_v2_controllers(base) else "watchdog"
        else:
            self.kind = "watchdog"

    def for_task(self, name: str, memory_bytes: int, vcpu: float) -> TaskLimits:
        try:
            if self.kind == "cgroup-v1":
                return _CgroupV1Limits(name, memory_bytes, vcpu)
            if self.kind == "cgroup-v2":
                return _CgroupV2Limits(name, memory_bytes, vcpu)
        except OSError:
            self.kind = "watchdog"
        return _WatchedLimits(name, memory_bytes, vcpu, self.watchdog)


def _writable_dir(base: Path) -> bool:
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return False
    return _writable(base)


def _enable_v2_controllers(base: Path) -> bool:
    with contextlib.suppress(OSError):
        (CGROUP_ROOT / "cgroup.subtree_control").write_text("+memory +cpu")
    try:
        (base / "cgroup.subtree_control").write_text("+memory +cpu")
    except OSError:
        return False
    return True
