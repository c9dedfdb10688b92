"""The container engine the local Fargate agent will run tasks with: the project's Podman (or a Docker engine)
and the offline images, with the exit codes, output, limits and isolation the agent relies on.

Skipped on a developer machine without an engine; in CI (`CI=true`), where `make test` installs it, a missing
engine fails.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from tests.support.engine import Labelled, engine_or_skip, labelled_containers

CONNECT_TIMEOUT_SECONDS = 3


@pytest.fixture(scope="module")
def engine() -> Engine:
    return engine_or_skip(BUSYBOX_IMAGE, PYTHON_IMAGE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the engine runs: podman 4.3's conmon writes its `oom` marker into its caller's working directory."""
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def containers(engine: Engine, workdir: Path) -> Iterator[Labelled]:
    with labelled_containers(engine, workdir) as labelled:
        yield labelled
        # Then: every container the tests ran is gone
        assert labelled.leftovers() == []


def run(containers: Labelled, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        containers.run_args(*args),
        env=containers.engine.env(),
        cwd=containers.workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def podman(engine: Engine) -> None:
    if engine.name != "podman":
        pytest.skip(f"slirp4netns networking is podman's; the engine is {engine.name}")


@pytest.fixture
def host_server() -> Iterator[tuple[int, list[str]]]:
    """A TCP server on the host's 127.0.0.1: its port, and the peers that connected to it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    peers: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, peer = server.accept()
            except TimeoutError:
                continue
            peers.append(peer[0])
            connection.sendall(b"hello from the host\n")
            connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], peers
    finally:
        stop.set()
        thread.join()
        server.close()


def connect_script(host: str, port: int) -> str:
    return (
        "import socket, sys\n"
        "try:\n"
        f"    s = socket.create_connection(({host!r}, {port}), timeout={CONNECT_TIMEOUT_SECONDS})\n"
        "    print('connected', s.recv(100).decode().strip())\n"
        "except OSError as error:\n"
        "    print('refused', error)\n"
        "    sys.exit(7)\n"
    )


def test_engine_reports_its_version(engine: Engine) -> None:
    # When
    version = engine.version()
    # Then
    assert version[:1].isdigit()


def test_exit_code_and_both_streams_come_back(containers: Labelled) -> None:
    # When
    done = run(containers, BUSYBOX_IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3")
    # Then
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_python_image_is_python_3_13(containers: Labelled) -> None:
    # When
    done = run(containers, PYTHON_IMAGE, "python3", "-c", "import sys; print(sys.version)")
    # Then
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3.13."), done.stdout


def test_python_image_has_a_shell_and_coreutils(containers: Labelled) -> None:
    # When
    done = run(containers, PYTHON_IMAGE, "sh", "-c", "mkdir /tmp/a && touch /tmp/a/b && mv /tmp/a/b /tmp/c && ls /tmp")
    # Then
    assert (done.returncode, done.stdout.split()) == (0, ["a", "c"]), done.stderr


def test_memory_limit_kills_with_137(containers: Labelled) -> None:
    # Given a 64 MB limit, When the task writes 200 MB
    done = run(containers, "--memory", "64m", PYTHON_IMAGE, "python3", "-c", "b = b'x' * (200 * 1024 * 1024)")
    # Then the kernel kills it as ECS reports an OOM kill
    assert done.returncode == 137, done.stderr


@pytest.mark.usefixtures("podman")
def test_slirp4netns_cannot_reach_the_hosts_loopback(containers: Labelled, host_server: tuple[int, list[str]]) -> None:
    # Given a TCP server on the host's 127.0.0.1
    port, peers = host_server
    for host in ("10.0.2.2", "127.0.0.1"):
        # When a container on slirp4netns (no allow_host_loopback) connects to it
        done = run(containers, "--network", "slirp4netns", PYTHON_IMAGE, "python3", "-c", connect_script(host, port))
        # Then it cannot
        assert done.returncode == 7, (host, done.stdout, done.stderr)
    assert peers == []


@pytest.mark.usefixtures("podman")
def test_host_loopback_is_reachable_only_when_allowed(containers: Labelled, host_server: tuple[int, list[str]]) -> None:
    # Given the same server, When the container is allowed the host's loopback (what the isolation test rules out)
    port, peers = host_server
    network = "slirp4netns:allow_host_loopback=true"
    done = run(containers, "--network", network, PYTHON_IMAGE, "python3", "-c", connect_script("10.0.2.2", port))
    # Then it connects: the isolation test above would see a leak
    assert (done.returncode, done.stdout.strip()) == (0, "connected hello from the host"), done.stderr
    assert peers == ["127.0.0.1"]
