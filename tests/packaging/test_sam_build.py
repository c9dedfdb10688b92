"""`sam build` produces functions that import and run with nothing but their own code and the layer.

The build is for x86_64 (this machine's architecture, so the layer's compiled wheels load here). Each function runs
in a fresh python3.13 started with `-I -S` (isolated, no site-packages) whose sys.path holds only the function's
build directory and the layer's `python/` directory in front of the standard library, as in the Lambda runtime:
every third-party import must come from the layer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

# One build per session: with `pytest -n N --dist loadgroup` every test of this module runs on the same worker.
pytestmark = [pytest.mark.packaging, pytest.mark.xdist_group("sam-build")]

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".tools" / "sam" / "bin" / "sam"
EVENTS = ROOT / "events"

FUNCTIONS = [
    "ApiFunction",
    "AuthorizerFunction",
    "FinalizeFunction",
    "QueueFunction",
    "ReconcilerFunction",
    "ScheduledSubmitFunction",
    "StopTaskFunction",
    "TaskEventsFunction",
]

# Lambda's environment for the functions, with fake credentials and an endpoint nothing listens on,
# so an unexpected AWS call fails fast instead of reaching a real account.
FUNCTION_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_LAMBDA_FUNCTION_NAME": "packaging-test",
    "POWERTOOLS_SERVICE_NAME": "taskrunner",
    "POWERTOOLS_METRICS_NAMESPACE": "TaskRunner",
    "POWERTOOLS_LOG_LEVEL": "WARN",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "TASKS_TABLE_NAME": "taskrunner-tasks",
    "IDEMPOTENCY_TABLE_NAME": "taskrunner-idempotency",
    "ECS_CLUSTER": "taskrunner",
    "TASK_LOG_GROUP": "/taskrunner/tasks",
    "TASK_LOG_STREAM_PREFIX": "task",
    "TASK_FAMILY_PREFIX": "taskrunner",
    "TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/taskrunner-task",
    "TASK_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/taskrunner-task-execution",
    "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:run-task",
    # Settings have no defaults for resources: the variables only ApiFunction gets, so that it could start.
    "SCHEDULE_GROUP_NAME": "taskrunner",
    "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/taskrunner-scheduler",
    "SCHEDULED_SUBMIT_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:taskrunner-scheduled-submit",
    "SCHEDULES_DLQ_ARN": "arn:aws:sqs:us-east-1:123456789012:taskrunner-schedules-dlq",
}

# Runs inside the isolated python3.13. argv: function dir, layer dir, event file or "", result file.
RUNNER = textwrap.dedent(
    """
    import json, sys, uuid

    function_dir, layer_dir, event_file, result_file = sys.argv[1:5]
    sys.path[:0] = [function_dir, layer_dir]
    leaked = [p for p in sys.path if "site-packages" in p or "dist-packages" in p]
    assert not leaked, leaked

    import app

    class Context:
        function_name = "packaging-test"
        function_version = "$LATEST"
        memory_limit_in_mb = 512
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:packaging-test"
        aws_request_id = str(uuid.uuid4())
        log_group_name = "/aws/lambda/packaging-test"
        log_stream_name = "2026/01/01/[$LATEST]0"

        def get_remaining_time_in_millis(self):
            return 30_000

    outcome = {
        "version": list(sys.version_info[:2]),
        "app": app.__file__,
        "callable": callable(getattr(app, "lambda_handler", None)),
        "modules": {
            name: getattr(sys.modules.get(name), "__file__", None)
            for name in ("taskrunner", "pydantic", "pydantic_core", "aws_lambda_powertools", "boto3", "botocore")
        },
    }
    if event_file:
        with open(event_file) as f:
            outcome["response"] = app.lambda_handler(json.load(f), Context())
    with open(result_file, "w") as f:
        json.dump(outcome, f)
    """
)


def _python313() -> str | None:
    candidates = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
        if root:
            candidates.append(Path(root) / "versions" / "3.13.0" / "bin" / "python3.13")
    candidates.append(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions/3.13.0/bin/python3.13")
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return shutil.which("python3.13")


@pytest.fixture(scope="module")
def python313() -> str:
    python = _python313()
    if python is None:
        pytest.skip("python3.13 not found (pyenv 3.13.0 or python3.13 on PATH); `sam build` needs it")
    return python


@pytest.fixture(scope="module")
def build_dir(python313: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SAM.exists():
        pytest.skip(f"SAM CLI not installed at {SAM.relative_to(ROOT)} (run `make` to install it)")
    work = tmp_path_factory.mktemp("sam-build")
    build = work / "build"
    env = {
        **os.environ,
        "PATH": f"{Path(python313).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SAM_CLI_TELEMETRY": "0",
    }
    command = [
        str(SAM),
        "build",
        "--template-file",
        str(ROOT / "template.yaml"),
        "--parameter-overrides",
        "Architecture=x86_64",
        "--build-dir",
        str(build),
        # Not cached: a cached build keeps dependencies under .aws-sam/deps in the repository.
        "--no-cached",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, f"sam build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return build


def _built_template(build_dir: Path) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse((build_dir / "template.yaml").read_text())  # type: ignore[no-any-return]


def _run(python313: str, build_dir: Path, function: str, event: Path | None, tmp_path: Path) -> dict[str, Any]:
    result_file = tmp_path / f"{function}.json"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", **FUNCTION_ENV}
    process = subprocess.run(
        [
            python313,
            "-I",
            "-S",
            "-c",
            RUNNER,
            str(build_dir / function),
            str(build_dir / "CommonLayer" / "python"),
            str(event) if event else "",
            str(result_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, f"{function} failed ({process.returncode}):\n{process.stdout}\n{process.stderr}"
    return json.loads(result_file.read_text())  # type: ignore[no-any-return]


def test_build_contains_every_function_and_the_layer(build_dir: Path) -> None:
    resources = _built_template(build_dir)["Resources"]
    functions = sorted(k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function")
    assert functions == sorted(FUNCTIONS)
    layer = resources["CommonLayer"]
    # sam build resolved `BuildArchitecture: !Ref Architecture` with the override.
    assert layer["Metadata"]["BuildArchitecture"] == "x86_64"
    assert (build_dir / "CommonLayer" / "python" / "taskrunner" / "__init__.py").exists()
    compiled = list((build_dir / "CommonLayer" / "python" / "pydantic_core").glob("_pydantic_core*.so"))
    assert compiled and all("x86_64" in path.name for path in compiled), compiled


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_code_is_thin(build_dir: Path, function: str) -> None:
    """Dependencies belong to the layer: a function's own build holds its code only."""
    bundled = sorted(p.name for p in (build_dir / function).glob("*.dist-info"))
    assert not bundled, f"{function} bundles {bundled}"
    assert (build_dir / function / "app.py").exists()


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_imports_from_its_build_and_the_layer_only(
    python313: str, build_dir: Path, function: str, tmp_path: Path
) -> None:
    outcome = _run(python313, build_dir, function, None, tmp_path)
    assert outcome["version"] == [3, 13]
    assert outcome["callable"], f"{function}.app has no callable lambda_handler"
    assert outcome["app"].startswith(str(build_dir / function))
    layer = str(build_dir / "CommonLayer" / "python")
    for module, location in outcome["modules"].items():
        if location is not None:
            assert location.startswith(layer), f"{module} was imported from {location}, not the layer"


def test_api_function_serves_the_openapi_document(python313: str, build_dir: Path, tmp_path: Path) -> None:
    event = EVENTS / "api" / "get_openapi.json"
    assert event.exists(), f"sample event {event.relative_to(ROOT)} is missing"
    outcome = _run(python313, build_dir, "ApiFunction", event, tmp_path)
    response = outcome["response"]
    assert response["statusCode"] == 200, response
    document = json.loads(response["body"])
    assert document["openapi"].startswith("3.")
    assert "/tasks" in document["paths"]
    for module in ("taskrunner", "pydantic", "aws_lambda_powertools"):
        assert outcome["modules"][module], f"{module} was not imported"


def test_authorizer_function_answers_from_its_build(python313: str, build_dir: Path, tmp_path: Path) -> None:
    # Given API Gateway's authorizer event for a request with Basic auth (no key to look up: no AWS call)
    event = EVENTS / "authorizer" / "basic_scheme.json"
    # When the built authorizer handles it
    response = _run(python313, build_dir, "AuthorizerFunction", event, tmp_path)["response"]
    # Then it authorizes (always: the API function answers 401 in the API's shape) and names no caller
    assert response["isAuthorized"] is True
    assert response["context"]["tenant"] == "" and response["context"]["reason"], response
