"""The container engine the local stack runs OCI containers with: Podman with the project's own configuration
and storage (under `.taskrunner/engine/`), or a Docker engine that answers; one code path for both.

`TASKRUNNER_ENGINE=podman|docker` chooses; unset, podman is used when it is on the PATH, else docker. The docker
engine is the one `DOCKER_HOST` names (e.g. `unix:///run/podman/podman.sock`, Podman's own Docker API), else the
docker CLI's default.

`python -m taskrunner_local.engine` (what `make engine` runs) installs Podman from Debian's packages when it is
missing and writes the project's configuration; nothing system-wide is configured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from taskrunner_local.config import ROOT

ENGINE_DIR = ROOT / ".taskrunner" / "engine"
#: written once the packages are there and the configuration is written; `make engine` is a no-op after it
READY_STAMP = ".ready"

#: the Debian packages of a daemonless engine, the tools `make images` builds its images with, and the OCI registry
#: that stores the local ECR's images (CNCF distribution)
PACKAGES = (
    "podman",
    "runc",
    "slirp4netns",
    "uidmap",
    "catatonit",
    "busybox-static",
    "debootstrap",
    "docker-registry",
)
#: one command each package installs, to tell whether it is there
PACKAGE_COMMANDS = {
    "podman": "podman",
    "runc": "runc",
    "slirp4netns": "slirp4netns",
    "uidmap": "newuidmap",
    "catatonit": "catatonit",
    "busybox-static": "busybox",
    "debootstrap": "debootstrap",
    "docker-registry": "docker-registry",
}
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"

# Both settings are required on these machines: root lacks CAP_SYS_RESOURCE, so the runtime cannot raise the
# open-files and processes limits past the host's; and crun refuses the hybrid cgroup v1/v2 layout, runc does not.
CONTAINERS_CONF = """\
# Written by `make engine` (taskrunner_local/engine.py); changes here are overwritten.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

STORAGE_CONF = """\
# Written by `make engine` (taskrunner_local/engine.py); changes here are overwritten.
[storage]
driver = "overlay"
graphroot = "{graphroot}"
runroot = "{runroot}"
"""


@dataclass(frozen=True)
class EnginePaths:
    """Where the project keeps the engine's configuration, image store and run state."""

    home: Path = ENGINE_DIR

    @property
    def containers_conf(self) -> Path:
        return self.home / "containers.conf"

    @property
    def storage_conf(self) -> Path:
        return self.home / "storage.conf"

    @property
    def graphroot(self) -> Path:
        return self.home / "storage"

    @property
    def runroot(self) -> Path:
        return self.home / "run"

    @property
    def cache(self) -> Path:
        """Root file systems already built, so that a wiped image store re-imports in seconds."""
        return self.home / "cache"

    @property
    def ready(self) -> Path:
        return self.home / READY_STAMP

    def configured(self) -> bool:
        return self.containers_conf.is_file() and self.storage_conf.is_file()

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        storage = STORAGE_CONF.format(graphroot=self.graphroot, runroot=self.runroot)
        for path, text in ((self.containers_conf, CONTAINERS_CONF), (self.storage_conf, storage)):
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)


#: which engine to use: `podman`, `docker`, or unset (or `auto`) for podman first, then docker
ENGINE_VARIABLE = "TASKRUNNER_ENGINE"
ENGINE_CHOICES = ("podman", "docker")
#: the Docker engine the docker CLI talks to (its default socket when unset), e.g. `unix:///run/podman.sock`
DOCKER_HOST_VARIABLE = "DOCKER_HOST"
#: how long `docker version` may take to answer when looking for an engine
DOCKER_PROBE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Engine:
    """An engine's command line (podman or docker: the same CLI) and the environment to run it with."""

    name: str
    executable: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(
        cls,
        path: str | None = None,
        paths: EnginePaths | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Engine | None:
        """The engine `TASKRUNNER_ENGINE` names (podman first, then docker, when unset) on `path` (the PATH by
        default), or None: `why_not` says why. A docker engine is the one `DOCKER_HOST` names, when set.
        `environ` stands for the process's environment (`os.environ` by default)."""
        found = _probe(path, paths or EnginePaths(), os.environ if environ is None else environ)
        return found if isinstance(found, Engine) else None

    @staticmethod
    def why_not(
        path: str | None = None, paths: EnginePaths | None = None, environ: Mapping[str, str] | None = None
    ) -> str | None:
        """Why `detect` finds no engine, or None when it finds one."""
        found = _probe(path, paths or EnginePaths(), os.environ if environ is None else environ)
        return found if isinstance(found, str) else None

    def env(self) -> dict[str, str]:
        """The environment to run the engine with."""
        return {**os.environ, **self.extra_env}

    def command(self, *args: str) -> list[str]:
        return [self.executable, *args]

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run an engine command to completion, capturing its output (never raises on a non-zero exit)."""
        return subprocess.run(
            self.command(*args), env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", "--format", "{{.Id}}", ref).returncode == 0

    def version(self) -> str:
        """The engine's own version (the server's, for Docker)."""
        fmt = "{{.Server.Version}}" if self.name == "docker" else "{{.Client.Version}}"
        done = self.run("version", "--format", fmt, timeout=30.0)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name} version failed: {done.stderr.strip()}")
        return done.stdout.strip()


def _probe(path: str | None, paths: EnginePaths, environ: Mapping[str, str]) -> Engine | str:
    """The engine found, or why there is none."""
    search = environ.get("PATH", os.defpath) if path is None else path
    choice = environ.get(ENGINE_VARIABLE, "").strip().lower()
    if choice in ("", "auto"):
        podman = _podman(search, paths)
        if isinstance(podman, Engine) or shutil.which("podman", path=search) is not None:
            return podman  # podman is there: its configuration missing is worth saying, not hiding behind docker
        docker = _docker(search, environ)
        if isinstance(docker, Engine) or shutil.which("docker", path=search) is not None:
            return docker if isinstance(docker, Engine) else f"{docker}; no podman either"
        return "neither podman nor docker is on the PATH: run `make engine` (as root, on Debian)"
    if choice == "podman":
        return _podman(search, paths)
    if choice == "docker":
        return _docker(search, environ)
    return f"{ENGINE_VARIABLE}={choice!r} names no engine: use one of {', '.join(ENGINE_CHOICES)}, or leave it unset"


def _podman(search: str, paths: EnginePaths) -> Engine | str:
    podman = shutil.which("podman", path=search)
    if podman is None:
        return f"{ENGINE_VARIABLE}=podman but podman is not on the PATH: run `make engine` (as root, on Debian)"
    if not paths.configured():
        return f"podman is at {podman} but the project's engine configuration is missing: run `make engine`"
    return Engine(
        name="podman",
        executable=podman,
        extra_env={
            "CONTAINERS_CONF": str(paths.containers_conf),
            "CONTAINERS_STORAGE_CONF": str(paths.storage_conf),
            # podman looks for runc, conmon and slirp4netns on the PATH
            "PATH": f"{search}:{_SBIN}" if search else _SBIN,
        },
    )


def _docker(search: str, environ: Mapping[str, str]) -> Engine | str:
    docker = shutil.which("docker", path=search)
    if docker is None:
        return f"{ENGINE_VARIABLE}=docker but docker is not on the PATH"
    host = environ.get(DOCKER_HOST_VARIABLE, "")
    # the engine keeps talking to the daemon it was found at, whatever the process's environment becomes
    extra_env = {DOCKER_HOST_VARIABLE: host} if host else {}
    where = f"at {DOCKER_HOST_VARIABLE}={host}" if host else f"({DOCKER_HOST_VARIABLE} unset: the default socket)"
    try:
        answer = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_PROBE_TIMEOUT_SECONDS,
            check=False,
            env={**environ, "PATH": search, **extra_env},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"docker is at {docker} but its engine {where} does not answer ({error})"
    if answer.returncode != 0:
        said = (answer.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"docker is at {docker} but its engine {where} does not answer ({said})"
    return Engine(name="docker", executable=docker, extra_env=extra_env)


def missing_packages(path: str | None = None) -> list[str]:
    search = f"{os.environ.get('PATH', os.defpath)}:{_SBIN}" if path is None else path
    return [package for package in PACKAGES if shutil.which(PACKAGE_COMMANDS[package], path=search) is None]


def install_packages(missing: list[str]) -> str | None:
    """Install `missing` with apt-get; None when done, else why it was skipped."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", *PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return None


def setup(paths: EnginePaths | None = None) -> int:
    """`make engine`: install what is missing, write the project's configuration, stamp it ready."""
    paths = paths or EnginePaths()
    missing = missing_packages()
    if missing:
        print(f"engine: installing {' '.join(missing)} (apt-get)", flush=True)
        started = time.monotonic()
        skipped = install_packages(missing)
        if skipped is None:
            print(f"engine: installed in {time.monotonic() - started:.1f} s", flush=True)
        else:
            print(f"engine: skipped installing {' '.join(missing)}: {skipped}; install them yourself", flush=True)
    paths.write_config()
    if missing_packages():
        paths.ready.unlink(missing_ok=True)
    else:
        paths.ready.write_text(f"{' '.join(PACKAGES)}\n")
    engine = Engine.detect(paths=paths)
    if engine is None:
        print(f"engine: none available: {Engine.why_not(paths=paths)}", flush=True)
    else:
        print(f"engine: {engine.name} {engine.version()}, configuration in {paths.home}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(setup())
