"""`make bench`: measures the local stack and prints a table next to the targets of DESIGN §8.

- submit → RUNNING latency (p50, p99), next to a bare process spawn measured in the same run;
- sustained throughput over a burst of tasks, which must all end terminal with exactly one metering record;
- the API function's cold import, next to a minimal Powertools + pydantic + boto3 handler;
- the orchestration cost of one successful task (state transitions, Lambda invocations);
- what authentication adds to a request (the Lambda authorizer's warm invocation, for the admin key and a tenant's);
- the resident memory of the stack's process (the benchmark runs it in-process: /proc/self/status) when idle,
  and after a burst of tasks that print a lot, part of it as lines far longer than a log event (logs live on disk,
  in the state folder: memory stays flat);
- the stack is durable, as `make run` runs it (a temporary state folder, every acknowledged change fsynced), so
  latency and throughput include the cost of durability; the state folder's size is reported;
- container mode (`container_mode.py`, in a child process): submit → RUNNING and a burst's tasks/s with the agent
  running containers, next to the engine's own `run --rm busybox true`, and where submit → RUNNING goes.

`--only process` or `--only container` runs one part; `--help` lists the sample sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path
from typing import Any

from benchmarks import container_mode, tenants
from benchmarks.container_mode import ContainerResult
from benchmarks.measures import (
    Row,
    authorizer_ms,
    burst,
    burst_rows,
    percentile,
    print_table,
    timed_submissions,
)
from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import LocalConfig
from taskrunner_local.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("process", "container")


def bare_spawn_ms(samples: int) -> list[float]:
    """Fork + exec of `true` until it has started (Popen returns once exec succeeded)."""
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        process = subprocess.Popen(["true"])
        durations.append((time.perf_counter() - started) * 1000)
        process.wait()
    return durations


def submit_to_running_ms(api: TaskRunnerClient, samples: int) -> list[float]:
    spec = {"image": "busybox", "command": ["sleep", "0.3"]}
    return [submission.to_running_ms for submission in timed_submissions(api, samples, spec)]


def memory_kib() -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak since the process started) of this process, the stack's."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def log_burst(stack: LocalStack, api: TaskRunnerClient, count: int, mib: int) -> dict[str, Any]:
    """`count` tasks at once, each printing `mib` MiB: every other one as lines of 1 KiB, the others as one
    line without a newline. Returns what the log streams hold and the stack's memory afterwards."""
    size = mib * 1024 * 1024
    scripts = [
        f"yes {'x' * 1023} | head -c {size}" if i % 2 == 0 else f"head -c {size} /dev/zero | tr '\\0' y"
        for i in range(count)
    ]
    started = time.perf_counter()
    ids = [api.submit({"image": "busybox", "command": ["sh", "-c", script]})["task_id"] for script in scripts]
    tasks = [api.wait(task_id, timeout=600, interval=0.5) for task_id in ids]
    elapsed = time.perf_counter() - started
    from moto.logs.models import logs_backends

    config = stack.config
    group = logs_backends[config.account][config.region].groups[
        stack.deployment.outputs["TaskLogGroupName"]  # type: ignore[union-attr]
    ]
    task_ids = {t["ecs_task_arn"].rsplit("/", 1)[-1] for t in tasks if t["ecs_task_arn"]}
    streams = [stream for name, stream in group.streams.items() if name.rsplit("/", 1)[-1] in task_ids]
    # 1 KiB lines are logged without their newline: 1023 of every 1024 bytes
    expected = sum(size if i % 2 else size - size // 1024 for i in range(count))
    gc.collect()
    return {
        "count": count,
        "mib": mib,
        "elapsed_s": elapsed,
        "succeeded": sum(1 for t in tasks if t["status"] == "SUCCEEDED"),
        "events": sum(len(stream.events) for stream in streams),
        "largest_event": max((len(e.message.encode()) for s in streams for e in s.events), default=0),
        "logged_bytes": sum(stream.stored_bytes for stream in streams),
        "expected_bytes": expected,
        "memory": memory_kib(),
    }


def cold_import_ms(samples: int) -> tuple[list[float], list[float]]:
    layer = ROOT / "layers" / "common"
    api_dir = ROOT / "functions" / "api"
    env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    # The API function checks at import that it was given its resources; an import touches none of them.
    from taskrunner.wiring import IDEMPOTENCY, LOGS, SCHEDULER, SUBMISSION, TASKS  # the layer: on the path now

    env.update(dict.fromkeys(chain(TASKS, SUBMISSION, LOGS, IDEMPOTENCY, SCHEDULER), "benchmark-placeholder"))

    def once(code_dir: Path, module: str) -> float:
        script = (
            f"import sys, time; sys.path[:0] = [{str(code_dir)!r}, {str(layer)!r}]; t = time.perf_counter(); "
            f"import {module}; print((time.perf_counter() - t) * 1000)"
        )
        output = subprocess.run(
            [sys.executable, "-I", "-c", script], env=env, capture_output=True, text=True, check=True, cwd=code_dir
        )
        return float(output.stdout.strip())

    api, minimal = [], []
    for _ in range(samples):  # interleaved, so both see the same machine
        api.append(once(api_dir, "app"))
        minimal.append(once(ROOT / "benchmarks", "minimal_handler"))
    return api, minimal


def orchestration_cost(stack: LocalStack, api: TaskRunnerClient) -> tuple[int, int]:
    task = api.wait(api.submit({"image": "busybox", "command": ["true"]})["task_id"])
    sfn = stack.client("stepfunctions")
    while sfn.describe_execution(executionArn=task["execution_arn"])["status"] == "RUNNING":
        time.sleep(0.05)
    history = sfn.get_execution_history(executionArn=task["execution_arn"])["events"]
    transitions = sum(1 for e in history if e["type"].endswith("StateEntered"))
    lambdas = sum(
        1
        for e in history
        if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resourceType"] == "lambda"
    )
    return transitions, lambdas


def process_mode(args: argparse.Namespace) -> tuple[list[Row], dict[str, str]]:
    """The stack in process mode (the measurements of DESIGN §8): the table's rows, and the burst's failures."""
    api_import, minimal_import = cold_import_ms(args.import_samples) if args.import_samples else ([], [])
    state = Path(tempfile.mkdtemp(prefix="taskrunner-bench-state-"))
    config = LocalConfig(
        api_port=free_port(),
        aws_port=free_port(),
        echo_function_logs=False,
        stack_name="taskrunner-bench",
        # durable, as `make run` is: every acknowledged change is fsynced to the state folder before it is answered
        state_dir=state,
        ephemeral=False,
        agent_mode="process",
    )
    print("process mode: starting the local stack…", file=sys.stderr, flush=True)
    try:
        rows, failures = _measure_process_mode(args, config, api_import, minimal_import)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return rows, failures


def _measure_process_mode(
    args: argparse.Namespace, config: LocalConfig, api_import: list[float], minimal_import: list[float]
) -> tuple[list[Row], dict[str, str]]:
    with LocalStack(config) as stack:
        api = TaskRunnerClient(stack.api_url, api_key=stack.admin_key)
        api.wait(api.submit({"image": "busybox", "command": ["true"]})["task_id"])  # warm every function
        gc.collect()
        idle = memory_kib()
        spawn = bare_spawn_ms(args.latency_samples)
        latency = submit_to_running_ms(api, args.latency_samples)
        transitions, workflow_lambdas = orchestration_cost(stack, api)
        authorizer = authorizer_ms(stack, api, args.latency_samples)
        logs = None
        if args.log_burst:
            print(f"log burst: {args.log_burst} tasks x {args.log_burst_mib} MiB…", file=sys.stderr, flush=True)
            logs = log_burst(stack, api, args.log_burst, args.log_burst_mib)
        result = None
        if args.burst:
            print(f"burst of {args.burst} tasks…", file=sys.stderr, flush=True)
            result = burst(stack, api, args.burst, args.clients)
        queued = None
        if args.tenant_tasks:
            print(f"{args.tenant_tasks} tasks from 4 tenants with quotas…", file=sys.stderr, flush=True)
            queued = tenants.measure(stack, stack.admin_key, args.tenant_tasks, args.clients)
        state_mib = sum(f.stat().st_size for f in config.state_dir.rglob("*") if f.is_file()) / 1024 / 1024

    rows = [
        ("submit → RUNNING p50", f"{percentile(latency, 50):.0f} ms", "≤ 150 ms"),
        ("submit → RUNNING p99", f"{percentile(latency, 99):.0f} ms", "≤ 500 ms"),
        (
            "bare process spawn p50 / p99",
            f"{percentile(spawn, 50):.2f} / {percentile(spawn, 99):.2f} ms",
            "(reference)",
        ),
    ]
    if result is not None:
        rows += burst_rows(result, throughput_target="≥ 20 tasks/s")
    if queued is not None:
        rows += tenants.rows(queued)
    if api_import:
        rows += [
            ("API function cold import (median)", f"{statistics.median(api_import):.0f} ms", ""),
            ("minimal handler cold import (median)", f"{statistics.median(minimal_import):.0f} ms", ""),
            (
                "cold import ratio",
                f"{statistics.median(api_import) / statistics.median(minimal_import):.2f}",
                "≤ 1.30",
            ),
        ]
    rows += [
        ("state transitions per successful task", str(transitions), "≤ 6"),
        ("Lambda invocations by the workflow", str(workflow_lambdas), "≤ 2"),
        ("Lambda invocations by ECS events", "2 (RUNNING, STOPPED)", ""),
        *(
            (
                f"authorizer per request, {label} (p50 / p99)",
                f"{percentile(ms, 50):.2f} / {percentile(ms, 99):.2f} ms",
                "",
            )
            for label, ms in authorizer.items()
        ),
        ("stack process RSS, idle", f"{idle['VmRSS'] / 1024:.0f} MiB", ""),
    ]
    if logs is not None:
        burst_name = f"log burst ({logs['count']} x {logs['mib']} MiB)"
        kept = logs["logged_bytes"] / 1024 / 1024
        rows += [
            (f"{burst_name}: succeeded", f"{logs['succeeded']} / {logs['count']} in {logs['elapsed_s']:.1f} s", ""),
            (
                f"{burst_name}: bytes logged / printed",
                f"{logs['logged_bytes']} / {logs['expected_bytes']}",
                "equal",
            ),
            (f"{burst_name}: events, largest", f"{logs['events']}, {logs['largest_event']} B", "≤ 262118 B"),
            ("stack process RSS, after the log burst", f"{logs['memory']['VmRSS'] / 1024:.0f} MiB", ""),
            (
                "  RSS after the log burst / idle",
                f"{logs['memory']['VmRSS'] / idle['VmRSS']:.2f}",
                "≤ 2 (logs on disk)",
            ),
            ("  its logs, kept in the state folder (on disk)", f"{kept:.0f} MiB", ""),
            ("stack process peak RSS (VmHWM)", f"{logs['memory']['VmHWM'] / 1024:.0f} MiB", ""),
        ]
    rows.append(("state folder on disk after the run", f"{state_mib:.0f} MiB", ""))
    return rows, result["failures"] if result else {}


def container_mode_in_child(args: argparse.Namespace) -> ContainerResult:
    """Container mode in a fresh process: moto and its patches are process-wide, so the stacks of the two
    modes cannot share one, and this process's memory figures stay the process-mode stack's alone."""
    with tempfile.TemporaryDirectory(prefix="taskrunner-bench-") as folder:
        out = Path(folder) / "container.json"
        options = [
            *("--container-latency-samples", str(args.container_latency_samples)),
            *("--container-burst", str(args.container_burst)),
            *("--reference-samples", str(args.reference_samples)),
            *("--clients", str(args.clients)),
        ]
        command = [sys.executable, "-m", "benchmarks", "--only", "container", "--rows-to", str(out), *options]
        # the child's stack prints its agent's lines on stdout: keep them out of this table
        done = subprocess.run(command, cwd=ROOT, stdout=sys.stderr, check=False)
        if done.returncode != 0 or not out.is_file():
            return ContainerResult(rows=[("container mode", "failed:", f"exit status {done.returncode}")])
        saved = json.loads(out.read_text())
    return ContainerResult(
        rows=[(name, value, target) for name, value, target in saved["rows"]],
        breakdown=[(name, value, note) for name, value, note in saved["breakdown"]],
        burst_engine=[(name, value, note) for name, value, note in saved["burst_engine"]],
        failures=saved["failures"],
    )


DESCRIPTION = """\
Benchmark the local stack and print a table next to the design's targets.

Process mode (the agent runs tasks as host processes): submit → RUNNING, a burst of tasks, cold imports,
orchestration cost, memory, a log-heavy burst. Container mode (`agent_mode="container"`, busybox image
through the project's engine): submit → RUNNING p50/p99 over sequential tasks, tasks/s over a burst, the
engine's own `run --rm busybox true` as the reference and the stack's overhead over it, and a table of where
container-mode submit → RUNNING goes. Container mode runs in a child process; without a working engine its
rows say "skipped: <why>" and the benchmark still succeeds."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and each option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        help="run one part: `process` (every process-mode measure) or `container` (container mode alone); "
        "default: both",
    )
    parser.add_argument("--latency-samples", type=int, default=50, help="process mode: sequential tasks")
    parser.add_argument("--burst", type=int, default=1000, help="process mode: tasks of the burst (0: none)")
    parser.add_argument(
        "--tenant-tasks", type=int, default=1000, help="process mode: tasks from 4 tenants with quotas (0: none)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent submitters of a burst (both modes)")
    parser.add_argument("--import-samples", type=int, default=10, help="cold imports of each kind (0: none)")
    parser.add_argument("--log-burst", type=int, default=20, help="tasks of the log-heavy burst (0: none)")
    parser.add_argument("--log-burst-mib", type=int, default=20, help="MiB each task of it prints")
    parser.add_argument(
        "--container-latency-samples",
        type=int,
        default=30,
        help="container mode: sequential tasks for submit → RUNNING and its breakdown",
    )
    parser.add_argument("--container-burst", type=int, default=100, help="container mode: tasks of the burst (0: none)")
    parser.add_argument(
        "--reference-samples",
        type=int,
        default=20,
        help="container mode: warm `run --rm busybox true` of the engine, per network",
    )
    parser.add_argument("--rows-to", type=Path, help=argparse.SUPPRESS)  # the child's container-mode rows, as JSON
    args = parser.parse_args(argv)
    parts = [args.only] if args.only else list(PARTS)

    rows: list[Row] = []
    failures: dict[str, str] = {}
    if "process" in parts:
        rows, failures = process_mode(args)
    container: ContainerResult | None = None
    if "container" in parts:
        if args.only == "container":
            container = container_mode.measure(
                args.container_latency_samples, args.container_burst, args.clients, args.reference_samples
            )
        else:
            container = container_mode_in_child(args)
        if args.rows_to is not None:
            args.rows_to.write_text(json.dumps(dataclasses.asdict(container)))
            return 0
        rows += container.rows
        failures.update(container.failures)
    for task_id, reason in failures.items():
        print(f"not succeeded: {task_id} {reason}", file=sys.stderr)
    print_table(rows)
    if container is not None and container.breakdown:
        print("\nwhere container-mode submit → RUNNING goes (per task; in the order it happens):")
        print_table(container.breakdown, ("part", "median / mean", "note"))
    if container is not None and container.burst_engine:
        print("\ncontainer-mode burst: the engine commands its tasks ran (wall time, concurrent):")
        print_table(container.burst_engine, ("command", "count x mean", "total"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
