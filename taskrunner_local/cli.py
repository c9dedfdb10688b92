"""`taskrunner local up | demo | invoke | reset`: the local stack from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from taskrunner_local.config import AGENT_MODES, LocalConfig
from taskrunner_local.images import PYTHON_IMAGE
from taskrunner_local.persistence.folder import StateFolder, StateFolderBusy, StateUnusable
from taskrunner_local.persistence.snapshots import SnapshotFormatError
from taskrunner_local.stack import AgentChoice, EngineUnavailable, LocalStack, choose_agent_mode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _check_port(host: str, port: int, variable: str) -> None:
    with socket.socket() as probe:
        # as the servers bind: a port whose last connections linger in TIME_WAIT is free, one listened on is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            sys.exit(f"error: port {port} is in use; set {variable} to another port")


def banner(stack: LocalStack) -> str:
    deployment = stack.deployment
    assert deployment is not None
    endpoint = stack.aws_endpoint
    api = stack.api_url
    port = stack.config.api_port
    region = stack.config.region
    table = deployment.outputs.get("TasksTableName")
    assert stack.agent is not None and stack.choice is not None and stack.folder is not None
    # the offline image runs in container mode (no registry is needed) and is only recorded in process mode
    image = PYTHON_IMAGE
    stop_line = (
        "Ctrl-C stops the stack and everything it runs (its ephemeral state is removed)."
        if stack.folder.ephemeral
        else "Ctrl-C stops the stack; running tasks keep running and the next start re-adopts them (state is kept)."
    )
    warned = stack.choice.warnings()
    warnings = "".join(f"\n{line}" for line in warned) + ("\n" if warned else "")
    ecr = "".join(f"\n  {line}" for line in stack.ecr_lines())
    assert stack.folder is not None
    state = "".join(f"\n                 {line}" for line in stack.state_lines)
    assert stack.admin is not None
    key_file = stack.admin.shown_path()
    auth = f'-H "Authorization: Bearer $(cat {shlex.quote(key_file)})"'
    return f"""
taskrunner is up (stack {deployment.stack_name}, everything on this machine)

  API            {api}          reference: {api}/docs   OpenAPI: {api}/openapi.json
  Admin key      {stack.admin_key} (saved in {key_file})
  AWS endpoint   {endpoint}
  Agent mode     {stack.choice.headline()}
  Tasks run as   {stack.agent.launcher.describe()}
  State          {stack.folder.describe()}{state}
{warnings}
Run a task (every route but /docs and /openapi.json needs an API key; POST /tenants makes tenants and their keys):
  curl {auth} -X POST localhost:{port}/tasks -d '{{"image":"{image}","command":["sh","-c","echo hi"]}}'
  curl {auth} localhost:{port}/tasks/<task_id>
  curl {auth} localhost:{port}/tasks/<task_id>/logs

Push your own images:{ecr}

Point the AWS CLI or boto3 at the endpoint (any credentials work):
  export AWS_ENDPOINT_URL={endpoint} AWS_DEFAULT_REGION={region}
  export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
  aws stepfunctions list-executions --state-machine-arn {deployment.state_machine_arn}
  python -c 'import boto3; print(boto3.client("dynamodb").describe_table(TableName="{table}")["Table"]["ItemCount"])'

  state machine  {deployment.state_machine_arn}
  cluster        {deployment.outputs.get("ClusterName")}
  tables         {deployment.outputs.get("TasksTableName")}, {deployment.outputs.get("IdempotencyTableName")}
  task logs      {deployment.outputs.get("TaskLogGroupName")} (archived by Firehose {deployment.delivery_stream} to s3://{deployment.outputs.get("ArchiveBucketName")})

{stop_line}
"""


def announce(config: LocalConfig) -> AgentChoice:
    """Choose the agent mode and say which runs and why (loudly when no engine works); exit when container mode
    was asked for and no engine works."""
    try:
        choice = choose_agent_mode(config.agent_mode)
    except EngineUnavailable as error:
        sys.exit(f"error: {error}")
    print(f"starting the local stack (agent mode: {choice.headline()})…", flush=True)
    for line in choice.warnings():
        print(line, flush=True)
    return choice


def up(config: LocalConfig) -> int:
    _check_port(config.host, config.api_port, "TASKRUNNER_API_PORT")
    _check_port(config.host, config.aws_port, "TASKRUNNER_AWS_PORT")
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    choice = announce(config)
    try:
        stack = LocalStack(config, choice).start()
    except (EngineUnavailable, StateFolderBusy, StateUnusable, SnapshotFormatError) as error:
        sys.exit(f"error: {error}")
    try:
        print(banner(stack), flush=True)
        stopping.wait()
        print("\nstopping…", flush=True)
    finally:
        stack.stop()
    print(stack.stopped_line())
    return 0


def reset(config: LocalConfig) -> int:
    """Forget everything a durable stack kept (tasks, records, schedules, logs, archive, images of the local ECR)."""
    if not config.state_dir.exists():
        print(f"nothing to reset: {config.state_dir} does not exist")
        return 0
    try:
        folder = StateFolder.open(config.state_dir)
    except (StateFolderBusy, StateUnusable) as error:
        sys.exit(f"error: {error}")
    try:
        removed = folder.forget()
    finally:
        folder.close()
    print(f"reset {config.state_dir}: removed {', '.join(removed) or 'nothing'}")
    return 0


def invoke(config: LocalConfig, function: str, event_file: Path | None) -> int:
    """A stand-in for `sam local invoke` that needs no Docker: the same runtime, the stack behind it."""
    event: Any = json.loads(event_file.read_text()) if event_file else {}
    config.api_port, config.aws_port, config.echo_function_logs = free_port(), free_port(), True
    config.ephemeral = True  # one invocation: nothing of it is kept
    with LocalStack(config) as stack:
        assert stack.runtime is not None
        if not stack.runtime.knows(function):
            print(f"error: no function {function!r} in template.yaml", file=sys.stderr)
            return 2
        invocation = stack.runtime.invoke(function, event)
    print(json.dumps(invocation.error or invocation.result, indent=2, default=str))
    return 1 if invocation.error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskrunner", description="The task runner's command line.")
    commands = parser.add_subparsers(dest="scope", required=True)
    local = commands.add_parser("local", help="the embedded local stack (no AWS account, no Docker)")
    actions = local.add_subparsers(dest="action", required=True)
    up_parser = actions.add_parser("up", help="start everything and serve the API until Ctrl-C")
    up_parser.add_argument("--api-port", type=int, help="default $TASKRUNNER_API_PORT or 3000")
    up_parser.add_argument("--aws-port", type=int, help="default $TASKRUNNER_AWS_PORT or 4566")
    up_parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the stack keeps its state; default $TASKRUNNER_STATE_DIR or .taskrunner/ under this directory",
    )
    up_parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="a throwaway stack: state in a temporary folder, removed when it stops (or $TASKRUNNER_EPHEMERAL=1)",
    )
    up_parser.add_argument(
        "--agent-mode",
        choices=AGENT_MODES,
        help="auto: containers when a container engine works, else host processes (with a warning); container: "
        "containers or refuse to start (needs `make engine images`); process: host processes; "
        "default $TASKRUNNER_AGENT_MODE or auto",
    )
    reset_parser = actions.add_parser(
        "reset", help="forget everything the stack kept in its state folder (it must not be running)"
    )
    reset_parser.add_argument("--state-dir", type=Path, help="default $TASKRUNNER_STATE_DIR or .taskrunner/")
    actions.add_parser("demo", help="a one-command tour: run a task that succeeds, one that fails, one cancelled")
    invoke_parser = actions.add_parser("invoke", help="invoke one function on an event, like `sam local invoke`")
    invoke_parser.add_argument("function", help="the function's logical id in template.yaml, e.g. ApiFunction")
    invoke_parser.add_argument("-e", "--event", type=Path, help="a JSON event file, e.g. events/api/post_task.json")
    args = parser.parse_args(argv)

    config = LocalConfig()
    if args.action == "up":
        config.api_port = args.api_port or config.api_port
        config.aws_port = args.aws_port or config.aws_port
        config.agent_mode = args.agent_mode or config.agent_mode
        config.state_dir = args.state_dir or config.state_dir
        config.ephemeral = args.ephemeral or config.ephemeral
        return up(config)
    if args.action == "reset":
        config.state_dir = args.state_dir or config.state_dir
        return reset(config)
    if args.action == "invoke":
        config.echo_function_logs = True
        return invoke(config, args.function, args.event)
    from taskrunner_local.demo import demo

    return demo(config)


if __name__ == "__main__":
    sys.exit(main())
