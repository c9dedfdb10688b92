"""A durable stack restarted on a changed template updates what changed (and says so), keeping the rest: the
functions' names, the state machine's ARN, the tasks and their records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from taskrunner_local.cli import free_port
from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.config import ROOT, LocalConfig
from taskrunner_local.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("template-update")]


def project_copy(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "template.yaml", root)
    for folder in ("statemachines", "functions", "layers"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def config_on(root: Path, state: Path, stack_name: str = "taskrunner-update") -> LocalConfig:
    """A durable stack of the project copy at `root`, on the state folder `state`, in process mode."""
    return LocalConfig(
        api_port=free_port(),
        aws_port=free_port(),
        registry_port=free_port(),
        stack_name=stack_name,
        root=root,
        state_dir=state,
        ephemeral=False,
        agent_mode="process",
        echo_function_logs=False,
    )


def stack_on(root: Path, state: Path) -> LocalStack:
    return LocalStack(config_on(root, state)).start()


def test_a_changed_template_updates_the_stack_and_keeps_its_tasks(tmp_path: Path) -> None:
    root, state = project_copy(tmp_path), tmp_path / "state"
    # Given a durable stack that ran a task
    first = stack_on(root, state)
    try:
        assert first.state_lines[0] == "stack taskrunner-update deployed"
        api = TaskRunnerClient(first.api_url, api_key=first.admin_key)
        task = api.wait(api.submit({"image": "busybox", "command": ["sh", "-c", "echo before"]})["task_id"])
        assert first.deployment is not None
        before = first.deployment
    finally:
        first.stop()
    # When the template changes (a function's timeout, the state machine's definition) and the stack starts again
    template = root / "template.yaml"
    text = template.read_text()
    marker = "CodeUri: functions/reconcile/\n      LoggingConfig:\n        LogGroup: !Ref ReconcilerFunctionLogGroup\n"
    assert f"{marker}      Timeout: 120" in text
    template.write_text(text.replace(f"{marker}      Timeout: 120", f"{marker}      Timeout: 150"))
    definition_file = root / "statemachines" / "run_task.asl.json"
    definition = json.loads(definition_file.read_text())
    definition["Comment"] = "changed by the update test"
    definition_file.write_text(json.dumps(definition))
    second = stack_on(root, state)
    try:
        # Then it says what it updated, and updated it in place
        assert second.state_lines[0] == (
            "stack taskrunner-update updated: the template or its parameters changed "
            "(updated ReconcilerFunction, RunTaskStateMachine)"
        )
        assert second.deployment is not None
        after = second.deployment
        assert after.function_names == before.function_names
        assert after.state_machine_arn == before.state_machine_arn
        reconciler = second.client("lambda").get_function_configuration(
            FunctionName=after.function_names["ReconcilerFunction"]
        )
        assert reconciler["Timeout"] == 150
        machine = second.client("stepfunctions").describe_state_machine(stateMachineArn=after.state_machine_arn)
        assert json.loads(machine["definition"])["Comment"] == "changed by the update test"
        # and the task of before is still there, and new tasks run
        api = TaskRunnerClient(second.api_url, api_key=second.admin_key)
        assert api.get(task["task_id"]) == task
        assert api.wait(api.submit({"image": "busybox", "command": ["true"]})["task_id"])["status"] == "SUCCEEDED"
    finally:
        second.stop()
    # And an unchanged template the next time is restored as it is
    third = stack_on(root, state)
    try:
        assert third.state_lines[0] == "stack taskrunner-update restored (template unchanged)"
    finally:
        third.stop()


def test_a_folder_of_another_stack_or_whose_database_was_lost_is_refused_untouched(tmp_path: Path) -> None:
    from taskrunner_local.persistence.folder import StateUnusable

    root, state = project_copy(tmp_path), tmp_path / "state"
    stack_on(root, state).stop()
    # Another stack name on this folder: refused, naming the stack the folder holds
    other = config_on(root, state, stack_name="another")
    with pytest.raises(StateUnusable, match="holds the stack 'taskrunner-update'"):
        LocalStack(other).start()
    # A database that lost its stack (deleted): refused, not started anew as if the folder were new
    for database in state.glob("state.sqlite3*"):
        database.unlink()
    with pytest.raises(StateUnusable, match="was it deleted or replaced"):
        stack_on(root, state)
    # Garbage in its place: refused, with what is wrong
    (state / "state.sqlite3").write_bytes(b"not a database" * 1000)
    with pytest.raises(StateUnusable, match="cannot be read"):
        stack_on(root, state)
