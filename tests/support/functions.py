"""Load a Lambda function's `app.py` from functions/<name>/ as its own module."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from unittest import mock

from tests.support.stack import REGION, ROOT, Stack


def function_environment() -> dict[str, str]:
    """What Lambda and template.yaml give a function, for the stack of the integration tests."""
    return {"AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, **Stack().environment()}


def cold_start(name: str, environment: Mapping[str, str], module_name: str, *, clear: bool = False) -> ModuleType:
    """Import functions/<name>/app.py as `module_name`, as Lambda's cold start does: a handler module checks its
    environment at import, and here the import sees `environment` (only that, with `clear`). The settings read
    during the import are forgotten afterwards."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with mock.patch.dict(os.environ, environment, clear=clear):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        from taskrunner import wiring

        wiring.reset()
    return module


def load_function(name: str) -> ModuleType:
    """functions/<name>/app.py, imported once, with the integration tests' stack in its environment."""
    module_name = f"functions_{name}_app"
    if module_name in sys.modules:
        return sys.modules[module_name]
    return cold_start(name, function_environment(), module_name)
