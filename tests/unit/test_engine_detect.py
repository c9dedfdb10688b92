"""Engine.detect finds podman (with the project's configuration) or an answering Docker engine (the one DOCKER_HOST
names), the one TASKRUNNER_ENGINE chooses, and says why not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskrunner_local.engine import DOCKER_HOST_VARIABLE, ENGINE_VARIABLE, Engine, EnginePaths


@pytest.fixture(autouse=True)
def no_engine_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The developer's own choice of engine and Docker host does not leak into these tests."""
    monkeypatch.delenv(ENGINE_VARIABLE, raising=False)
    monkeypatch.delenv(DOCKER_HOST_VARIABLE, raising=False)
    yield


def fake_command(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(exist_ok=True)
    command = folder / name
    command.write_text(f"#!/bin/sh\n{script}\n")
    command.chmod(0o755)
    return command


def configured(tmp_path: Path) -> EnginePaths:
    paths = EnginePaths(tmp_path / "engine")
    paths.write_config()
    return paths


def test_no_engine_on_the_path(tmp_path: Path) -> None:
    # Given a PATH with neither podman nor docker
    empty = tmp_path / "bin"
    empty.mkdir()
    # When
    found = Engine.detect(path=str(empty), paths=configured(tmp_path))
    why = Engine.why_not(path=str(empty), paths=configured(tmp_path))
    # Then
    assert found is None
    assert why is not None
    assert "neither podman nor docker" in why


def test_docker_whose_engine_does_not_answer(tmp_path: Path) -> None:
    # Given a docker CLI with no daemon behind it
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1")
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path))
    why = Engine.why_not(path=str(bin_dir), paths=configured(tmp_path))
    # Then
    assert found is None
    assert why is not None
    assert "does not answer (Cannot connect to the Docker daemon)" in why


def test_docker_whose_engine_answers(tmp_path: Path) -> None:
    # Given a docker CLI whose engine answers
    bin_dir = tmp_path / "bin"
    docker = fake_command(bin_dir, "docker", "echo 27.0.1")
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path))
    # Then
    assert found is not None
    assert (found.name, found.command("ps")) == ("docker", [str(docker), "ps"])
    assert found.version() == "27.0.1"


def test_podman_without_the_project_configuration(tmp_path: Path) -> None:
    # Given podman, but `make engine` has not written the configuration
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "podman", "exit 0")
    paths = EnginePaths(tmp_path / "nowhere")
    # When
    why = Engine.why_not(path=str(bin_dir), paths=paths)
    # Then
    assert Engine.detect(path=str(bin_dir), paths=paths) is None
    assert why is not None
    assert "run `make engine`" in why


def test_podman_runs_with_the_projects_configuration(tmp_path: Path) -> None:
    # Given podman (preferred over docker) and the project's configuration
    bin_dir = tmp_path / "bin"
    podman = fake_command(bin_dir, "podman", 'echo "$CONTAINERS_CONF $CONTAINERS_STORAGE_CONF"')
    fake_command(bin_dir, "docker", "echo 27.0.1")
    paths = configured(tmp_path)
    # When
    found = Engine.detect(path=str(bin_dir), paths=paths)
    # Then
    assert found is not None
    assert (found.name, found.command("info")) == ("podman", [str(podman), "info"])
    assert found.version() == f"{paths.containers_conf} {paths.storage_conf}"
    assert f'graphroot = "{paths.graphroot}"' in paths.storage_conf.read_text()
    assert 'runtime = "runc"' in paths.containers_conf.read_text()


def both_engines(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A PATH with podman and an answering docker (whose version is the Docker host it talks to)."""
    bin_dir = tmp_path / "bin"
    podman = fake_command(bin_dir, "podman", "echo 4.3.1")
    docker = fake_command(bin_dir, "docker", 'echo "docker at ${DOCKER_HOST:-the default socket}"')
    return bin_dir, podman, docker


@pytest.mark.parametrize("choice", ["docker", "Docker", " docker "])
def test_taskrunner_engine_docker_chooses_docker_over_podman(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    # Given podman, configured, and docker; and the user's choice of docker
    bin_dir, _, docker = both_engines(tmp_path)
    monkeypatch.setenv(ENGINE_VARIABLE, choice)
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path))
    # Then
    assert found is not None
    assert (found.name, found.command("ps")) == ("docker", [str(docker), "ps"])
    assert found.extra_env == {}
    assert found.version() == "docker at the default socket"


@pytest.mark.parametrize("choice", ["podman", "auto", ""])
def test_taskrunner_engine_podman_or_unset_chooses_podman_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str
) -> None:
    # Given podman, configured, and docker
    bin_dir, podman, _ = both_engines(tmp_path)
    monkeypatch.setenv(ENGINE_VARIABLE, choice)
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path))
    # Then
    assert found is not None
    assert (found.name, found.command("info")) == ("podman", [str(podman), "info"])


def test_unset_choice_falls_back_to_docker_without_podman(tmp_path: Path) -> None:
    # Given only docker
    bin_dir = tmp_path / "bin"
    docker = fake_command(bin_dir, "docker", "echo 27.0.1")
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ={})
    # Then
    assert found is not None
    assert (found.name, found.executable) == ("docker", str(docker))


def test_chosen_podman_that_is_missing_does_not_fall_back_to_docker(tmp_path: Path) -> None:
    # Given only docker, and the user's choice of podman
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "docker", "echo 27.0.1")
    environ = {ENGINE_VARIABLE: "podman"}
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    why = Engine.why_not(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    # Then
    assert found is None
    assert why == "TASKRUNNER_ENGINE=podman but podman is not on the PATH: run `make engine` (as root, on Debian)"


def test_chosen_docker_that_is_missing_does_not_fall_back_to_podman(tmp_path: Path) -> None:
    # Given only podman, configured, and the user's choice of docker
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "podman", "echo 4.3.1")
    environ = {ENGINE_VARIABLE: "docker"}
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    why = Engine.why_not(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    # Then
    assert found is None
    assert why == "TASKRUNNER_ENGINE=docker but docker is not on the PATH"


def test_chosen_docker_whose_engine_does_not_answer_says_so_without_podman_fallback(tmp_path: Path) -> None:
    # Given podman, configured, and a docker CLI with no daemon behind it, chosen
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "podman", "echo 4.3.1")
    fake_command(bin_dir, "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1")
    environ = {ENGINE_VARIABLE: "docker"}
    # When
    why = Engine.why_not(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    # Then
    assert Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ=environ) is None
    assert why is not None
    assert why.endswith("(DOCKER_HOST unset: the default socket) does not answer (Cannot connect to the Docker daemon)")


def test_a_choice_that_names_no_engine(tmp_path: Path) -> None:
    # Given both engines, and a typo
    bin_dir, _, _ = both_engines(tmp_path)
    environ = {ENGINE_VARIABLE: "dokcer"}
    # When
    why = Engine.why_not(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    # Then
    assert Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ=environ) is None
    assert why == "TASKRUNNER_ENGINE='dokcer' names no engine: use one of podman, docker, or leave it unset"


def test_docker_talks_to_the_engine_docker_host_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given docker chosen, and DOCKER_HOST naming Podman's Docker API
    bin_dir, _, docker = both_engines(tmp_path)
    monkeypatch.setenv(ENGINE_VARIABLE, "docker")
    monkeypatch.setenv(DOCKER_HOST_VARIABLE, "unix:///tmp/podman.sock")
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path))
    monkeypatch.setenv(DOCKER_HOST_VARIABLE, "unix:///elsewhere.sock")  # the process's environment changes after
    # Then: it was found at that host, and keeps talking to it
    assert found is not None
    assert (found.name, found.executable) == ("docker", str(docker))
    assert found.extra_env == {DOCKER_HOST_VARIABLE: "unix:///tmp/podman.sock"}
    assert found.env()[DOCKER_HOST_VARIABLE] == "unix:///tmp/podman.sock"
    assert found.version() == "docker at unix:///tmp/podman.sock"


def test_docker_host_that_does_not_answer_is_named(tmp_path: Path) -> None:
    # Given a docker CLI that answers only on the default socket
    bin_dir = tmp_path / "bin"
    script = '[ -z "$DOCKER_HOST" ] && echo 27.0.1 && exit 0; echo "Cannot connect to the Docker daemon at $DOCKER_HOST" >&2; exit 1'
    fake_command(bin_dir, "docker", script)
    environ = {DOCKER_HOST_VARIABLE: "unix:///tmp/nothing.sock"}
    # When
    found = Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    why = Engine.why_not(path=str(bin_dir), paths=configured(tmp_path), environ=environ)
    # Then
    assert found is None
    assert why is not None
    assert why.endswith(
        "at DOCKER_HOST=unix:///tmp/nothing.sock does not answer "
        "(Cannot connect to the Docker daemon at unix:///tmp/nothing.sock); no podman either"
    )
    assert Engine.detect(path=str(bin_dir), paths=configured(tmp_path), environ={}) is not None
