"""The container engine for tests: found, or a skip on a developer machine without one (a failure in CI); and
Podman serving the Docker API (`podman system service`) for the docker CLI, the docker code path's engine here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from taskrunner_local.engine import DOCKER_HOST_VARIABLE, ENGINE_VARIABLE, Engine, EnginePaths
from tests.support.local_tasks import processes_with

#: how long `podman system service` may take to answer on its socket, and to stop
SERVICE_START_SECONDS = 30.0
SERVICE_STOP_SECONDS = 15.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(reason: str) -> NoReturn:
    """Skip with `reason` on a developer machine; fail in CI, where `make test` sets the engine up."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def engine_or_skip(*images: str) -> Engine:
    engine = Engine.detect()
    if engine is None:
        require(f"no container engine: {Engine.why_not()}")
    missing = [image for image in images if not engine.image_exists(image)]
    if missing:
        require(f"images {', '.join(missing)} are not built: run `make images`")
    return engine


@dataclass(frozen=True)
class Labelled:
    """Containers run with one label, so that they can be found and removed afterwards."""

    engine: Engine
    label: str
    #: the working directory to run the engine in
    workdir: Path

    def run_args(self, *args: str) -> list[str]:
        """`run --rm` with the label, then `args`."""
        return self.engine.command("run", "--rm", "--label", self.label, *args)

    def leftovers(self) -> list[str]:
        listed = self.engine.run("ps", "-a", "-q", "--filter", f"label={self.label}")
        assert listed.returncode == 0, listed.stderr
        return listed.stdout.split()

    def remove_all(self) -> None:
        ids = self.leftovers()
        if ids:
            self.engine.run("rm", "-f", *ids)


@contextmanager
def labelled_containers(engine: Engine, workdir: Path) -> Iterator[Labelled]:
    containers = Labelled(engine, f"taskrunner.test={uuid.uuid4().hex}", workdir)
    try:
        yield containers
    finally:
        containers.remove_all()


@dataclass(frozen=True)
class DockerService:
    """`podman system service` on a socket of its own, with the project's engine configuration and image store:
    a Docker API the docker CLI talks to through `DOCKER_HOST`."""

    docker_host: str
    #: the docker CLI, talking to the service
    docker: Engine
    #: the project's podman, on the same image store
    podman: Engine
    process: subprocess.Popen[bytes]
    #: the service's working directory: podman 4.3's conmon writes a container's `oom` marker there (not in the
    #: container's static directory, where podman looks for it), so `inspect` says OOMKilled=false
    workdir: Path
    log: Path

    def environ(self) -> dict[str, str]:
        """What makes the local stack (`Engine.detect`) use the docker CLI with this service."""
        return {ENGINE_VARIABLE: "docker", DOCKER_HOST_VARIABLE: self.docker_host}

    def is_podman(self) -> bool:
        """Whether the Docker engine is Podman (true here; a guard for the pitfalls that are Podman's)."""
        done = self.docker.run("version", "--format", "{{range .Server.Components}}{{.Name}};{{end}}")
        return "Podman Engine" in done.stdout


def podman_and_docker_or_skip(paths: EnginePaths | None = None) -> tuple[Engine, str]:
    """The project's podman and the docker CLI, or a skip (a failure in CI) saying which is missing."""
    environ = {**os.environ, ENGINE_VARIABLE: "podman"}
    podman = Engine.detect(paths=paths, environ=environ)
    if podman is None:
        require(f"no podman to serve the Docker API: {Engine.why_not(paths=paths, environ=environ)}")
    docker = shutil.which("docker")
    if docker is None:
        require("the docker CLI is not on the PATH (the docker code path runs it against `podman system service`)")
    return podman, docker


@contextmanager
def docker_service(podman: Engine, timeout: float = SERVICE_START_SECONDS) -> Iterator[DockerService]:
    """Run `podman system service --time=0 unix://<socket>` for the duration; at the end stop it, and check that
    nothing of it is left running (its process, or any process naming its socket) and its socket is gone."""
    # a short folder of its own: a unix socket's path must fit in 108 bytes
    workdir = Path(tempfile.mkdtemp(prefix="podman-api-"))
    socket_path = workdir / "docker.sock"
    docker_host = f"unix://{socket_path}"
    log = workdir / "service.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            podman.command("system", "service", "--time=0", docker_host),
            env=podman.env(),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run does not reach it before the teardown does
        )
    try:
        docker = _wait_for_service(process, docker_host, log, timeout)
        yield DockerService(docker_host, docker, podman, process, workdir, log)
    finally:
        left = _stop_service(process, str(socket_path))
        shutil.rmtree(workdir, ignore_errors=True)
    assert left == [], f"podman system service left {left} behind"


def _wait_for_service(process: subprocess.Popen[bytes], docker_host: str, log: Path, timeout: float) -> Engine:
    environ = {**os.environ, ENGINE_VARIABLE: "docker", DOCKER_HOST_VARIABLE: docker_host}
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"podman system service exited with {process.returncode}: {log.read_text()[-2000:]}")
        if docker_host.startswith("unix://") and Path(docker_host.removeprefix("unix://")).exists():
            docker = Engine.detect(environ=environ)
            if docker is not None:
                return docker
        if time.monotonic() > deadline:
            why = Engine.why_not(environ=environ)
            raise RuntimeError(f"podman system service did not answer within {timeout:.0f} s: {why}")
        time.sleep(0.1)


def _stop_service(process: subprocess.Popen[bytes], socket_path: str) -> list[str]:
    """Stop the service (SIGTERM, then SIGKILL to its process group); what was left running, if anything."""
    left: list[str] = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SERVICE_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            left.append(f"service process {process.pid} (ignored SIGTERM for {SERVICE_STOP_SECONDS:.0f} s)")
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=SERVICE_STOP_SECONDS)
    # containers' conmon processes outlive the service by design; none names the socket
    stragglers = processes_with(socket_path)
    for pid in stragglers:
        left.append(f"process {pid} naming {socket_path}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    if Path(socket_path).exists():
        left.append(f"socket {socket_path}")
    return left
