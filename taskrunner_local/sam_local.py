"""The real SAM CLI's `sam local` (invoke, start-lambda, start-api) on this machine, against the local stack.

SAM CLI runs each function in a container of the Lambda base image through a Docker API. Here that API is Podman's
(`podman system service`, with the project's engine configuration and image store), and the base image,
`public.ecr.aws/lambda/python:3.13-x86_64`, is pulled where public.ecr.aws answers, else built offline
(`taskrunner_local.images.ensure_lambda_base`). `python -m taskrunner_local.sam_local prepare` (what
`make sam-local` runs) sets up all three, plus one `sam build` for this host's architecture, redone only when the
template, the functions or the layer change.

Two things stand between `sam local` and the local stack, and this module bridges both:

- the functions must call the stack's AWS endpoint. SAM passes a function only the environment variables its
  template declares (`--env-vars` overrides those, and no others), so the build's template for local use,
  `template.local.json`, declares `AWS_ENDPOINT_URL` (empty: AWS's own endpoints) beside the template's own, and
  `environments` writes an `--env-vars` file with the deployed functions' environment and the endpoint;
- SAM's containers run on the engine's default bridge network (SAM CLI 1.170 treats `--docker-network host` as
  "no extra network": it never sets the host network mode), where the host's 127.0.0.1 is out of reach, and the
  stack listens on 127.0.0.1 only. `BridgeRelay` listens on the bridge's side of the host and forwards to the
  stack's endpoint, accepting connections from the bridge's subnet only.

`python -m taskrunner_local.sam_local route --aws-endpoint http://127.0.0.1:4566` runs the relay and writes the
`--env-vars` file until Ctrl-C, for `sam local` commands run by hand next to `make run`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrunner_local.config import ROOT
from taskrunner_local.engine import ENGINE_DIR, ENGINE_VARIABLE, Engine

SAM = ROOT / ".tools" / "sam" / "bin" / "sam"
TEMPLATE = ROOT / "template.yaml"
#: what `sam build` reads: a change to any of them is a new build
BUILD_INPUTS = (TEMPLATE, ROOT / "functions", ROOT / "layers", ROOT / "requirements-sam.txt")
#: where the local builds live, one folder per architecture (`.aws-sam/` is git-ignored)
BUILDS = ROOT / ".aws-sam"
LOCAL_TEMPLATE = "template.local.json"
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"
#: the Docker API socket `prepare` starts, and its service's working directory (pid file and log)
SERVICE_DIR = ENGINE_DIR / "docker-api"
SOCKET_NAME = "docker.sock"
PID_FILE = "service.pid"
#: a unix socket's path must fit in 108 bytes
MAX_SOCKET_PATH = 100
SERVICE_START_SECONDS = 30.0
#: the architecture names of `uname -m`, as Lambda names them
LAMBDA_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
#: the binfmt_misc handler that would run the other architecture's binaries
EMULATORS = {"arm64": "qemu-aarch64", "x86_64": "qemu-x86_64"}
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
#: the credentials `sam local` hands the functions (the local stack accepts any)
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "SAM_CLI_TELEMETRY": "0",
}


class SamLocalUnavailable(RuntimeError):
    """What `sam local` lacks on this machine, said so that the reader knows what to do."""


# ------------------------------------------------------------------------------------------------ architecture


def host_architecture() -> str:
    """This machine's architecture as Lambda names it (`x86_64` or `arm64`)."""
    machine = platform.machine().lower()
    return LAMBDA_ARCHITECTURES.get(machine, machine)


def can_run(architecture: str, binfmt_misc: Path = BINFMT_MISC) -> bool:
    """Whether this host runs `architecture`'s binaries: its own, or another one through a binfmt_misc handler."""
    if architecture == host_architecture():
        return True
    handler = binfmt_misc / EMULATORS.get(architecture, f"qemu-{architecture}")
    return handler.is_file() and handler.read_text().startswith("enabled")


def check_architecture(architecture: str, binfmt_misc: Path = BINFMT_MISC) -> None:
    """Refuse an architecture `sam local` cannot run here, saying what would."""
    if architecture not in EMULATORS:
        raise SamLocalUnavailable(f"architecture {architecture!r}: the template allows arm64 or x86_64")
    if not can_run(architecture, binfmt_misc):
        host = host_architecture()
        raise SamLocalUnavailable(
            f"{architecture} functions need emulation and this {host} host has none (no binfmt_misc handler "
            f"{binfmt_misc / EMULATORS[architecture]}; the qemu-user-static package installs one), and an "
            f"{architecture} Lambda base image: run them as {host} with --parameter-overrides Architecture={host}"
        )


# ------------------------------------------------------------------------------------------------ sam build


@dataclass(frozen=True)
class SamBuild:
    """A `sam build` of the template for one architecture, with its template for local use."""

    architecture: str
    home: Path

    @property
    def build_dir(self) -> Path:
        return self.home / "build"

    @property
    def template(self) -> Path:
        """The built template with `AWS_ENDPOINT_URL` declared, for `sam local -t`."""
        return self.build_dir / LOCAL_TEMPLATE

    @property
    def stamp(self) -> Path:
        return self.home / "inputs.sha256"

    @property
    def parameter_overrides(self) -> list[str]:
        return ["--parameter-overrides", f"Architecture={self.architecture}"]

    def up_to_date(self, digest: str) -> bool:
        return self.template.is_file() and self.stamp.is_file() and self.stamp.read_text().strip() == digest


def local_build(architecture: str, builds: Path = BUILDS) -> SamBuild:
    return SamBuild(architecture, builds / f"local-{architecture}")


def inputs_digest(architecture: str, inputs: Sequence[Path] = BUILD_INPUTS) -> str:
    """A hash of every file `sam build` reads (caches and compiled files aside) and of the architecture."""
    digest = hashlib.sha256(f"architecture={architecture}\0local-template=1\0".encode())
    for top in inputs:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def python313_dir() -> Path | None:
    """The folder of the Python 3.13 `sam build` needs (the pyenv one the Makefile names, else one on the PATH)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    pyenv = shutil.which("pyenv")
    if pyenv:
        found = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
        pyenv_root = Path(found) if found else pyenv_root
    candidate = pyenv_root / "versions" / "3.13.0" / "bin"
    if (candidate / "python3.13").exists():
        return candidate
    on_path = shutil.which("python3.13")
    return Path(on_path).parent if on_path else None


def sam_build(architecture: str, builds: Path = BUILDS, *, log: Any = print) -> SamBuild:
    """`sam build` for `architecture` unless the last one had the same inputs; then the template for local use."""
    build = local_build(architecture, builds)
    digest = inputs_digest(architecture)
    if build.up_to_date(digest):
        log(f"sam build: {build.build_dir.relative_to(ROOT)} is up to date (same template, functions and layer)")
        return build
    if not SAM.exists():
        raise SamLocalUnavailable(f"SAM CLI is not installed at {SAM.relative_to(ROOT)}: run `make sam-cli`")
    python = python313_dir()
    if python is None:
        raise SamLocalUnavailable("`sam build` needs Python 3.13 (pyenv's 3.13.0, or python3.13 on the PATH)")
    started = time.monotonic()
    build.stamp.unlink(missing_ok=True)
    command = [
        str(SAM),
        "build",
        "--template-file",
        str(TEMPLATE),
        *build.parameter_overrides,
        "--build-dir",
        str(build.build_dir),
        "--cache-dir",
        str(build.home / "cache"),
        "--cached",
    ]
    env = {**os.environ, "PATH": f"{python}{os.pathsep}{os.environ.get('PATH', '')}", "SAM_CLI_TELEMETRY": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sam build failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    write_local_template(build)
    build.stamp.write_text(f"{digest}\n")
    log(f"sam build: {architecture} into {build.build_dir.relative_to(ROOT)} in {time.monotonic() - started:.1f} s")
    return build


def write_local_template(build: SamBuild) -> None:
    """The built template, with `AWS_ENDPOINT_URL` declared for every function (empty: AWS's endpoints), so that
    `--env-vars` can point the functions at the local stack; JSON, which SAM reads as it reads YAML."""
    from samtranslator.yaml_helper import yaml_parse

    template: dict[str, Any] = yaml_parse((build.build_dir / "template.yaml").read_text())
    function_globals = template.setdefault("Globals", {}).setdefault("Function", {})
    variables = function_globals.setdefault("Environment", {}).setdefault("Variables", {})
    variables[ENDPOINT_VARIABLE] = ""
    build.template.write_text(json.dumps(template, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ Docker API


def default_socket(service_dir: Path = SERVICE_DIR) -> Path:
    path = service_dir / SOCKET_NAME
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return Path("/tmp") / f"taskrunner-{hashlib.sha256(str(service_dir).encode()).hexdigest()[:12]}" / SOCKET_NAME


def docker_api_answers(socket_path: Path, timeout: float = 2.0) -> bool:
    """Whether a Docker API answers `GET /_ping` on the unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(socket_path))
            client.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = client.recv(64)
    except OSError:
        return False
    return answer.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


@dataclass
class DockerApi:
    """`podman system service` on a unix socket: the Docker API SAM CLI talks to (its `DOCKER_HOST`), with the
    project's engine configuration and image store. `start` reuses one that already answers there."""

    podman: Engine
    socket_path: Path = field(default_factory=default_socket)
    #: the service's working directory (podman 4.3's conmon writes its `oom` markers there), log and pid file
    workdir: Path = SERVICE_DIR
    process: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = SERVICE_START_SECONDS) -> DockerApi:
        if docker_api_answers(self.socket_path):
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        with (self.workdir / "service.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.podman.command("system", "service", "--time=0", self.docker_host),
                env=self.podman.env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # it outlives `make sam-local`, and a Ctrl-C of the caller
            )
        (self.workdir / PID_FILE).write_text(f"{self.process.pid}\n")
        deadline = time.monotonic() + timeout
        while not docker_api_answers(self.socket_path):
            if self.process.poll() is not None:
                tail = (self.workdir / "service.log").read_text()[-2000:]
                raise RuntimeError(f"podman system service exited with {self.process.returncode}: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"podman system service did not answer on {self.socket_path} within {timeout} s")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the service this object started, else the one its pid file names; whether one was stopped."""
        pid_file = self.workdir / PID_FILE
        pid = self.process.pid if self.process is not None else _read_pid(pid_file)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=timeout)
        pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        return True


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a child that exited stays a zombie until it is reaped
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


# ------------------------------------------------------------------------------------------------ network


@dataclass(frozen=True)
class Bridge:
    """The engine's default bridge network, where SAM's containers run: its subnet, and the host's address on it."""

    subnet: str
    gateway: str


def default_bridge(engine: Engine) -> Bridge:
    network = "podman" if engine.name == "podman" else "bridge"
    fmt = (
        "{{range .Subnets}}{{.Subnet}} {{.Gateway}}\n{{end}}"
        if engine.name == "podman"
        else "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}\n{{end}}"
    )
    done = engine.run("network", "inspect", "--format", fmt, network)
    for line in done.stdout.splitlines():
        subnet, _, gateway = line.partition(" ")
        if gateway and ipaddress.ip_network(subnet, strict=False).version == 4:
            return Bridge(subnet, gateway)
    raise RuntimeError(f"no IPv4 subnet on {engine.name}'s network {network!r}: {done.stderr.strip()}")


class BridgeRelay:
    """Forwards TCP connections from the bridge's subnet to a service on the host's 127.0.0.1.

    It listens on every interface (the bridge's own comes and goes with its containers) and closes at once any
    connection from outside `allowed`, so it reaches no further than the bridge. A connection from `gateway`, the
    host's own address on the bridge, is refused too: that is where a connection made by the host itself comes
    from, such as one a slirp4netns task container makes (the agent's tasks must not reach the stack)."""

    def __init__(self, target: tuple[str, int], allowed: str, port: int = 0, gateway: str | None = None) -> None:
        self.target = target
        self.allowed = ipaddress.ip_network(allowed, strict=False)
        self.gateway = ipaddress.ip_address(gateway) if gateway else None
        self._listener = socket.create_server(("0.0.0.0", port), reuse_port=False)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="sam-local-relay", daemon=True)
        self.refused = 0

    def __enter__(self) -> BridgeRelay:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept(), which close() alone does not
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, (peer, _) = self._listener.accept()
            except OSError:
                return
            address = ipaddress.ip_address(peer)
            if address not in self.allowed or address == self.gateway:
                self.refused += 1
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with client, upstream, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=1.0):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return


# ------------------------------------------------------------------------------------------------ environment


def stack_functions(aws_endpoint: str, stack_name: str) -> dict[str, str]:
    """The stack's functions: logical id to deployed function name."""
    import boto3

    cloudformation = boto3.client("cloudformation", endpoint_url=aws_endpoint, **_boto_credentials())
    resources = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    return {
        resource["LogicalResourceId"]: resource["PhysicalResourceId"]
        for resource in resources
        if resource.get("ResourceType") == "AWS::Lambda::Function"
    }


def environments(aws_endpoint: str, stack_name: str, function_endpoint: str) -> dict[str, dict[str, str]]:
    """An `--env-vars` document: each function's deployed environment, with the endpoint its container reaches
    the stack at."""
    import boto3

    lambda_client = boto3.client("lambda", endpoint_url=aws_endpoint, **_boto_credentials())
    result: dict[str, dict[str, str]] = {}
    for logical_id, name in sorted(stack_functions(aws_endpoint, stack_name).items()):
        configuration = lambda_client.get_function_configuration(FunctionName=name)
        variables = dict(configuration.get("Environment", {}).get("Variables", {}))
        result[logical_id] = {**variables, ENDPOINT_VARIABLE: function_endpoint}
    return result


def _boto_credentials() -> dict[str, str]:
    return {
        "region_name": LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
        "aws_access_key_id": LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@contextlib.contextmanager
def route_to_stack(
    engine: Engine, aws_endpoint: str, stack_name: str, env_file: Path, port: int = 0
) -> Iterator[BridgeRelay]:
    """For the duration: a relay from the bridge to the stack's endpoint, and `env_file` (an `--env-vars` file)
    that points every function at it."""
    host, _, aws_port = aws_endpoint.removeprefix("http://").rstrip("/").partition(":")
    bridge = default_bridge(engine)
    with BridgeRelay((host, int(aws_port)), bridge.subnet, port, gateway=bridge.gateway) as relay:
        function_endpoint = f"http://{bridge.gateway}:{relay.port}"
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text(json.dumps(environments(aws_endpoint, stack_name, function_endpoint), indent=2) + "\n")
        yield relay


# ------------------------------------------------------------------------------------------------ sam local


def sam_env(docker_host: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run `sam local` with: the Docker API, local credentials, no telemetry."""
    return {**(os.environ if base is None else base), **LOCAL_CREDENTIALS, "DOCKER_HOST": docker_host}


def local_args(build: SamBuild, env_file: Path) -> list[str]:
    """What every `sam local` command here takes: the template for local use, its architecture, the functions'
    environment, and no registry pull (the base image is in the store)."""
    return [
        "--template-file",
        str(build.template),
        *build.parameter_overrides,
        "--env-vars",
        str(env_file),
        "--skip-pull-image",
    ]


def invoke_command(build: SamBuild, env_file: Path, function: str, event: Path) -> list[str]:
    return [str(SAM), "local", "invoke", function, "--event", str(event), *local_args(build, env_file)]


def podman_engine() -> Engine:
    engine = Engine.detect(environ={**os.environ, ENGINE_VARIABLE: "podman"})
    if engine is None:
        why = Engine.why_not(environ={**os.environ, ENGINE_VARIABLE: "podman"})
        raise SamLocalUnavailable(f"sam local needs podman's Docker API and podman does not work: {why}")
    return engine


def prepare(architecture: str, *, service: bool = True) -> tuple[DockerApi, SamBuild]:
    """What `make sam-local` does: the Docker API socket (unless `service` is false), the Lambda base image, the
    build."""
    from taskrunner_local.images import ensure_lambda_base

    check_architecture(architecture)
    engine = podman_engine()
    started = time.monotonic()
    api = DockerApi(engine)
    if service:
        api.start()
        said = "started" if api.process is not None else "already running"
        print(f"sam-local: Docker API {said} at {api.docker_host} ({time.monotonic() - started:.1f} s)", flush=True)
    print(f"sam-local: {ensure_lambda_base(engine)}", flush=True)
    build = sam_build(architecture, log=lambda line: print(f"sam-local: {line}", flush=True))
    return api, build


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def usage(api: DockerApi, build: SamBuild, env_file: Path) -> str:
    args = " ".join(local_args(build, env_file)).replace(str(ROOT) + "/", "")
    return f"""
sam local is ready. With the stack up (`make run`) and its route open in another terminal:
  .venv/bin/python -m taskrunner_local.sam_local route      # env vars in {_relative(env_file)}, Ctrl-C ends
then:
  export DOCKER_HOST={api.docker_host}
  {_relative(SAM)} local invoke ApiFunction -e events/api/post_task.json {args}
  {_relative(SAM)} local start-api --port 3001 {args}
  {_relative(SAM)} local start-lambda --port 3002 {args}
`python -m taskrunner_local.sam_local stop` stops the Docker API service.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskrunner_local.sam_local", description=__doc__.split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    prepare_parser = actions.add_parser("prepare", help="Docker API socket, Lambda base image, sam build")
    route_parser = actions.add_parser("route", help="relay from SAM's containers to the stack, and --env-vars file")
    prepare_parser.add_argument(
        "--no-service", action="store_true", help="only the image and the build (the tests start their own service)"
    )
    for sub in (prepare_parser, route_parser):
        sub.add_argument("--architecture", default=host_architecture(), help="default: this host's")
    route_parser.add_argument("--aws-endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    route_parser.add_argument("--stack-name", default=os.environ.get("TASKRUNNER_STACK_NAME", "taskrunner"))
    actions.add_parser("stop", help="stop the Docker API service `prepare` started")
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            stopped = DockerApi(podman_engine()).stop()
            print("sam-local: Docker API stopped" if stopped else "sam-local: no Docker API service was running")
            return 0
        if args.action == "prepare":
            api, build = prepare(args.architecture, service=not args.no_service)
            if not args.no_service:
                print(usage(api, build, build.home / "env.json"), flush=True)
            return 0
        build = local_build(args.architecture)
        env_file = build.home / "env.json"
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        with route_to_stack(podman_engine(), args.aws_endpoint, args.stack_name, env_file) as relay:
            print(
                f"sam-local: functions reach {args.aws_endpoint} through port {relay.port} on the bridge; --env-vars "
                f"{_relative(env_file)} (Ctrl-C ends)",
                flush=True,
            )
            stopping.wait()
        return 0
    except SamLocalUnavailable as error:
        if args.action == "prepare" and args.no_service:  # as `make images` does: the tests say what is missing
            print(f"sam-local: skipped: {error}", flush=True)
            return 0
        print(f"sam-local: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
