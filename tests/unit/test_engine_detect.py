"""Engine.detect finds podman (with the project's configuration) or an answering Docker engine, and says why not."""

from __future__ import annotations

from pathlib import Path

from taskrunner_local.engine import Engine, EnginePaths


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
