"""The container engine for tests: found, or a skip on a developer machine without one (a failure in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from taskrunner_local.engine import Engine


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
