"""Settings of the local stack, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: how the local Fargate agent runs tasks: `auto` (the default) runs containers when a container engine works and
#: falls back, loudly, to host processes when none does; `container` refuses to start without an engine; `process`
#: runs host processes (no isolation, the image is only recorded)
AGENT_MODES = ("auto", "container", "process")


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class LocalConfig:
    host: str = "127.0.0.1"
    api_port: int = field(default_factory=lambda: _int("TASKRUNNER_API_PORT", 3000))
    aws_port: int = field(default_factory=lambda: _int("TASKRUNNER_AWS_PORT", 4566))
    #: the local ECR's registry (push to 127.0.0.1:<port>/<repository>); another free port when this one is taken
    registry_port: int = field(default_factory=lambda: _int("TASKRUNNER_REGISTRY_PORT", 4567))
    region: str = "us-east-1"
    account: str = "123456789012"
    stack_name: str = field(default_factory=lambda: os.environ.get("TASKRUNNER_STACK_NAME", "taskrunner"))
    root: Path = ROOT
    #: the state folder: where the stack keeps its tasks, records, schedules, logs and archive, so that they survive
    #: Ctrl-C, kill -9 and restarts (TASKRUNNER_STATE_DIR; `.taskrunner/` under the directory the stack starts from)
    state_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("TASKRUNNER_STATE_DIR") or Path.cwd() / ".taskrunner")
    )
    #: a throwaway stack: its state lives in a temporary folder, removed when it stops (TASKRUNNER_EPHEMERAL=1,
    #: `--ephemeral`); a given TASKRUNNER_STATE_DIR is then ignored
    ephemeral: bool = field(default_factory=lambda: os.environ.get("TASKRUNNER_EPHEMERAL", "") not in ("", "0"))
    #: seconds between SIGTERM and SIGKILL when a task is stopped (ECS's default stopTimeout is 30 s)
    stop_timeout_seconds: float = field(default_factory=lambda: _float("TASKRUNNER_STOP_TIMEOUT", 30.0))
    #: tasks that may run at once; more wait in PROVISIONING, like a cluster out of capacity
    max_running_tasks: int = field(default_factory=lambda: _int("TASKRUNNER_MAX_RUNNING_TASKS", 64))
    #: execution environments per function (Lambda's concurrency, bounded for a laptop)
    lambda_concurrency: int = field(default_factory=lambda: _int("TASKRUNNER_LAMBDA_CONCURRENCY", 6))
    #: API Gateway HTTP APIs accept payloads up to 10 MB
    max_request_bytes: int = field(default_factory=lambda: _int("TASKRUNNER_MAX_REQUEST_BYTES", 10 * 1024 * 1024))
    #: the rate() schedules template.yaml declares (the reconciler's, every 5 minutes) fire locally at least this
    #: often, in seconds; 0 keeps their own rate
    template_schedule_interval_seconds: float = field(
        default_factory=lambda: _float("TASKRUNNER_TEMPLATE_SCHEDULE_INTERVAL", 30.0)
    )
    #: print each Lambda invocation's own log lines on the console
    echo_function_logs: bool = field(default_factory=lambda: os.environ.get("TASKRUNNER_QUIET", "") == "")
    #: `auto` (the default: containers when an engine works, else host processes, announced loudly), `container`
    #: (needs a container engine: `make engine images`) or `process`
    agent_mode: str = field(default_factory=lambda: os.environ.get("TASKRUNNER_AGENT_MODE") or "auto")

    def __post_init__(self) -> None:
        if self.agent_mode not in AGENT_MODES:
            modes = ", ".join(AGENT_MODES)
            raise ValueError(f"agent mode {self.agent_mode!r} is none of {modes} (TASKRUNNER_AGENT_MODE)")

    @property
    def aws_endpoint(self) -> str:
        return f"http://{self.host}:{self.aws_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"
