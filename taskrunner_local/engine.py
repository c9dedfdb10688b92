"""The container engine the local stack runs OCI containers with: Podman with the project's own configuration
and storage (under `.taskrunner/engine/`), or a Docker engine that answers; one code path for both.

`python -m taskrunner_local.engine` (what `make engine` runs) installs Podman from Debian's packages when it is
missing and writes the project's configuration; nothing system-wide is configured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from taskrunner_local.config import ROOT

ENGINE_DIR = ROOT / ".taskrunner" / "engine"
#: written once the packages are there and the configuration is written; `make engine` is a no-op after it
READY_STAMP = ".ready"

#: the Debian packages of a daemonless engine, and the tools `make images` builds its images with
PACKAGES = ("podman", "runc", "slirp4netns", "uidmap", "catatonit", "busybox-static", "debootstrap")
#: one command each package installs, to tell whether it is there
PACKAGE_COMMANDS = {
    "podman": "podman",
    "runc": "runc",
    "slirp4netns": "slirp4netns",
    "uidmap": "newuidmap",
    "catatonit": "catatonit",
    "busybox-static": "busybox",
    "debootstrap": "debootstrap",
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


@dataclass(frozen=True)
class Engine:
    """An engine's command line (podman or docker: the same CLI) and the environment to run it with."""

    name: str
    executable: str
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(cls, path: str | None = None, paths: EnginePaths | None = None) -> Engine | None:
        """The engine on `path` (the PATH by default), or None: `why_not` says why."""
        found = _probe(path, paths or EnginePaths())
        return found if isinstance(found, Engine) else None

    @staticmethod
    def why_not(path: str | None = None, paths: EnginePaths | None = None) -> str | None:
        """Why `detect` finds no engine, or None when it finds one."""
        found = _probe(path, paths or EnginePaths())
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


def _probe(path: str | None, paths: EnginePaths) -> Engine | str:
    """The engine found, or why there is none."""
    search = os.environ.get("PATH", os.defpath) if path is None else path
    podman = shutil.which("podman", path=search)
    if podman is not None:
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
    docker = shutil.which("docker", path=search)
    if docker is None:
        return "neither podman nor docker is on the PATH: run `make engine` (as root, on Debian)"
    try:
        answer = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={**os.environ, "PATH": search},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"docker is at {docker} but its engine does not answer ({error}); no podman either"
    if answer.returncode != 0:
        said = (answer.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"docker is at {docker} but its engine does not answer ({said}); no podman either"
    return Engine(name="docker", executable=docker)


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
