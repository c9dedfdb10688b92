"""Load a Lambda function's `app.py` from functions/<name>/ as its own module."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.stack import ROOT


def load_function(name: str) -> ModuleType:
    module_name = f"functions_{name}_app"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
