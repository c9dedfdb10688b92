"""The images the local stack runs tasks in, built offline from Debian packages (no registry is reachable).

`python -m taskrunner_local.images` (what `make images` runs) builds each image that is not yet in the
engine's store: a busybox image from `busybox-static`, and a Python 3.13 image from a Debian trixie minbase
root file system made with debootstrap. The root file systems are kept as tarballs under
`.taskrunner/engine/cache/`, so a wiped store re-imports in seconds.
"""

from __future__ import annotations

import os
import re
import shutil
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


RECIPES = (
    ImageRecipe(BUSYBOX_IMAGE, "busybox.tar", '["/bin/sh"]', "/usr/bin:/bin", busybox_rootfs, ("busybox",)),
    ImageRecipe(
        PYTHON_IMAGE, f"python-3.13-{PYTHON_SUITE}.tar", '["python3"]', STANDARD_PATH, python_rootfs, ("debootstrap",)
    ),
)


def _pack(root: Path, tarball: Path) -> None:
    partial = tarball.with_suffix(".partial")
    # device nodes, /proc and /sys are the runtime's to provide
    excluded = ("--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*")
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", *excluded, "-cf", str(partial), "."], check=True)
    partial.rename(tarball)


def build(engine: Engine, recipe: ImageRecipe, paths: EnginePaths) -> None:
    tarball = paths.cache / recipe.tarball
    if not tarball.is_file():
        missing = [
            tool
            for tool in recipe.tools
            if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None
        ]
        if missing:
            print(f"images: skipped {recipe.ref}: {', '.join(missing)} missing (`make engine` installs it)", flush=True)
            return
        paths.cache.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=paths.home) as work:
            root = Path(work) / "rootfs"
            root.mkdir()
            recipe.make_rootfs(root)
            _pack(root, tarball)
        print(f"images: {recipe.ref} root file system built in {time.monotonic() - started:.1f} s", flush=True)
    started = time.monotonic()
    imported = engine.run(
        "import",
        "--change",
        f"CMD {recipe.cmd}",
        "--change",
        f"ENV PATH={recipe.path}",
        str(tarball),
        recipe.ref,
        timeout=600.0,
    )
    if imported.returncode != 0:
        raise RuntimeError(f"importing {recipe.ref} failed: {imported.stderr.strip()}")
    print(f"images: {recipe.ref} imported in {time.monotonic() - started:.1f} s", flush=True)


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
