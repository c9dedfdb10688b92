"""`make demo`: start the stack, run a task that succeeds, one that fails and one that is cancelled, print a
table and their logs, stop the stack."""

from __future__ import annotations

import socket
import sys

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import LocalConfig
from taskrunner_local.images import PYTHON_IMAGE
from taskrunner_local.persistence.folder import StateFolderBusy, StateUnusable
from taskrunner_local.persistence.snapshots import SnapshotFormatError
from taskrunner_local.stack import LocalStack

# The offline image: container mode runs it without a registry, process mode only records it.
DEMO_TASKS = {
    "succeeds": {"image": PYTHON_IMAGE, "command": ["sh", "-c", "echo hello from a local Fargate task; sleep 1"]},
    "fails": {"image": PYTHON_IMAGE, "command": ["sh", "-c", "echo about to fail >&2; exit 3"]},
    # it handles SIGTERM: a container's PID 1 ignores the signals it has no handler for, so without the trap it would
    # be killed only once the stop timeout (30 s) runs out
    "cancelled": {
        "image": PYTHON_IMAGE,
        "command": ["sh", "-c", "trap 'echo stopping; exit 143' TERM; echo working; sleep 120 & wait $!"],
    },
}


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def demo(config: LocalConfig) -> int:
    from taskrunner_local.cli import announce, free_port

    if not _port_free(config.host, config.api_port):
        config.api_port = free_port()
    if not _port_free(config.host, config.aws_port):
        config.aws_port = free_port()
    config.echo_function_logs = False
    choice = announce(config)
    try:
        stack = LocalStack(config, choice).start()
    except (StateFolderBusy, StateUnusable, SnapshotFormatError) as error:
        sys.exit(f"error: {error}")
    try:
        client = TaskRunnerClient(stack.api_url, api_key=stack.admin_key)
        print(f"API at {stack.api_url}; submitting three tasks…", flush=True)
        ids = {name: client.submit({**spec, "name": f"demo-{name}"})["task_id"] for name, spec in DEMO_TASKS.items()}
        client.wait(ids["cancelled"], {"RUNNING"})
        print(f"cancelling {ids['cancelled']} while it runs…", flush=True)
        client.cancel(ids["cancelled"])
        tasks = {name: client.wait(task_id) for name, task_id in ids.items()}

        print()
        columns = ("task", "task id", "status", "exit", "stop code", "billed s", "cost USD")
        header = "{:<11} {:<27} {:<10} {:>4} {:<25} {:>8} {:>12}".format(*columns)
        print(header)
        print("-" * len(header))
        for name, task in tasks.items():
            metering = task["metering"] or {}
            exit_code = "" if task["exit_code"] is None else task["exit_code"]
            print(
                f"{name:<11} {task['task_id']:<27} {task['status']:<10} {exit_code!s:>4} {task['stop_code'] or '':<25} "
                f"{metering.get('billed_seconds', ''):>8} {metering.get('cost_usd', 0):>12.8f}"
            )
        for name, task in tasks.items():
            print(f"\nlogs of {name} ({task['task_id']}):")
            for line in client.logs(task["task_id"]):
                print(f"  | {line}")
        print("\nstopping the local stack…", flush=True)
    finally:
        stack.stop()
    print("done.")
    return 0
