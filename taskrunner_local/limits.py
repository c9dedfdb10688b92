"""Memory, CPU and process limits for local tasks, and the census of a task's processes.

Where the kernel lets us (root, cgroup v1 or v2 writable), each task gets its own cgroup: memory is capped, so
exceeding it gets the process OOM-killed by the kernel (SIGKILL, exit 137); CPU is capped to the task's vCPUs
with a CFS quota; the number of processes (threads included) is capped by the `pids` controller, so a fork
bomb stays inside its task. The cgroup is also how the agent finds every process of a task, whatever it did
to leave its process group or session (`setsid`, a double fork): the kernel puts every descendant in the
cgroup of its parent, so "kill the task" means "kill every process in the cgroup, until it is empty".

Elsewhere a watchdog samples the resident memory of each task's processes and kills them when they pass the
limit; CPU and the number of processes are then not limited, and the task's processes are found as well as
/proc allows (see `_ProcessCensus`): the best this fallback can do, not a guarantee.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000
#: Processes and threads one task may have at once (`pids.max`): generous for real work (a JVM, a process
#: pool), small enough that a fork bomb hits it in a moment and the host keeps its pids.
TASK_PIDS_MAX = 1024
#: Every task together may hold at most this share of the kernel's pid space (`pids.max` of the parent).
ALL_TASKS_PIDS_SHARE = 0.5
#: How long killing a task's processes may take before the agent gives up on the stragglers (a process in
#: uninterruptible sleep cannot die until its I/O returns).
KILL_TIMEOUT_SECONDS = 5.0
FREEZE_TIMEOUT_SECONDS = 0.5
_PARENT = "taskrunner-local"
#: Without cgroups, every process of a task carries this variable (naming the task) unless it drops it.
TASK_MARKER_VARIABLE = "TASKRUNNER_LOCAL_TASK"
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
    """A cgroup can be removed once its last process is gone, which the kernel notes a moment later. A task
    running as root may have made cgroups of its own inside its own: those go first."""
    if not directory.is_dir():
        return
    for child in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            child.rmdir()
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def _cgroup_pids(directory: Path) -> list[int]:
    """Every process in a cgroup and in the cgroups below it (zombies are not listed)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for root, _dirs, _files in os.walk(directory):
            with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs")) as handle:
                pids += [int(line) for line in handle.read().split()]
    return pids


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class TaskLimits:
    """The limits of one task and the census of its processes. `enter()` runs in the child between fork and
    exec; `started()` in the agent once the task's main process runs."""

    def __init__(self, name: str, memory_bytes: int, vcpu: float) -> None:
        self.name = name
        self.memory_bytes = memory_bytes
        self.vcpu = vcpu
        self.killed_for_memory = False
        self._kill_lock = threading.Lock()

    def enter(self) -> None: ...

    def started(self, pid: int) -> None: ...

    def environment(self) -> dict[str, str]:
        """Variables the task's main process must get for these limits to find its processes."""
        return {}

    def oom_killed(self) -> bool:
        return self.killed_for_memory

    def processes(self) -> list[int]:
        """The pids of every living process of the task."""
        return []

    def signal_all(self, sig: int) -> None:
        """Send `sig` to every process of the task (StopTask's SIGTERM)."""
        _signal(self.processes(), sig)

    def kill_all(self, timeout: float = KILL_TIMEOUT_SECONDS) -> bool:
        """SIGKILL every process of the task, again and again until none is left (a process that forks while
        it is being killed only adds a pid to the next round). True when the task has no process left."""
        deadline = time.monotonic() + timeout
        with self._kill_lock:
            while True:
                pids = self._kill_round()
                if not pids:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.005)  # the kernel takes a killed process out of the census when it has exited

    def _kill_round(self) -> list[int]:
        pids = self.processes()
        _signal(pids, signal.SIGKILL)
        return pids

    def close(self) -> bool:
        """Kill whatever is left of the task and release its limits. True when no process was left behind."""
        return self.kill_all()


class _CgroupV1Limits(TaskLimits):
    """One directory per controller (memory, cpu, pids, freezer); the memory cgroup is the census."""

    def __init__(self, name: str, memory_bytes: int, vcpu: float, *, create: bool = True) -> None:
        super().__init__(name, memory_bytes, vcpu)
        self.memory_dir = CGROUP_ROOT / "memory" / _PARENT / name
        self.cpu_dir: Path | None = CGROUP_ROOT / "cpu" / _PARENT / name
        self.pids_dir: Path | None = CGROUP_ROOT / "pids" / _PARENT / name
        self.freezer_dir: Path | None = CGROUP_ROOT / "freezer" / _PARENT / name
        if not create:
            return
        self.memory_dir.mkdir(parents=True, exist_ok=True)
        (self.memory_dir / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = self.memory_dir / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            with contextlib.suppress(OSError):  # no escape into swap
                memsw.write_text(str(memory_bytes))
        self.cpu_dir = self._optional(
            self.cpu_dir,
            ("cpu.cfs_period_us", str(CPU_PERIOD_US)),
            ("cpu.cfs_quota_us", str(max(1000, int(vcpu * CPU_PERIOD_US)))),
        )
        self.pids_dir = self._optional(self.pids_dir, ("pids.max", str(TASK_PIDS_MAX)))
        self.freezer_dir = self._optional(self.freezer_dir)
        self._procs = [
            str(d / "cgroup.procs")
            for d in (self.memory_dir, self.cpu_dir, self.pids_dir, self.freezer_dir)
            if d is not None
        ]

    @staticmethod
    def _optional(directory: Path | None, *settings: tuple[str, str]) -> Path | None:
        """A controller the task can do without (no cpu, pids or freezer hierarchy): None when unavailable."""
        if directory is None:
            return None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for file, value in settings:
                (directory / file).write_text(value)
        except OSError:
            with contextlib.suppress(OSError):
                directory.rmdir()
            return None
        return directory

    def enter(self) -> None:
        pid = str(os.getpid())
        for procs in self._procs:
            with open(procs, "w") as handle:
                handle.write(pid)

    def oom_killed(self) -> bool:
        return _oom_kills(self.memory_dir / "memory.oom_control") > 0 or self.killed_for_memory

    def processes(self) -> list[int]:
        # Every descendant of the task's main process starts in its parent's cgroups: this is all of them.
        return _cgroup_pids(self.memory_dir)

    def _kill_round(self) -> list[int]:
        pids = self.processes()
        if not pids:
            return pids
        # Frozen, no process of the task can fork between the census and the kill; thawed, they all die.
        frozen = self._freeze("FROZEN")
        pids = self.processes()
        _signal(pids, signal.SIGKILL)
        if frozen:
            self._freeze("THAWED")
        return pids

    def _freeze(self, state: str) -> bool:
        if self.freezer_dir is None:
            return False
        try:
            (self.freezer_dir / "freezer.state").write_text(state)
            if state == "FROZEN":
                deadline = time.monotonic() + FREEZE_TIMEOUT_SECONDS
                while (self.freezer_dir / "freezer.state").read_text().strip() != "FROZEN":
                    if time.monotonic() > deadline:
                        return True  # partly frozen still narrows the race; the next round catches the rest
                    time.sleep(0.001)
        except OSError:
            return False
        return True

    def close(self) -> bool:
        empty = self.kill_all()
        if self.freezer_dir is not None:
            self._freeze("THAWED")  # a cgroup left frozen would keep a straggler frozen forever
        for directory in (self.memory_dir, self.cpu_dir, self.pids_dir, self.freezer_dir):
            if directory is not None:
                _remove_cgroup(directory)
        return empty


class _CgroupV2Limits(TaskLimits):
    def __init__(self, name: str, memory_bytes: int, vcpu: float, *, create: bool = True) -> None:
        super().__init__(name, memory_bytes, vcpu)
        self.dir = CGROUP_ROOT / _PARENT / name
        self._procs = str(self.dir / "cgroup.procs")
        if not create:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "memory.max").write_text(str(memory_bytes))
        with contextlib.suppress(OSError):
            (self.dir / "memory.swap.max").write_text("0")
        with contextlib.suppress(OSError):
            (self.dir / "cpu.max").write_text(f"{max(1000, int(vcpu * CPU_PERIOD_US))} {CPU_PERIOD_US}")
        with contextlib.suppress(OSError):  # present when the pids controller is enabled for our cgroups
            (self.dir / "pids.max").write_text(str(TASK_PIDS_MAX))

    def enter(self) -> None:
        with open(self._procs, "w") as handle:
            handle.write(str(os.getpid()))

    def oom_killed(self) -> bool:
        return _oom_kills(self.dir / "memory.events") > 0 or self.killed_for_memory

    def processes(self) -> list[int]:
        return _cgroup_pids(self.dir)

    def _kill_round(self) -> list[int]:
        pids = self.processes()
        if not pids:
            return pids
        try:  # Linux 5.14+: the kernel kills every process of the cgroup at once, forks included
            (self.dir / "cgroup.kill").write_text("1")
            return pids
        except OSError:
            pass
        frozen = False
        with contextlib.suppress(OSError):
            (self.dir / "cgroup.freeze").write_text("1")
            frozen = True
        pids = self.processes()
        _signal(pids, signal.SIGKILL)
        if frozen:
            with contextlib.suppress(OSError):
                (self.dir / "cgroup.freeze").write_text("0")
        return pids

    def close(self) -> bool:
        empty = self.kill_all()
        with contextlib.suppress(OSError):
            (self.dir / "cgroup.freeze").write_text("0")
        _remove_cgroup(self.dir)
        return empty


@dataclass(frozen=True)
class _Proc:
    ppid: int
    pgrp: int
    session: int
    start: int
    rss_bytes: int


class _ProcessCensus:
    """Without cgroups, the processes of a task as well as /proc can tell them: its main process's process
    group and session (the task starts in a session of its own, so both ids are its main pid; the kernel does
    not hand that number to another process while a member of the group or session lives), every descendant of
    those by parent pid, every process seen as a member before (by pid and start time: a daemon that was seen
    before it double-forked away stays known), and, when the agent is about to signal them, every process whose
    environment carries the task's marker variable (inherited through fork and exec). A process that leaves the
    session (`setsid`), is reparented to init between two looks *and* drops the variable is not found: that is
    what only a cgroup can do."""

    def __init__(self, leader: int, marker: str | None = None) -> None:
        self.leader = leader
        self.marker = f"{TASK_MARKER_VARIABLE}={marker}".encode() if marker else None
        self.leader_start: int | None = None
        self.known: dict[int, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def snapshot() -> dict[int, _Proc]:
        table: dict[int, _Proc] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] in ("Z", "X"):  # exited: nothing left to kill or to count
                continue
            table[int(entry.name)] = _Proc(
                ppid=int(fields[1]),
                pgrp=int(fields[2]),
                session=int(fields[3]),
                start=int(fields[19]),
                rss_bytes=int(fields[21]) * _PAGE,
            )
        return table

    def _marked(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                return self.marker in handle.read().split(b"\0")
        except OSError:
            return False

    def members(self, table: dict[int, _Proc] | None = None, *, thorough: bool = False) -> dict[int, _Proc]:
        """The task's processes; `thorough` also reads every process's environment (too slow for sampling)."""
        table = self.snapshot() if table is None else table
        with self._lock:
            leader = table.get(self.leader)
            if self.leader_start is None and leader is not None:
                self.leader_start = leader.start
            # The leader's number now names another process: its group and session are gone, and so are the
            # ids that matched on them.
            reused = leader is not None and self.leader_start is not None and leader.start != self.leader_start
            found = {
                pid
                for pid, proc in table.items()
                if self.known.get(pid) == proc.start or (not reused and self.leader in (proc.session, proc.pgrp))
            }
            if thorough and self.marker is not None:
                found |= {pid for pid in table if pid not in found and self._marked(pid)}
            children: dict[int, list[int]] = {}
            for pid, proc in table.items():
                children.setdefault(proc.ppid, []).append(pid)
            pending = list(found)
            while pending:
                for child in children.get(pending.pop(), []):
                    if child not in found:
                        found.add(child)
                        pending.append(child)
            found.discard(os.getpid())
            self.known = {pid: table[pid].start for pid in found}
            return {pid: table[pid] for pid in found}


class _WatchedLimits(TaskLimits):
    def __init__(self, name: str, memory_bytes: int, vcpu: float, watchdog: MemoryWatchdog) -> None:
        super().__init__(name, memory_bytes, vcpu)
        self.watchdog = watchdog
        self.census: _ProcessCensus | None = None

    def environment(self) -> dict[str, str]:
        return {TASK_MARKER_VARIABLE: self.name}

    def started(self, pid: int) -> None:
        self.census = _ProcessCensus(pid, self.name)
        self.census.members()  # the main process's start time, before its pid could be reused
        self.watchdog.watch(self)

    def processes(self) -> list[int]:
        return list(self.census.members(thorough=True)) if self.census is not None else []

    def _kill_round(self) -> list[int]:
        if self.census is None:
            return []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.census.leader, signal.SIGKILL)
        return super()._kill_round()

    def close(self) -> bool:
        empty = self.kill_all()
        self.watchdog.forget(self)
        return empty


class MemoryWatchdog:
    """One thread for all tasks: sums resident memory per task from /proc, kills a task's processes when
    they pass its limit (and, looking every interval, keeps each task's census of processes current)."""

    def __init__(self, interval_seconds: float = 0.05) -> None:
        self.interval = interval_seconds
        self._watched: dict[int, _WatchedLimits] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, limits: _WatchedLimits) -> None:
        assert limits.census is not None
        with self._lock:
            self._watched[limits.census.leader] = limits
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="memory-watchdog")
                self._thread.start()

    def forget(self, limits: _WatchedLimits) -> None:
        with self._lock:
            if limits.census is not None:
                self._watched.pop(limits.census.leader, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                watched = list(self._watched.values())
            if not watched:
                continue
            try:
                self._sample(watched)
            except Exception:  # one bad look at /proc must not end the watch of every task
                continue

    @staticmethod
    def _sample(watched: list[_WatchedLimits]) -> None:
        table = _ProcessCensus.snapshot()
        for limits in watched:
            if limits.census is None:
                continue
            members = limits.census.members(table)
            rss = sum(proc.rss_bytes for proc in members.values())
            if rss > limits.memory_bytes and not limits.killed_for_memory:
                limits.killed_for_memory = True
                _signal(members, signal.SIGKILL)


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
            base = CGROUP_ROOT / "memory" / _PARENT
            self.kind = "cgroup-v1" if _writable_dir(base) else "watchdog"
            if self.kind == "cgroup-v1":
                _limit_all_tasks_pids(CGROUP_ROOT / "pids" / _PARENT)
        elif (CGROUP_ROOT / "cgroup.controllers").exists():
            base = CGROUP_ROOT / _PARENT
            self.kind = "cgroup-v2" if _writable_dir(base) and _enable_v2_controllers(base) else "watchdog"
            if self.kind == "cgroup-v2":
                _limit_all_tasks_pids(base)
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

    def kill_leftovers(self, name: str, process_group: int | None) -> bool:
        """What an agent that is gone left of a task: every process in the task's cgroup while it has one (then
        the cgroup goes too); without one, every process of its main process's group and session. True when
        nothing is left."""
        cgroup = self._leftover_cgroup(name)
        if cgroup is not None:
            return cgroup.close()
        if process_group:
            return _CgroupLessLeftovers(name, process_group).kill_all()
        return True

    def kill_leftover_cgroup(self, name: str) -> bool:
        """Kill every process in the cgroup of the task `name` and remove the cgroup; whether there was one."""
        cgroup = self._leftover_cgroup(name)
        if cgroup is None:
            return False
        cgroup.close()
        return True

    def _leftover_cgroup(self, name: str) -> TaskLimits | None:
        """The cgroup the task `name` was given, when it is still there."""
        if self.kind == "cgroup-v1":
            v1 = _CgroupV1Limits(name, 0, 0, create=False)
            return v1 if v1.memory_dir.is_dir() else None
        if self.kind == "cgroup-v2":
            v2 = _CgroupV2Limits(name, 0, 0, create=False)
            return v2 if v2.dir.is_dir() else None
        return None


class _CgroupLessLeftovers(TaskLimits):
    """A task's process group and session, found from /proc, for when its cgroup is not there to ask."""

    def __init__(self, name: str, leader: int) -> None:
        super().__init__(name, 0, 0)
        self.census = _ProcessCensus(leader, name)

    def processes(self) -> list[int]:
        return list(self.census.members(thorough=True))


def _writable_dir(base: Path) -> bool:
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return False
    return _writable(base)


def _limit_all_tasks_pids(base: Path) -> None:
    """Every task together keeps to a share of the kernel's pids, whatever the number of tasks."""
    with contextlib.suppress(OSError, ValueError):
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        base.mkdir(exist_ok=True)
        (base / "pids.max").write_text(str(max(TASK_PIDS_MAX, int(pid_max * ALL_TASKS_PIDS_SHARE))))


def _enable_v2_controllers(base: Path) -> bool:
    with contextlib.suppress(OSError):
        (CGROUP_ROOT / "cgroup.subtree_control").write_text("+memory +cpu")
    with contextlib.suppress(OSError):
        (CGROUP_ROOT / "cgroup.subtree_control").write_text("+pids")
    try:
        (base / "cgroup.subtree_control").write_text("+memory +cpu")
    except OSError:
        return False
    with contextlib.suppress(OSError):
        (base / "cgroup.subtree_control").write_text("+pids")
    return True
