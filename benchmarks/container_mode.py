"""Container mode of `make bench`: the stack with `agent_mode="container"`, next to the engine's own start.

- submit → RUNNING p50/p99 over sequential tasks of the busybox image (`sleep 0.3`, as process mode measures);
- tasks/s over a burst, every task SUCCEEDED and metered exactly once;
- the reference: `run --rm <busybox> true` of the project's engine configuration (`Engine.detect()`), warm,
  with the engine's default network and with the network the agent gives task containers, interleaved with the
  stack's sequential tasks so that both see the same machine; the stack's overhead is the container p50 minus
  the reference p50 on the agent's network (goal ≤ 100 ms);
- where submit → RUNNING goes, per task: the stack runs in this process, so its parts are timed by wrapping them
  here (the agent's RunTask hook, the launcher, the engine commands it runs, the Lambda runtime); nothing of the
  stack is changed for it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.measures import Row, Submission, burst, burst_rows, percentile, timed_submissions
from taskrunner_local import containers as containers_module
from taskrunner_local import engine as engine_module
from taskrunner_local import moto_patches
from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import LocalConfig
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE
from taskrunner_local.stack import LocalStack

#: the network the agent gives task containers (containers.py's podman dialect), for a like-for-like reference
AGENT_NETWORK = {"podman": "slirp4netns", "docker": "bridge"}
OVERHEAD_GOAL_MS = 100.0
#: how long each latency task runs: long enough that its RUNNING is seen before it ends (as in process mode)
SLEEP = "0.3"


@dataclass
class ContainerResult:
    rows: list[Row] = field(default_factory=list)
    #: where submit → RUNNING goes, per part (empty when container mode was skipped)
    breakdown: list[Row] = field(default_factory=list)
    #: the engine commands of the burst's tasks, per kind (empty without a burst)
    burst_engine: list[Row] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def skipped(why: str, latency_samples: int, burst_count: int) -> ContainerResult:
    names = [
        f"container: submit → RUNNING p50 ({latency_samples} sequential)",
        f"container: submit → RUNNING p99 ({latency_samples} sequential)",
        f"container: burst of {burst_count}: throughput",
        "engine's own `run --rm busybox true` (reference)",
        "stack overhead at p50",
    ]
    return ContainerResult(rows=[(name, "skipped:", why) for name in names])


# ---------------------------------------------------------------------------------------------- the reference


def engine_run_ms(engine: Engine, *options: str) -> float:
    """One `run --rm [options] <busybox> true`, from the spawn of the engine's command until it has exited
    (create, start, wait for `true`, remove)."""
    command = engine.command("run", "--rm", *options, BUSYBOX_IMAGE, "true")
    started = time.perf_counter()
    done = subprocess.run(command, env=engine.env(), capture_output=True, text=True, check=False, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return elapsed


def wait_for_task_threads(timeout: float = 60.0) -> None:
    """Until the agent's task threads have ended (a task is SUCCEEDED and metered before its container is
    removed): so that no container of the stack is still being torn down while the next sample runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(t.name.startswith("task-") for t in threading.enumerate()):
        time.sleep(0.005)


@dataclass
class Interleaved:
    submissions: list[Submission] = field(default_factory=list)
    #: `run --rm busybox true` on the network the agent gives task containers, and on the engine's default one
    reference_agent: list[float] = field(default_factory=list)
    reference_default: list[float] = field(default_factory=list)


def interleaved(
    api: TaskRunnerClient, engine: Engine, network: str, latency_samples: int, reference_samples: int
) -> Interleaved:
    """Sequential stack tasks and the engine's own runs, one of each per round: both see the same machine (others
    load it too). Two untimed engine runs of each kind warm it up first."""
    spec = {"image": BUSYBOX_IMAGE, "command": ["sleep", SLEEP]}
    agent_network = ("--network", network)
    for options in (agent_network, (), agent_network, ()):
        engine_run_ms(engine, *options)
    out = Interleaved()
    for i in range(max(latency_samples, reference_samples)):
        if i < reference_samples:
            out.reference_agent.append(engine_run_ms(engine, *agent_network))
            out.reference_default.append(engine_run_ms(engine))
        if i < latency_samples:
            out.submissions += timed_submissions(api, 1, spec)
            wait_for_task_threads()
    return out


# ---------------------------------------------------------------------------------------------- instrumentation


@dataclass(frozen=True)
class Span:
    name: str
    start: float
    end: float

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


class Trace:
    """Spans per ECS task id, recorded from the agent's task threads (named `task-<ECS task id>`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: dict[str, list[Span]] = defaultdict(list)

    def add(self, task_id: str | None, name: str, start: float, end: float) -> None:
        if task_id is None:
            return
        with self._lock:
            self.spans[task_id].append(Span(name, start, end))

    @staticmethod
    def current_task() -> str | None:
        name = threading.current_thread().name
        return name.removeprefix("task-") if name.startswith("task-") else None

    def first(self, task_id: str, name: str) -> Span | None:
        return next((s for s in self.spans.get(task_id, []) if s.name == name), None)


class _TimedSubprocess:
    """Stands in for the `subprocess` module of engine.py and containers.py: times each engine command a task
    thread runs (`run` until it returns, `Popen` until the process is spawned), and passes everything else on."""

    def __init__(self, trace: Trace, executable: str) -> None:
        self._trace = trace
        self._executable = executable

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def _label(self, args: Any) -> str | None:
        if not isinstance(args, list | tuple) or not args or args[0] != self._executable:
            return None
        words = [str(a) for a in args[1:3]]
        return " ".join(words) if words[:1] == ["image"] else (words[0] if words else "?")

    def run(self, args: Any, *rest: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return subprocess.run(args, *rest, **kwargs)  # noqa: PLW1510 (the caller's check= is in kwargs)
        finally:
            label = self._label(args)
            if label is not None:
                self._trace.add(Trace.current_task(), f"engine {label}", started, time.perf_counter())

    def Popen(self, args: Any, *rest: Any, **kwargs: Any) -> Any:  # noqa: N802 (the module's own name)
        started = time.perf_counter()
        try:
            return subprocess.Popen(args, *rest, **kwargs)
        finally:
            label = self._label(args)
            if label is not None:
                self._trace.add(Trace.current_task(), f"engine {label} (spawn)", started, time.perf_counter())


def _timed(trace: Trace, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            trace.add(Trace.current_task(), name, started, time.perf_counter())

    return wrapper


def _running_event_task(event: Any) -> str | None:
    """The ECS task id of an "ECS Task State Change" event that says RUNNING (as delivered, or its detail)."""
    if not isinstance(event, dict):
        return None
    detail = event.get("detail", event)
    if not isinstance(detail, dict) or detail.get("lastStatus") != "RUNNING" or "taskArn" not in detail:
        return None
    return str(detail["taskArn"]).rsplit("/", 1)[-1]


@contextlib.contextmanager
def traced(stack: LocalStack, engine: Engine, trace: Trace) -> Iterator[None]:
    """Wrap the stack's parts, in this process only, for as long as the block runs."""
    assert stack.agent is not None and stack.runtime is not None
    launcher: Any = stack.agent.launcher
    runtime: Any = stack.runtime
    on_run_task = moto_patches.HOOKS.on_run_task
    assert on_run_task is not None

    def run_task_arrived(backend: Any, tasks: list[Any]) -> None:
        now = time.perf_counter()
        for task in tasks:
            trace.add(task.id, "RunTask reaches the agent", now, now)
        on_run_task(backend, tasks)

    invoke = runtime.invoke

    def timed_invoke(function: str, event: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return invoke(function, event, *args, **kwargs)
        finally:
            trace.add(_running_event_task(event), "Lambda on the RUNNING event", started, time.perf_counter())

    timed_subprocess = _TimedSubprocess(trace, engine.executable)
    saved: list[tuple[Any, str, Any]] = [
        (moto_patches.HOOKS, "on_run_task", on_run_task),
        (containers_module, "subprocess", subprocess),
        (engine_module, "subprocess", subprocess),
    ]
    moto_patches.HOOKS.on_run_task = run_task_arrived
    for module in (containers_module, engine_module):
        setattr(module, "subprocess", timed_subprocess)  # noqa: B010 (a module's global, replaced for a while)
    launcher.prepare = _timed(trace, "launcher.prepare", launcher.prepare)
    launcher.start = _timed(trace, "launcher.start", launcher.start)
    runtime.invoke = timed_invoke
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        for instance, name in ((launcher, "prepare"), (launcher, "start"), (runtime, "invoke")):
            vars(instance).pop(name, None)


def breakdown(submissions: list[Submission], ecs_ids: dict[str, str], trace: Trace) -> list[Row]:
    """Median and mean per part of submit → RUNNING, over the tasks whose every part was recorded. The engine
    commands are whichever the launcher ran (each kind summed per task), in the order they ran."""
    before = [
        "submit → 202 Accepted (gateway, API Lambda, StartExecution)",
        "202 → RunTask reaches the agent (Step Functions)",
        "agent: RunTask → launcher (task thread, PENDING event)",
    ]
    after = [
        "agent: launcher, outside engine commands",
        "RUNNING set → its Lambda starts (event, EventBridge, async queue)",
        "task_events Lambda on RUNNING (→ DynamoDB)",
        "Lambda done → client sees RUNNING (poll every 2 ms, GET)",
    ]
    parts: dict[str, list[float]] = defaultdict(list)
    engine_order: dict[str, float] = {}
    engine_total: list[float] = []
    totals: list[float] = []
    for sub in submissions:
        ecs_id = ecs_ids.get(sub.task_id)
        spans = trace.spans.get(ecs_id or "", [])
        arrived = trace.first(ecs_id or "", "RunTask reaches the agent")
        launcher = [s for s in spans if s.name in ("launcher.prepare", "launcher.start")]
        starts = [s for s in launcher if s.name == "launcher.start"]
        lambdas = [s for s in spans if s.name == "Lambda on the RUNNING event"]
        if sub.status != "RUNNING" or arrived is None or not starts or not lambdas:
            continue
        began, running = min(s.start for s in launcher), starts[-1].end  # the agent sets RUNNING right after
        engine: dict[str, float] = defaultdict(float)
        for span in spans:
            if span.name.startswith("engine ") and began <= span.start <= running:
                engine[span.name] += span.end - span.start
                engine_order.setdefault(span.name, span.start - began)
        lambda_ = lambdas[0]
        timeline = [
            sub.accepted - sub.submitted,
            arrived.start - sub.accepted,
            began - arrived.start,
            running - began - sum(engine.values()),
            lambda_.start - running,
            lambda_.end - lambda_.start,
            sub.seen - lambda_.end,
        ]
        for name, seconds in [*zip([*before, *after], timeline, strict=True), *engine.items()]:
            parts[name].append(seconds * 1000)
        engine_total.append(sum(engine.values()) * 1000)
        totals.append(sub.to_running_ms)
    if not totals:
        return [("no task had every part recorded", "", "")]
    names = [*before, *sorted(engine_order, key=engine_order.__getitem__), *after]
    rows: list[Row] = []
    for name in names:
        values = parts[name]
        note = "" if len(values) == len(totals) else f"in {len(values)} of {len(totals)} tasks"
        rows.append((name, _median_mean(values), note))
    rows += [
        ("engine commands before RUNNING, together", _median_mean(engine_total), ""),
        ("submit → RUNNING (the sum of the parts)", _median_mean(totals), f"{len(totals)} tasks"),
    ]
    return rows


def engine_commands(trace: Trace) -> list[Row]:
    """Per kind of engine command, over every task of a burst (its whole life: start, exit status, removal):
    how many ran, and their mean and total wall time."""
    spans = [s for task in trace.spans.values() for s in task if s.name.startswith("engine ")]
    tasks = sum(1 for task in trace.spans.values() if any(s.name.startswith("engine ") for s in task))
    kinds: dict[str, list[float]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: s.start):
        kinds[span.name].append(span.ms)
    rows: list[Row] = [
        (name, f"{len(values)} x {statistics.mean(values):.0f} ms", f"{sum(values) / 1000:.1f} s in all")
        for name, values in kinds.items()
    ]
    total = sum(s.ms for s in spans)
    rows.append((f"per task ({tasks} tasks)", f"{total / max(tasks, 1):.0f} ms", f"{total / 1000:.1f} s in all"))
    return rows


def _median_mean(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} / {statistics.mean(values):.0f} ms" if values else "-"


# ---------------------------------------------------------------------------------------------- the part


def measure(latency_samples: int, burst_count: int, clients: int, reference_samples: int) -> ContainerResult:
    engine = Engine.detect()
    if engine is None:
        return skipped(Engine.why_not() or "no container engine", latency_samples, burst_count)
    if not engine.image_exists(BUSYBOX_IMAGE):
        return skipped(f"image {BUSYBOX_IMAGE} is not built: run `make images`", latency_samples, burst_count)
    version = engine.version()
    network = AGENT_NETWORK.get(engine.name, "bridge")
    config = LocalConfig(
        api_port=free_port(),
        aws_port=free_port(),
        echo_function_logs=False,
        stack_name="taskrunner-bench-containers",
        ephemeral=True,
        agent_mode="container",
    )
    load_before = os.getloadavg()[0]
    print(f"container mode ({engine.name} {version}): starting the local stack…", file=sys.stderr, flush=True)
    with LocalStack(config) as stack:
        api = TaskRunnerClient(stack.api_url, api_key=stack.admin_key)
        for _ in range(3):  # warm every function, and the engine's first container start
            api.wait(api.submit({"image": BUSYBOX_IMAGE, "command": ["true"]})["task_id"])
        print(
            f"container mode: {latency_samples} sequential tasks and {reference_samples} x 2 engine runs, interleaved…",
            file=sys.stderr,
            flush=True,
        )
        trace = Trace()
        with traced(stack, engine, trace):
            measured = interleaved(api, engine, network, latency_samples, reference_samples)
        submissions = measured.submissions
        reference_agent, reference_default = measured.reference_agent, measured.reference_default
        ecs_ids = {}
        for sub in submissions:
            arn = api.get(sub.task_id).get("ecs_task_arn")
            if arn:
                ecs_ids[sub.task_id] = arn.rsplit("/", 1)[-1]
        result, burst_trace, engine_cpu = None, Trace(), 0.0
        if burst_count:
            print(f"container mode: burst of {burst_count} tasks…", file=sys.stderr, flush=True)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            with traced(stack, engine, burst_trace):
                result = burst(stack, api, burst_count, clients, image=BUSYBOX_IMAGE)
                wait_for_task_threads()
            # the engine commands the agent ran and waited for (conmon, runc and slirp4netns are not its children)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            engine_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime

    latency = [s.to_running_ms for s in submissions]
    ended_first = sum(1 for s in submissions if s.status != "RUNNING")
    n = len(latency)
    p50 = percentile(latency, 50)
    ref_default, ref_agent = statistics.median(reference_default), statistics.median(reference_agent)
    reference = f"reference: {engine.name} run --rm busybox true ({reference_samples} warm"
    rows: list[Row] = [
        (
            f"container: submit → RUNNING p50 ({n} sequential)",
            f"{p50:.0f} ms",
            f"≤ {ref_agent + OVERHEAD_GOAL_MS:.0f} ms (reference p50 + {OVERHEAD_GOAL_MS:.0f} ms)",
        ),
        (f"container: submit → RUNNING p99 ({n} sequential)", f"{percentile(latency, 99):.0f} ms", ""),
    ]
    if ended_first:
        rows.append(("container: tasks seen terminal before RUNNING", f"{ended_first} / {n}", "0"))
    if result is not None:
        count = result["count"]
        rows += [
            *burst_rows(result, prefix="container: "),
            ("container: burst: CPU of the engine commands per task", f"{engine_cpu / count * 1000:.0f} ms", ""),
        ]
    rows += [
        (
            f"{reference}, --network {network}) median / p90",
            f"{ref_agent:.0f} / {percentile(reference_agent, 90):.0f} ms",
            "(the agent's network: the reference)",
        ),
        (
            f"{reference}, default network) median / p90",
            f"{ref_default:.0f} / {percentile(reference_default, 90):.0f} ms",
            "(as typed, for comparison)",
        ),
        (
            "stack overhead at p50 = container p50 - reference p50",
            f"{p50 - ref_agent:.0f} ms",
            f"≤ {OVERHEAD_GOAL_MS:.0f} ms (goal)",
        ),
        ("  against the default-network reference", f"{p50 - ref_default:.0f} ms", ""),
        (
            "machine: load average (1 min) before / after container mode",
            f"{load_before:.1f} / {os.getloadavg()[0]:.1f}",
            f"({os.cpu_count()} cores, shared)",
        ),
    ]
    return ContainerResult(
        rows=rows,
        breakdown=breakdown(submissions, ecs_ids, trace),
        burst_engine=engine_commands(burst_trace) if result is not None else [],
        failures=result["failures"] if result else {},
    )
