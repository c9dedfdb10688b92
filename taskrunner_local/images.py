"""The images the local stack runs tasks in, built offline from Debian packages (no registry is reachable).

`python -m taskrunner_local.images` (what `make images` runs) builds each image that is not yet in the
engine's store: a busybox image from `busybox-static`, and a Python 3.13 image from a Debian trixie minbase
root file system made with debootstrap. The root file systems are kept as tarballs under
`.taskrunner/engine/cache/`, so a wiped store re-imports in seconds.

`ensure_lambda_base` provides the image `sam local` runs Python 3.13 functions in,
`public.ecr.aws/lambda/python:3.13-x86_64`: pulled where public.ecr.aws answers, else built offline the same way,
from the Python 3.13 root file system plus the Lambda runtime interface client (`awslambdaric`, from PyPI).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taskrunner_local.engine import Engine, EnginePaths

BUSYBOX_IMAGE = "localhost/taskrunner/busybox:latest"
PYTHON_IMAGE = "localhost/taskrunner/python:3.13"

#: debootstrap's suite for Python 3.13 (the host's bookworm has 3.11)
PYTHON_SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
}


@dataclass(frozen=True)
class ImageRecipe:
    ref: str
    #: the root file system's tarball in the cache
    tarball: str
    cmd: str
    path: str
    #: fills the directory it is given with the image's root file system
    make_rootfs: Callable[[Path], None]
    #: the commands make_rootfs runs
    tools: tuple[str, ...]
    #: more `podman import --change` instructions (ENTRYPOINT, ENV, WORKDIR, LABEL)
    changes: tuple[str, ...] = ()


def debian_mirror(sources: Path = APT_SOURCES, sources_dir: Path = APT_SOURCES_DIR) -> str:
    """The Debian mirror apt uses (the first archive that is not the security one), from apt's sources."""
    uris = _list_uris(sources) if sources.is_file() else []
    if sources_dir.is_dir():
        for file in sorted(sources_dir.glob("*.sources")):
            for match in re.finditer(r"^URIs:\s*(.+)$", file.read_text(), re.MULTILINE):
                uris.extend(match.group(1).split())
        for file in sorted(sources_dir.glob("*.list")):
            uris.extend(_list_uris(file))
    debian = [uri for uri in uris if "/debian" in uri and "security" not in uri]
    return debian[0].rstrip("/") if debian else DEFAULT_MIRROR


def _list_uris(file: Path) -> list[str]:
    """The archives of a one-line-style apt sources file."""
    uris: list[str] = []
    for line in file.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["deb"]:
            uris.extend(word for word in words[1:] if "://" in word)
    return uris


def busybox_rootfs(root: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for folder in ("etc", "tmp", "root", "proc", "sys", "dev"):
        (root / folder).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for name, text in _ETC_FILES.items():
        (root / name).write_text(text)


def python_rootfs(root: Path) -> None:
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3", PYTHON_SUITE, str(root), debian_mirror()],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != "lock":
                entry.unlink()


PYTHON_RECIPE = ImageRecipe(
    PYTHON_IMAGE, f"python-3.13-{PYTHON_SUITE}.tar", '["python3"]', STANDARD_PATH, python_rootfs, ("debootstrap",)
)
RECIPES = (
    ImageRecipe(BUSYBOX_IMAGE, "busybox.tar", '["/bin/sh"]', "/usr/bin:/bin", busybox_rootfs, ("busybox",)),
    PYTHON_RECIPE,
)


def _pack(root: Path, tarball: Path) -> None:
    partial = tarball.with_suffix(".partial")
    # device nodes, /proc and /sys are the runtime's to provide
    excluded = ("--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*")
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", *excluded, "-cf", str(partial), "."], check=True)
    partial.rename(tarball)


def build_rootfs(recipe: ImageRecipe, paths: EnginePaths) -> bool:
    """The recipe's root file system tarball in the cache, built when missing; False when a tool is missing."""
    tarball = paths.cache / recipe.tarball
    if tarball.is_file():
        return True
    missing = [
        tool
        for tool in recipe.tools
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None
    ]
    if missing:
        print(f"images: skipped {recipe.ref}: {', '.join(missing)} missing (`make engine` installs it)", flush=True)
        return False
    paths.cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=paths.home) as work:
        root = Path(work) / "rootfs"
        root.mkdir()
        recipe.make_rootfs(root)
        _pack(root, tarball)
    print(f"images: {recipe.ref} root file system built in {time.monotonic() - started:.1f} s", flush=True)
    return True


def build(engine: Engine, recipe: ImageRecipe, paths: EnginePaths) -> None:
    if not build_rootfs(recipe, paths):
        return
    tarball = paths.cache / recipe.tarball
    started = time.monotonic()
    changes = (f"CMD {recipe.cmd}", f"ENV PATH={recipe.path}", *recipe.changes)
    imported = engine.run(
        "import",
        *(argument for change in changes for argument in ("--change", change)),
        str(tarball),
        recipe.ref,
        timeout=600.0,
    )
    if imported.returncode != 0:
        raise RuntimeError(f"importing {recipe.ref} failed: {imported.stderr.strip()}")
    print(f"images: {recipe.ref} imported in {time.monotonic() - started:.1f} s", flush=True)


#: the image `sam local` runs python3.13 functions in on x86_64 (SAM CLI looks it up by this name), and the
#: registry it comes from
LAMBDA_BASE_IMAGE = "public.ecr.aws/lambda/python:3.13-x86_64"
LAMBDA_REGISTRY = "public.ecr.aws"
#: the Lambda runtime interface client the offline base image runs functions with (a cp313 wheel from PyPI)
AWSLAMBDARIC = "awslambdaric==4.2.2"
#: the label that marks the offline stand-in, and its value
BUILT_LABEL = "io.taskrunner.lambda-base"
BUILT_OFFLINE = "offline: Debian trixie python3.13 + awslambdaric"
LAMBDA_PATH = "/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin"
#: what the Lambda runtime interface emulator (SAM's `/var/rapid/aws-lambda-rie`) starts: the runtime client, with
#: the function's code, the layers' `python/` and then the client itself on the path, as in Lambda's own image
LAMBDA_BOOTSTRAP = """\
#!/bin/sh
export PYTHONPATH="${LAMBDA_TASK_ROOT:-/var/task}:/opt/python/lib/python3.13/site-packages:/opt/python:\
${LAMBDA_RUNTIME_DIR:-/var/runtime}"
exec /usr/bin/python3.13 -m awslambdaric "$_HANDLER"
"""
#: the image's own entrypoint (SAM replaces it with the emulator): the emulator when one is there, else the runtime
LAMBDA_ENTRYPOINT = """\
#!/bin/sh
if [ $# -gt 0 ]; then export _HANDLER="$1"; fi
if [ -x /usr/local/bin/aws-lambda-rie ] && [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  exec /usr/local/bin/aws-lambda-rie /var/runtime/bootstrap
fi
exec /var/runtime/bootstrap
"""
LAMBDA_CHANGES = (
    'ENTRYPOINT ["/lambda-entrypoint.sh"]',
    "WORKDIR /var/task",
    "ENV LAMBDA_TASK_ROOT=/var/task",
    "ENV LAMBDA_RUNTIME_DIR=/var/runtime",
    "ENV LANG=C.UTF-8",
    "ENV TZ=:/etc/localtime",
    f"LABEL {BUILT_LABEL}={BUILT_OFFLINE.replace(' ', '_')}",
)


def _lambda_recipe_digest() -> str:
    """What the offline Lambda base image is made of, hashed: a change to it names another cached tarball."""
    parts = (AWSLAMBDARIC, LAMBDA_BOOTSTRAP, LAMBDA_ENTRYPOINT, LAMBDA_PATH, *LAMBDA_CHANGES)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def lambda_rootfs(root: Path, paths: EnginePaths) -> None:
    """The Python 3.13 root file system (from its cached tarball, built first when missing) with the Lambda
    runtime: `awslambdaric` in /var/runtime, its bootstrap and the image's entrypoint."""
    python = paths.cache / PYTHON_RECIPE.tarball
    if not python.is_file():
        build_rootfs(PYTHON_RECIPE, paths)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(python)], check=True)
    runtime = root / "var" / "runtime"
    wheels = [
        AWSLAMBDARIC,
        "--platform=manylinux2014_x86_64",
        "--implementation=cp",
        "--python-version=3.13",
        "--only-binary=:all:",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "--target",
            str(runtime),
            *wheels,
            AWSLAMBDARIC,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for folder in ("var/task", "opt", "tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for path, text in ((runtime / "bootstrap", LAMBDA_BOOTSTRAP), (root / "lambda-entrypoint.sh", LAMBDA_ENTRYPOINT)):
        path.write_text(text)
        path.chmod(0o755)


def lambda_base_recipe(paths: EnginePaths) -> ImageRecipe:
    return ImageRecipe(
        LAMBDA_BASE_IMAGE,
        f"lambda-python-3.13-x86_64-{_lambda_recipe_digest()}.tar",
        "[]",
        LAMBDA_PATH,
        lambda root: lambda_rootfs(root, paths),
        PYTHON_RECIPE.tools,
        LAMBDA_CHANGES,
    )


def registry_reachable(host: str = LAMBDA_REGISTRY, timeout: float = 5.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def lambda_base_origin(engine: Engine) -> str | None:
    """How the Lambda base image in the store got there: `pulled`, `built offline`, or None when it is missing."""
    done = engine.run(
        "image", "inspect", "--format", f'{{{{index .Config.Labels "{BUILT_LABEL}"}}}}', LAMBDA_BASE_IMAGE
    )
    if done.returncode != 0:
        return None
    return "built offline" if done.stdout.strip() not in ("", "<no value>") else "pulled"


def ensure_lambda_base(engine: Engine, paths: EnginePaths | None = None) -> str:
    """The Lambda base image in the store, pulled from public.ecr.aws where it answers, else built offline;
    returns a line that says which."""
    paths = paths or EnginePaths()
    origin = lambda_base_origin(engine)
    if origin is not None:
        return f"{LAMBDA_BASE_IMAGE} is in the image store ({origin})"
    started = time.monotonic()
    if registry_reachable():
        pulled = engine.run("pull", "--quiet", LAMBDA_BASE_IMAGE, timeout=900.0)
        if pulled.returncode == 0:
            return f"{LAMBDA_BASE_IMAGE} pulled from {LAMBDA_REGISTRY} in {time.monotonic() - started:.1f} s"
        why = (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]
    else:
        why = f"{LAMBDA_REGISTRY} is not reachable"
    build(engine, lambda_base_recipe(paths), paths)
    if lambda_base_origin(engine) is None:
        raise RuntimeError(f"{LAMBDA_BASE_IMAGE} could not be pulled ({why}) nor built offline (see above)")
    return f"{LAMBDA_BASE_IMAGE} built offline ({why}) in {time.monotonic() - started:.1f} s: {BUILT_OFFLINE}"


def build_missing(engine: Engine, paths: EnginePaths | None = None) -> None:
    paths = paths or EnginePaths()
    for recipe in RECIPES:
        if not engine.image_exists(recipe.ref):
            build(engine, recipe, paths)


def main() -> int:
    engine = Engine.detect()
    if engine is None:
        print(f"images: skipped, no container engine: {Engine.why_not()}", flush=True)
        return 0
    build_missing(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
