"""What container mode asks the engine for, without an engine: the limits, labels, network and environment of a
task's container, and the agent mode setting."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from taskrunner_local.agent import Launch, StartError
from taskrunner_local.config import LocalConfig
from taskrunner_local.containers import TASK_ARN_LABEL, ContainerLauncher, on_this_machine, stack_label
from taskrunner_local.engine import Engine
from taskrunner_local.limits import TASK_PIDS_MAX

TASK = SimpleNamespace(id="0123abcd", task_arn="arn:aws:ecs:us-east-1:123456789012:task/cluster/0123abcd")


def launch(**changes: object) -> Launch:
    fields: dict[str, object] = {
        "command": ["sh", "-c", "echo hi"],
        "image": "localhost/taskrunner/busybox:latest",
        "entry_point": [],
        "arguments": ["sh", "-c", "echo hi"],
        "environment": {"GREETING": "hello", "AWS_REGION": "eu-west-1"},
        "cpu_units": 512,
        "memory_mib": 1024,
        "ephemeral_storage_gib": 20,
        "log_group": "/tasks",
        "log_stream": "task/main/0123abcd",
        "stop_timeout": 5.0,
        "container_name": "main",
    }
    return Launch(**{**fields, **changes})  # type: ignore[arg-type]


def create_args(tmp_path: Path, engine_name: str = "podman", **changes: object) -> list[str]:
    launcher = ContainerLauncher(
        Engine(name=engine_name, executable=engine_name), stack_name="stack-a", region="us-east-1", work_dir=tmp_path
    )
    return launcher._create_args(TASK, launch(**changes))


def options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_the_container_gets_the_tasks_limits_labels_and_an_isolated_network(tmp_path: Path) -> None:
    # When
    args = create_args(tmp_path)
    # Then
    assert options(args, "--memory") == options(args, "--memory-swap") == ["1024m"]
    assert options(args, "--cpus") == ["0.5"]
    assert options(args, "--pids-limit") == [str(TASK_PIDS_MAX)]
    assert options(args, "--label") == [stack_label("stack-a"), f"{TASK_ARN_LABEL}={TASK.task_arn}"]
    assert options(args, "--network") == ["slirp4netns"]
    assert options(args, "--pull") == ["never"]  # a missing image is pulled by the agent, in the pull window
    assert not {"-v", "--volume", "--mount", "--privileged", "--env-host"} & set(args)
    assert args[-4:] == ["localhost/taskrunner/busybox:latest", "sh", "-c", "echo hi"]


def test_the_environment_is_fargates_and_the_tasks_never_the_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a variable only the host has
    monkeypatch.setenv("HOST_ONLY", "secret")
    # When
    variables = dict(value.split("=", 1) for value in options(create_args(tmp_path), "--env"))
    # Then the task's own variables win over Fargate's
    assert variables == {
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        "ECS_CONTAINER_NAME": "main",
        "GREETING": "hello",
    }


def test_without_a_command_the_image_cmd_runs_and_an_entry_point_replaces_the_images(tmp_path: Path) -> None:
    # When
    image_cmd = create_args(tmp_path, arguments=None, command=None)
    entry_point = create_args(tmp_path, entry_point=["python3", "-u"], arguments=["app.py"])
    # Then
    assert image_cmd[-1] == "localhost/taskrunner/busybox:latest"
    # docker's CLI takes one program as --entrypoint: the entry point's own arguments lead the command's
    assert options(entry_point, "--entrypoint") == ["python3"]
    assert entry_point[-3:] == ["localhost/taskrunner/busybox:latest", "-u", "app.py"]


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        ("python:3.12-slim", "docker.io/library/python:3.12-slim"),
        ("busybox", "docker.io/library/busybox"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("localhost/taskrunner/python:3.13", "localhost/taskrunner/python:3.13"),
        ("registry:5000/team/app@sha256:" + "a" * 64, "registry:5000/team/app@sha256:" + "a" * 64),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1"),
    ],
)
def test_an_image_without_a_registry_is_docker_hubs_as_on_ecs(tmp_path: Path, image: str, reference: str) -> None:
    # When
    args = create_args(tmp_path, image=image, arguments=None, command=None)
    # Then podman, which refuses short names it has no alias for, gets the name Docker and ECS would use
    assert args[-1] == reference


def test_docker_uses_its_bridge_network(tmp_path: Path) -> None:
    # When
    args = create_args(tmp_path, engine_name="docker")
    # Then
    assert options(args, "--network") == ["bridge"]


def test_an_unknown_agent_mode_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given
    monkeypatch.setenv("TASKRUNNER_AGENT_MODE", "vm")
    # When / Then
    with pytest.raises(ValueError, match="TASKRUNNER_AGENT_MODE"):
        LocalConfig()


def test_auto_is_the_default_agent_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given
    monkeypatch.delenv("TASKRUNNER_AGENT_MODE", raising=False)
    # Then
    assert LocalConfig().agent_mode == "auto"


@pytest.mark.parametrize(
    ("image", "here"),
    [
        ("localhost/taskrunner/busybox:latest", True),
        ("localhost:5000/app:1", True),
        ("127.0.0.1:4566/x:y", True),
        ("127.9.9.9/x", True),
        ("[::1]:5000/x:y", True),
        ("169.254.169.254/x", True),
        ("0.0.0.0:80/x", True),
        ("docker.io/library/python:3.12-slim", False),
        ("192.0.2.2:5000/x", False),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1", False),
    ],
)
def test_a_registry_on_this_machine_is_recognised(image: str, here: bool) -> None:
    assert on_this_machine(image) is here


def test_an_image_is_never_pulled_from_this_machines_loopback(tmp_path: Path) -> None:
    # Given a launcher whose engine would run anything it is asked
    launcher = ContainerLauncher(
        Engine(name="podman", executable="/bin/false"), stack_name="s", region="us-east-1", work_dir=tmp_path
    )
    # When a task names an image of a registry on the host's loopback (say, the stack's own AWS endpoint)
    with pytest.raises(StartError) as raised:
        launcher.pull(launch(image="127.0.0.1:4566/probe:1"))
    # Then it fails to start without the engine connecting anywhere
    assert str(raised.value).startswith("CannotPullContainerError: 127.0.0.1:4566/probe:1 is not in the local")
