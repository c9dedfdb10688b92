"""Container mode of the local Fargate agent: each ECS task runs as one OCI container of its task definition's
image, through the project's Podman or a Docker engine (`engine.py`), with one code path for both.

The task's lifecycle (timestamps, states, events, log shipping) is the agent's (`agent.py`); this module gets the
image, creates and starts the container, stops it and removes it. Each container has the task's memory (no swap
beyond it), CPU and process limits, no host mount and none of the host's environment, and a network that reaches
out but not the host's 127.0.0.1, where the stack's endpoints listen. Its labels name the stack and the ECS task,
so that a restarted agent and the stack's shutdown find them.

A container outlives the agent that started it (the engine's monitor, conmon, keeps it and its output): the next
agent adopts it (`ContainerLauncher.adopt`), reading its whole output again from the engine's log of it (`logs
--follow`, which ends when the container exits) and its exit from the engine's record of it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskrunner_local.agent import (
    Adopted,
    Execution,
    ImageNotPresent,
    Launch,
    NotStarted,
    StartError,
    Stray,
    ecs_environment,
)
from taskrunner_local.engine import Engine
from taskrunner_local.limits import TASK_PIDS_MAX
from taskrunner_local.persistence.store import DATABASE

if TYPE_CHECKING:
    from taskrunner_local.registry import LocalEcr

STACK_LABEL = "io.taskrunner.stack"
TASK_ARN_LABEL = "io.taskrunner.ecs-task-arn"
#: the label that names the state folder of the stack a container belongs to
STATE_DIR_LABEL = "io.taskrunner.state-dir"
#: Engine commands that only look or change state; a pull may take longer.
ENGINE_TIMEOUT_SECONDS = 60.0
PULL_TIMEOUT_SECONDS = 600.0
#: How long the agent waits for the engine to remove a container before it reports it left behind.
REMOVE_TIMEOUT_SECONDS = 30.0
#: How often the agent looks whether a Docker container has started.
START_POLL_SECONDS = 0.05
#: Where the kernel lists the interpreters it runs foreign binaries with (qemu-user-static registers them).
BINFMT_MISC_DIR = Path("/proc/sys/fs/binfmt_misc")
#: ECS's cpuArchitecture: the engine's platform, the kernel's machine names, and binfmt_misc's handler.
_ARCHITECTURES = {
    "X86_64": ("linux/amd64", ("x86_64", "amd64"), "qemu-x86_64"),
    "ARM64": ("linux/arm64", ("aarch64", "arm64"), "qemu-aarch64"),
}
#: What a create says when the image is not in the store: then the agent pulls it and creates again.
_IMAGE_MISSING = ("image not known", "no such image", "unable to find image")
#: A container's `State.Status` (podman's and docker's words) when it runs, and when it has run and exited: the
#: next agent adopts both; one that never started (created, initialized, configured: no StartedAt) is removed.
_RUNNING_STATES = frozenset({"running", "paused", "stopping", "restarting"})
_EXITED_STATES = frozenset({"exited", "stopped", "dead"})
#: the credential folders of pulls from the local ECR, in the launcher's work_dir
_PULL_DIR_PREFIX = "pull-"


@dataclass(frozen=True)
class _Dialect:
    """Where podman and docker differ for the agent."""

    #: outbound traffic works, the host's 127.0.0.1 is out of reach (podman: no allow_host_loopback)
    network: str
    #: podman 4.3's conmon writes the container's `oom` marker into the working directory of the podman command
    #: that creates the runtime container, while podman reads it from the container's static directory: that
    #: command (`init`) runs there. Docker's daemon needs neither.
    init_in_static_dir: bool
    #: removes containers at once (podman's `rm -f` first waits out a stop timeout), and quietly when gone
    remove: tuple[str, ...]
    #: `ps --format`: a container's full id, the ECS task its label names and its stack's state folder, `|` apart
    ps_task_format: str
    #: how a pull from the local ECR (plain HTTP on 127.0.0.1) gets its credentials: podman takes an auth file and
    #: must be told the registry is not TLS; a Docker daemon reads `$DOCKER_CONFIG/config.json` and trusts 127.0.0.1
    local_pull_options: tuple[str, ...]


_DIALECTS = {
    "podman": _Dialect(
        network="slirp4netns",
        init_in_static_dir=True,
        remove=("rm", "-f", "-t", "0", "--ignore"),
        ps_task_format=(
            f'{{{{.ID}}}}|{{{{index .Labels "{TASK_ARN_LABEL}"}}}}|{{{{index .Labels "{STATE_DIR_LABEL}"}}}}'
        ),
        local_pull_options=("--tls-verify=false", "--authfile", "{authfile}"),
    ),
    "docker": _Dialect(
        network="bridge",
        init_in_static_dir=False,
        remove=("rm", "-f"),
        ps_task_format=f'{{{{.ID}}}}|{{{{.Label "{TASK_ARN_LABEL}"}}}}|{{{{.Label "{STATE_DIR_LABEL}"}}}}',
        local_pull_options=(),
    ),
}


def stack_label(stack_name: str) -> str:
    """The label every container of the stack `stack_name` carries (`--filter label=…` finds them)."""
    return f"{STACK_LABEL}={stack_name}"


def host_architecture(machine: str | None = None) -> str | None:
    """ECS's name (X86_64, ARM64) for this host's CPU architecture, None for another."""
    machine = (machine or platform.machine()).lower()
    return next((name for name, (_, machines, _) in _ARCHITECTURES.items() if machine in machines), None)


def emulates(handler: str, binfmt_dir: Path = BINFMT_MISC_DIR) -> bool:
    """Whether the kernel runs binaries through the binfmt_misc `handler` (registered and enabled)."""
    try:
        return (binfmt_dir / handler).read_text().splitlines()[:1] == ["enabled"]
    except OSError:
        return False


def platform_option(architecture: str, machine: str | None = None, binfmt_dir: Path = BINFMT_MISC_DIR) -> list[str]:
    """The engine's `--platform` option for a task of `architecture` (ECS's cpuArchitecture): none when the host
    has that architecture, the emulated platform when the kernel can run its binaries; else the task cannot start
    (StartError), as an ARM64 task on Fargate never runs as x86_64."""
    wanted = architecture.upper() or "X86_64"
    if wanted not in _ARCHITECTURES:
        raise StartError(f"CannotStartContainerError: unknown cpuArchitecture {architecture!r}")
    host = host_architecture(machine)
    if host == wanted:
        return []
    engine_platform, machines, handler = _ARCHITECTURES[wanted]
    if emulates(handler, binfmt_dir):
        return ["--platform", engine_platform]
    host_machine = machine or platform.machine()
    raise StartError(
        f"CannotStartContainerError: {wanted} tasks need emulation and this {host_machine} host has none "
        f"(no binfmt_misc handler for {machines[0]}; install qemu-user-static)"
    )


def qualified(image: str) -> str:
    """`image` as Docker (and so ECS) reads it: a name without a registry is Docker Hub's (`python:3.12-slim` is
    `docker.io/library/python:3.12-slim`). Podman would instead refuse a short name it has no alias for."""
    first, slash, _ = image.partition("/")
    if not slash:
        return f"docker.io/library/{image}"
    if "." in first or ":" in first or first == "localhost":
        return image
    return f"docker.io/{image}"


def on_this_machine(reference: str) -> bool:
    """Whether the registry `reference` (a qualified image name) names is this machine itself: `localhost`, or a
    loopback, link-local or unspecified address."""
    host = reference.partition("/")[0]
    if host.startswith("["):  # [::1]:5000
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_unspecified


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """What a failed engine command said: its last line of error output."""
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1].removeprefix("Error: ") if lines else f"exit status {done.returncode}"


def _daemon_said(done: subprocess.CompletedProcess[str]) -> str:
    """What the Docker daemon answered a failed command (its last line only names the container)."""
    for line in (done.stderr or "").splitlines():
        if "Error response from daemon:" in line:
            return line.split("Error response from daemon:", 1)[1].strip()
    return _said(done)


class ContainerExecution:
    """One task's container, attached to (`process` is the engine's `start --attach`, which carries its output)."""

    def __init__(
        self,
        engine: Engine,
        dialect: _Dialect,
        container_id: str,
        process: subprocess.Popen[bytes],
        stop_timeout: float,
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.container_id = container_id
        self.process = process
        self.stop_timeout = stop_timeout
        self._stopping: subprocess.Popen[bytes] | None = None
        self._finished_at: datetime | None = None

    def terminate(self) -> None:
        """`stop -t`: SIGTERM to the container's main process, SIGKILL after the stop timeout (the agent also
        kills it once that timeout runs out, should the engine's stop not)."""
        self._stopping = subprocess.Popen(
            self.engine.command("stop", "-t", str(math.ceil(self.stop_timeout)), self.container_id),
            env=self.engine.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill_all(self) -> bool:
        # Once the main process (PID 1 of the container's namespace) has exited, the kernel has killed every
        # other process of the container, and the attached engine command has returned.
        if self.process.poll() is not None:
            return True
        killed = self.engine.run("kill", "--signal", "KILL", self.container_id, timeout=ENGINE_TIMEOUT_SECONDS)
        return killed.returncode == 0 or self.process.poll() is not None

    def leftovers(self) -> list[str]:
        listed = self.engine.run("ps", "-a", "-q", "--filter", f"id={self.container_id}")
        return [f"container {line}" for line in listed.stdout.split()]

    def exit_status(self, returncode: int) -> tuple[int, bool]:
        state = _state(self.engine, self.container_id)
        if state.get("Status") in _RUNNING_STATES:
            # the command that followed it ended first (an adopted container's `logs`, a crashed engine command)
            self.engine.run("wait", self.container_id, timeout=ENGINE_TIMEOUT_SECONDS)
            state = _state(self.engine, self.container_id)
        exit_code = state.get("ExitCode")
        if not isinstance(exit_code, int) or state.get("Status") not in _EXITED_STATES:
            raise RuntimeError(f"container {self.container_id} has not exited: {state}")
        self._finished_at = engine_time(state.get("FinishedAt"))
        return exit_code, state.get("OOMKilled") is True

    def finished_at(self) -> datetime | None:
        return self._finished_at

    def release(self) -> None:
        """End the engine command that carries the container's output (`start --attach`, `logs --follow`) with
        SIGKILL, which it cannot pass on to the container (SIGTERM it would). The container keeps running under
        the engine's monitor; a `stop` under way is left to finish."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: itself and nothing of the task
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=ENGINE_TIMEOUT_SECONDS)

    def close(self) -> bool:
        """Remove the container (killing whatever still runs in it) and reap the engine commands."""
        try:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
            removed = self.engine.run(*self.dialect.remove, self.container_id, timeout=REMOVE_TIMEOUT_SECONDS)
            return removed.returncode == 0
        finally:
            for process in (self.process, self._stopping):
                if process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=ENGINE_TIMEOUT_SECONDS)


class ContainerLauncher:
    """Container mode: `start` creates, initialises and starts the container; `pull` gets an image that `start`
    found missing (the agent then starts again), so a task of an image already in the store costs no look-up."""

    mode = "container"
    adopts = True

    def __init__(
        self,
        engine: Engine,
        *,
        stack_name: str,
        region: str,
        work_dir: Path,
        on_log: Callable[[str], None] | None = None,
        registry: LocalEcr | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """`registry`: the stack's local ECR, which serves the ECR URIs of its account and region; `state_dir`: the
        stack's state folder, which its containers name, so that two stacks of one name on two folders never take
        each other's containers for strays."""
        self.engine = engine
        self.registry = registry
        self.state_dir = state_dir
        self.dialect = _DIALECTS.get(engine.name, _DIALECTS["docker"])
        self.stack_name = stack_name
        self.region = region
        self.work_dir = work_dir
        self.on_log = on_log or (lambda line: None)
        self._containers_dir = _containers_dir(engine) if self.dialect.init_in_static_dir else None
        work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def label(self) -> str:
        return stack_label(self.stack_name)

    def describe(self) -> str:
        return (
            f"containers (container mode, {self.engine.name} {self.engine.version()}, network {self.dialect.network}: "
            "no access to the host's 127.0.0.1)"
        )

    def prepare(self, launch: Launch) -> None:
        """An image of the local ECR is pulled now, every time, as Fargate pulls (its tag may have moved, or the
        image been deleted). For others there is nothing to look up: `create` says when the image is missing
        (ImageNotPresent), then `pull` gets it."""
        if not launch.image:
            raise StartError("CannotPullContainerError: the container definition has no image")
        if self.registry is not None and self.registry.local_reference(launch.image) is not None:
            self.pull(launch)

    def engine_image(self, image: str) -> str:
        """The name the engine pulls and runs `image` by: the local ECR's alias for its images, else `qualified`."""
        local = self.registry.local_reference(image) if self.registry is not None else None
        return local or qualified(image)

    def pull(self, launch: Launch) -> None:
        image = self.engine_image(launch.image)
        local = self.registry is not None and self.registry.local_reference(launch.image) is not None
        if not local and on_this_machine(qualified(launch.image)):
            # the engine pulls from the host's network: it must not become a way to probe this machine's ports
            raise StartError(
                f"CannotPullContainerError: {launch.image} is not in the local image store, and images are not "
                "pulled from a registry on this machine's loopback (push it to the local ECR instead)"
            )
        auth_dir = Path(tempfile.mkdtemp(prefix=_PULL_DIR_PREFIX, dir=self.work_dir)) if local else None
        try:
            engine = self.engine
            options: tuple[str, ...] = ()
            if self.registry is not None and auth_dir is not None:  # the local ECR's credentials, for this pull
                user, password = self.registry.credentials()
                authfile = auth_dir / "config.json"
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                authfile.write_text(json.dumps({"auths": {self.registry.endpoint: {"auth": token}}}))
                authfile.chmod(0o600)
                options = tuple(option.format(authfile=authfile) for option in self.dialect.local_pull_options)
                engine = dataclasses.replace(engine, extra_env={**engine.extra_env, "DOCKER_CONFIG": str(auth_dir)})
            pulled = engine.run("pull", "--quiet", *options, image, timeout=PULL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise StartError(
                f"CannotPullContainerError: pulling {launch.image} took longer than {PULL_TIMEOUT_SECONDS:.0f} s"
            ) from None
        finally:
            if auth_dir is not None:
                shutil.rmtree(auth_dir, ignore_errors=True)
        if pulled.returncode != 0:
            said = _said(pulled)
            if self.registry is not None and local and launch.image.startswith(f"{self.registry.host}/"):
                said = said.replace(self.registry.endpoint, self.registry.host)  # the name the task gave
            raise StartError(f"CannotPullContainerError: {said}")

    def start(self, task: Any, launch: Launch) -> Execution:
        args = self._create_args(task, launch)  # raises StartError for an architecture the host cannot run
        try:
            created = self.engine.run(*args, timeout=ENGINE_TIMEOUT_SECONDS)
        except ValueError as exc:  # a NUL byte in an argument or variable
            raise StartError(f"CannotCreateContainerError: {exc}") from exc
        if created.returncode != 0:
            self._remove(self._name(task))
            said = _said(created)
            if any(missing in said.lower() for missing in _IMAGE_MISSING):
                raise ImageNotPresent(f"CannotPullContainerError: {said}")
            raise StartError(f"CannotCreateContainerError: {said}")
        container_id = created.stdout.strip().splitlines()[-1]
        try:
            return self._start(container_id, launch)
        except BaseException:
            self._remove(container_id)
            raise

    def static_dir(self, container_id: str) -> Path:
        """The container's static directory (podman's `{{.StaticDir}}`): where the storage configuration puts it,
        else (another layout) as `inspect` says."""
        if self._containers_dir is not None:
            computed = self._containers_dir / container_id / "userdata"
            if computed.is_dir():
                return computed
        inspected = self.engine.run("inspect", "--format", "{{.StaticDir}}", container_id)
        if inspected.returncode != 0:
            raise RuntimeError(f"could not inspect container {container_id}: {_said(inspected)}")
        return Path(inspected.stdout.strip())

    def _start(self, container_id: str, launch: Launch) -> Execution:
        cwd = self.work_dir
        if self.dialect.init_in_static_dir:
            cwd = self.static_dir(container_id)
            # the runtime container is made here, so a command that is not there fails now, before RUNNING
            initialised = subprocess.run(
                self.engine.command("init", container_id),
                env=self.engine.env(),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=ENGINE_TIMEOUT_SECONDS,
                check=False,
            )
            if initialised.returncode != 0:
                raise StartError(f"CannotStartContainerError: {_said(initialised)}")
        process = subprocess.Popen(
            self.engine.command("start", "--attach", container_id),
            env=self.engine.env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # a Ctrl-C of `local up` reaches the agent, which stops the containers itself
        )
        if not self.dialect.init_in_static_dir:
            self._wait_until_started(container_id, process)
        return ContainerExecution(self.engine, self.dialect, container_id, process, launch.stop_timeout)

    def _wait_until_started(self, container_id: str, process: subprocess.Popen[bytes]) -> None:
        """Return once the container has started. Docker's `start --attach` returns at once, and with success,
        when the container cannot start (a command not in the image): the task must fail to start, not succeed."""
        deadline = time.monotonic() + ENGINE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            attached_ended = process.poll() is not None
            inspected = self.engine.run("inspect", "--format", "{{.State.StartedAt}}", container_id)
            if inspected.returncode == 0 and not inspected.stdout.strip().startswith("0001-01-01"):
                return
            if attached_ended:
                break
            time.sleep(START_POLL_SECONDS)
        if process.poll() is None:
            process.kill()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()
        started = self.engine.run("start", container_id)  # says why it cannot start
        raise StartError(f"CannotStartContainerError: {_daemon_said(started)}")

    def _create_args(self, task: Any, launch: Launch) -> list[str]:
        memory = f"{launch.memory_mib}m"
        args = [
            "create",
            "--pull",  # a missing image fails the create (ImageNotPresent): the agent pulls it in the pull window
            "never",
            "--name",
            self._name(task),
            "--label",
            self.label,
            "--label",
            f"{TASK_ARN_LABEL}={task.task_arn}",
            *(("--label", f"{STATE_DIR_LABEL}={self.state_dir}") if self.state_dir is not None else ()),
            "--memory",
            memory,
            "--memory-swap",
            memory,
            "--cpus",
            f"{launch.cpu_units / 1024:g}",
            "--pids-limit",
            str(TASK_PIDS_MAX),
            "--network",
            self.dialect.network,
            *platform_option(launch.architecture),
        ]
        for name, value in ecs_environment(launch, self.region).items():
            args += ["--env", f"{name}={value}"]
        if launch.init_process:
            args.append("--init")
        entry_point = launch.entry_point or []
        if entry_point:
            # the CLIs take one program here (podman would also parse a JSON array, docker would not): ECS's
            # entryPoint is that program, then its own arguments before the command's
            args += ["--entrypoint", entry_point[0]]
        return [*args, self.engine_image(launch.image), *entry_point[1:], *(launch.arguments or [])]

    @staticmethod
    def _name(task: Any) -> str:
        return f"ecs-task-{task.id}"

    def _remove(self, *containers: str) -> bool:
        if not containers:
            return True
        removed = self.engine.run(*self.dialect.remove, *containers, timeout=REMOVE_TIMEOUT_SECONDS)
        if removed.returncode != 0:
            self.on_log(f"could not remove containers {' '.join(containers)}: {_said(removed)}")
        return removed.returncode == 0

    def _labelled(self, label: str) -> list[str]:
        listed = self.engine.run("ps", "-a", "-q", "--no-trunc", "--filter", f"label={label}")
        if listed.returncode != 0:
            raise RuntimeError(f"could not list the containers labelled {label}: {_said(listed)}")
        return listed.stdout.split()

    def adopt(self, task: Any, launch: Launch) -> Adopted | None:
        """The task's container, running or exited, followed from now on by `logs --follow` and, once it exited,
        read again to its end (`container_logs`; its whole output from its start: the agent skips what was
        shipped). A container of it that never started (the agent stopped between creating and starting it:
        podman's `start --attach` starts the container a moment after the agent reported RUNNING) is removed and
        NotStarted raised; a second container of it is removed. None without a container."""
        containers = self._labelled(f"{TASK_ARN_LABEL}={task.task_arn}")
        if not containers:
            return None
        states = {container: _state(self.engine, container) for container in containers}
        started = [c for c in containers if engine_time(states[c].get("StartedAt")) is not None]
        chosen = next((c for c in started if states[c].get("Status") in _RUNNING_STATES | _EXITED_STATES), None)
        others = [c for c in containers if c != chosen]
        if others:
            self._remove(*others)
        if chosen is None:
            if started:
                return None  # it ran and is going away (being removed): nothing to follow
            raise NotStarted(f"container {containers[0][:12]} of {task.task_arn} was created, never started")
        state = states[chosen]
        process = subprocess.Popen(
            # `logs --follow`, then what it missed (see container_logs)
            [sys.executable, "-m", "taskrunner_local.container_logs", self.engine.executable, chosen],
            env=self.engine.env(),
            cwd=self.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )
        execution = ContainerExecution(self.engine, self.dialect, chosen, process, launch.stop_timeout)
        exited = state.get("Status") in _EXITED_STATES
        return Adopted(
            execution,
            started_at=engine_time(state.get("StartedAt")),
            finished_at=engine_time(state.get("FinishedAt")) if exited else None,
        )

    def kill_leftovers(self, task: Any) -> bool:
        return self._remove(*self._labelled(f"{TASK_ARN_LABEL}={task.task_arn}"))

    def sweep(self, stopped: list[Any], live: set[str]) -> list[str]:
        """The credential folders of pulls a previous agent did not finish (no pull is under way at an agent's
        start). The containers of stopped tasks are strays (`strays`)."""
        removed = []
        for entry in self.work_dir.glob(f"{_PULL_DIR_PREFIX}*"):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(f"directory {entry.name}")
        return removed

    def strays(self) -> list[Stray]:
        """Every container of this stack, with the ECS task it names (the agent leaves out those it runs)."""
        listed = self.engine.run(
            "ps", "-a", "--no-trunc", "--filter", f"label={self.label}", "--format", self.dialect.ps_task_format
        )
        if listed.returncode != 0:
            raise RuntimeError(f"could not list the containers labelled {self.label}: {_said(listed)}")
        strays = []
        for line in listed.stdout.splitlines():
            container_id, task_arn, state_dir = [*line.strip().split("|", 2), "", ""][:3]
            if container_id and self._ours_or_abandoned(state_dir):
                strays.append(Stray(f"container {container_id[:12]}", container_id, task_arn.strip()))
        return strays

    def _ours_or_abandoned(self, state_dir: str) -> bool:
        """Whether a container of this stack's name that names `state_dir` is this launcher's to sweep: it is this
        stack's (or names no folder), or the folder it names is gone. A container of another state folder that is
        still there belongs to the stack that runs (or will run again) on it, which re-adopts it."""
        if not state_dir or self.state_dir is None or Path(state_dir) == self.state_dir:
            return True
        return not (Path(state_dir) / DATABASE).exists()

    def remove_stray(self, stray: Stray) -> bool:
        return self._remove(stray.key)

    def shutdown(self) -> None:
        """Remove every container of this stack, whatever its task's thread managed to do."""
        self._remove(*self._labelled(self.label))


def _state(engine: Engine, container_id: str) -> dict[str, Any]:
    """The container's `State` as the engine records it (Status, ExitCode, OOMKilled, StartedAt, FinishedAt)."""
    inspected = engine.run("inspect", "--format", "{{json .State}}", container_id, timeout=ENGINE_TIMEOUT_SECONDS)
    if inspected.returncode != 0:
        raise RuntimeError(f"could not inspect container {container_id}: {_said(inspected)}")
    state = json.loads(inspected.stdout)
    if not isinstance(state, dict):
        raise RuntimeError(f"could not inspect container {container_id}: {inspected.stdout!r}")
    return state


def engine_time(value: object) -> datetime | None:
    """A time of the engine's record (RFC 3339, nanoseconds; `0001-01-01T00:00:00Z` for never), None for never."""
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _containers_dir(engine: Engine) -> Path | None:
    """Where podman keeps its containers' directories (`<graphroot>/<driver>-containers`), from the storage
    configuration the engine runs with; None when it cannot tell."""
    conf = engine.extra_env.get("CONTAINERS_STORAGE_CONF")
    if not conf:
        return None
    try:
        storage = tomllib.loads(Path(conf).read_text()).get("storage", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    graphroot, driver = storage.get("graphroot"), storage.get("driver")
    if not (isinstance(graphroot, str) and isinstance(driver, str) and graphroot and driver):
        return None
    return Path(graphroot) / f"{driver}-containers"
