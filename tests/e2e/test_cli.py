"""The command line as a user runs it: `taskrunner local up` (then Ctrl-C) and `taskrunner local invoke`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT
from taskrunner_local.containers import stack_label
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from tests.e2e.test_local_stack import processes_with
from tests.support.local_tasks import admin_key_in, process_state, read_banner


def test_up_serves_the_api_and_ctrl_c_stops_everything() -> None:
    api_port, aws_port = free_port(), free_port()
    stack_name = f"cli-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TASKRUNNER_QUIET": "1", "PYTHONUNBUFFERED": "1", "TASKRUNNER_STACK_NAME": stack_name}
    engine = Engine.detect()
    process = subprocess.Popen(
        [sys.executable, "-m", "taskrunner_local", "up", "--api-port", str(api_port), "--aws-port", str(aws_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        output = read_banner(process, timeout=120)
        banner = "".join(output)
        assert f"http://127.0.0.1:{api_port}" in banner and f"http://127.0.0.1:{aws_port}" in banner
        # the admin key: in the banner, in the state folder for the user alone, and in the banner's examples
        admin_key, key_file = admin_key_in(banner)
        assert key_file.read_text() == f"{admin_key}\n"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert f'curl -H "Authorization: Bearer $(cat {key_file})" -X POST localhost:{api_port}/tasks' in banner
        assert "AWS_ENDPOINT_URL" in banner
        # the default agent mode, auto: containers where an engine works (else the loud fallback to processes)
        if engine is None:
            assert "agent mode: process (auto: no container engine works:" in banner, banner
            assert "WARNING: no container engine works" in banner, banner
        else:
            assert f"agent mode: container (auto: {engine.name} {engine.version()} works)" in banner, banner
            assert f"Agent mode     container (auto: {engine.name} " in banner, banner
            assert f'"image":"{PYTHON_IMAGE}"' in banner

        api = TaskRunnerClient(f"http://127.0.0.1:{api_port}", api_key=admin_key)
        marker = f"cli-{uuid.uuid4().hex}"
        # (busybox's sh execs a last command in place of itself: one after the sleep keeps the marker's shell)
        task_id = api.submit({"image": BUSYBOX_IMAGE, "command": ["sh", "-c", f"sleep 300; : {marker}"]})["task_id"]
        api.wait(task_id, {"RUNNING"})
        assert processes_with(marker)
        registries = [
            pid for pid in processes_with("docker-registry") if (process_state(pid) or ("", 0))[1] == process.pid
        ]
        assert registries or shutil.which("docker-registry") is None, "the local ECR's registry is not running"
    finally:
        process.send_signal(signal.SIGINT)
        remaining, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(output) + remaining
    assert "no task process is left running" in remaining
    assert processes_with(marker) == []
    assert [pid for pid in registries if Path(f"/proc/{pid}").exists()] == [], "the stack's registry outlived it"
    if engine is not None:  # nor any container of the stack
        listed = engine.run("ps", "-a", "-q", "--filter", f"label={stack_label(stack_name)}")
        assert (listed.returncode, listed.stdout.split()) == (0, [])
    endpoint = f"AWS_ENDPOINT_URL=http://127.0.0.1:{aws_port}".encode()
    assert [pid for pid in processes_with("lambda_worker.py") if endpoint in _environ(pid)] == []


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def test_invoke_runs_a_function_on_a_sample_event_without_docker() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskrunner_local",
            "invoke",
            "ApiFunction",
            "-e",
            "events/api/post_task_invalid_memory.json",
        ],
        cwd=ROOT,
        env={**os.environ, "TASKRUNNER_QUIET": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert response["statusCode"] == 422
    assert json.loads(response["body"])["error"]["details"][0]["field"] == "memory"


def test_invoke_names_an_unknown_function() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskrunner_local", "invoke", "NoSuchFunction"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 2 and "NoSuchFunction" in result.stderr
