"""template.yaml: lint, SAM transform, the contract other parts rely on, and least privilege.

Offline: cfn-lint and aws-sam-translator run locally; the managed-policy loader is a stub, so IAM is never called.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from taskrunner.settings import Settings
from taskrunner.wiring import IDEMPOTENCY, LOGS, SCHEDULER, SUBMISSION, TASKS

from taskrunner_local.sam import SamApp
from tests.support import template
from tests.support.apigw import ROUTES
from tests.support.functions import cold_start

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ASL = ROOT / "statemachines" / "run_task.asl.json"
SAM = ROOT / ".tools" / "sam" / "bin" / "sam"

# The ASL is written against exactly these substitutions.
DEFINITION_SUBSTITUTIONS = {
    "ClusterArn",
    "SubnetIds",
    "SecurityGroupIds",
    "AssignPublicIp",
    "TasksTableName",
    "FinalizeFunctionArn",
    "StopTaskFunctionArn",
    "QueueFunctionArn",
    "SlotAttribute",
    "TaskExecutionRoleArn",
    "TaskRoleArn",
    "TaskLogGroup",
    "LogStreamPrefix",
    "Region",
}

HTTP_ROUTES = set(ROUTES)  # every route of DESIGN §4

FUNCTIONS = {
    "ApiFunction": "functions/api/",
    "FinalizeFunction": "functions/finalize/",
    "StopTaskFunction": "functions/stop_task/",
    "TaskEventsFunction": "functions/task_events/",
    "ScheduledSubmitFunction": "functions/scheduled_submit/",
    "ReconcilerFunction": "functions/reconcile/",
    "AuthorizerFunction": "functions/authorizer/",
    "QueueFunction": "functions/queue/",
}
#: the functions that start executions: the one submission path, from HTTP and from schedules, and the reconciler,
#: which starts the workflow of a queued task again when its execution ended
SUBMITTERS = {"ApiFunction", "ScheduledSubmitFunction", "ReconcilerFunction"}


def _sam_template() -> dict[str, Any]:
    return SamApp(TEMPLATE).template


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    """The template as `sam package` and the SAM transform make it (artifact paths become S3 URIs); the
    managed-policy loader is the local stack's offline table, so IAM is never called."""
    return template.transformed()


# ------------------------------------------------------------------------------------------------ lint


def test_cfn_lint_passes() -> None:
    # cfn-lint has no `python -m cfnlint`; run its console entry point with this interpreter.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", str(TEMPLATE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def test_sam_validate_lint_passes() -> None:
    if not SAM.exists():
        pytest.skip(f"SAM CLI not installed at {SAM.relative_to(ROOT)} (run `make` to install it)")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run(
        [str(SAM), "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"sam validate --lint exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "is a valid SAM Template" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ transform


def test_template_transforms_into_the_expected_resources(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    expected = {
        "CommonLayer": "AWS::Lambda::LayerVersion",
        "TasksTable": "AWS::DynamoDB::Table",
        "IdempotencyTable": "AWS::DynamoDB::Table",
        "Cluster": "AWS::ECS::Cluster",
        "ClusterCapacityProviders": "AWS::ECS::ClusterCapacityProviderAssociations",
        "TaskExecutionRole": "AWS::IAM::Role",
        "TaskRole": "AWS::IAM::Role",
        "TaskLogGroup": "AWS::Logs::LogGroup",
        "ArchiveBucket": "AWS::S3::Bucket",
        "ArchiveBucketPolicy": "AWS::S3::BucketPolicy",
        "LogArchiveDeliveryStream": "AWS::KinesisFirehose::DeliveryStream",
        "FirehoseDeliveryRole": "AWS::IAM::Role",
        "LogsToFirehoseRole": "AWS::IAM::Role",
        "TaskLogSubscription": "AWS::Logs::SubscriptionFilter",
        "RunTaskStateMachine": "AWS::StepFunctions::StateMachine",
        "StateMachineLogGroup": "AWS::Logs::LogGroup",
        "HttpApi": "AWS::ApiGatewayV2::Api",
        "ApiAccessLogGroup": "AWS::Logs::LogGroup",
        "TaskEventsDeadLetterQueue": "AWS::SQS::Queue",
        **dict.fromkeys(FUNCTIONS, "AWS::Lambda::Function"),
    }
    # SAM renames a layer's logical id with a content hash: CommonLayer -> CommonLayer<hash>.
    layer_ids = [k for k, v in resources.items() if v["Type"] == "AWS::Lambda::LayerVersion"]
    assert len(layer_ids) == 1 and layer_ids[0].startswith("CommonLayer")
    actual = {("CommonLayer" if k == layer_ids[0] else k): v["Type"] for k, v in resources.items()}
    missing = {k: t for k, t in expected.items() if actual.get(k) != t}
    assert not missing, f"missing or mistyped resources: {missing}"


def test_state_machine_has_exactly_the_substitutions_the_asl_uses(transformed: dict[str, Any]) -> None:
    state_machine = transformed["Resources"]["RunTaskStateMachine"]["Properties"]
    assert set(state_machine["DefinitionSubstitutions"]) == DEFINITION_SUBSTITUTIONS
    assert state_machine["StateMachineType"] == "STANDARD"
    assert state_machine["TracingConfiguration"] == {"Enabled": True}
    assert state_machine["LoggingConfiguration"]["Level"] == "ERROR"
    assert state_machine["LoggingConfiguration"]["IncludeExecutionData"] is False


def test_every_placeholder_in_the_asl_has_a_substitution() -> None:
    if not ASL.exists():
        pytest.skip(f"{ASL.relative_to(ROOT)} not written yet")
    placeholders = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", ASL.read_text()))
    assert placeholders <= DEFINITION_SUBSTITUTIONS, f"unknown placeholders: {placeholders - DEFINITION_SUBSTITUTIONS}"
    json.loads(ASL.read_text())


def test_http_api_serves_every_route_with_payload_format_2(transformed: dict[str, Any]) -> None:
    body = transformed["Resources"]["HttpApi"]["Properties"]["Body"]
    routes = {(method.upper(), path) for path, item in body["paths"].items() for method in item}
    assert routes == HTTP_ROUTES
    for item in body["paths"].values():
        for operation in item.values():
            assert operation["x-amazon-apigateway-integration"]["payloadFormatVersion"] == "2.0"
    stage = next(iter(template.of_type(transformed, "AWS::ApiGatewayV2::Stage").values()))["Properties"]
    assert "AccessLogSettings" in stage
    assert {"ThrottlingBurstLimit", "ThrottlingRateLimit"} <= stage["DefaultRouteSettings"].keys()


def test_task_events_rule_matches_running_and_stopped_tasks_of_this_cluster(transformed: dict[str, Any]) -> None:
    rules = template.of_type(transformed, "AWS::Events::Rule")
    rule = rules["TaskEventsFunctionTaskStateChange"]["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.ecs"],
        "detail-type": ["ECS Task State Change"],
        "detail": {"clusterArn": [{"Fn::GetAtt": ["Cluster", "Arn"]}], "lastStatus": ["RUNNING", "STOPPED"]},
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["TaskEventsFunction", "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["TaskEventsDeadLetterQueue", "Arn"]}}
    assert "MaximumRetryAttempts" in target["RetryPolicy"]


def test_only_the_submitting_functions_know_the_state_machine(transformed: dict[str, Any]) -> None:
    functions = template.of_type(transformed, "AWS::Lambda::Function")
    assert set(functions) == set(FUNCTIONS)
    for name, function in functions.items():
        props = function["Properties"]
        variables = props["Environment"]["Variables"]
        assert ("STATE_MACHINE_ARN" in variables) == (name in SUBMITTERS), name
        assert {"TASKS_TABLE_NAME", "IDEMPOTENCY_TABLE_NAME", "ECS_CLUSTER", "TASK_LOG_GROUP"} <= variables.keys()
        assert props["Runtime"] == "python3.13"
        assert props["Handler"] == "app.lambda_handler"
        assert props["Architectures"] == [{"Ref": "Architecture"}]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert len(props["Layers"]) == 1


@pytest.mark.parametrize("logical_id", sorted(FUNCTIONS))
def test_each_function_starts_with_the_environment_the_template_gives_it(
    transformed: dict[str, Any], logical_id: str
) -> None:
    """Settings have no defaults for resources and every handler module checks, at import, the variables it
    needs: importing it with exactly the template's variables (and what Lambda adds) must succeed."""
    props = transformed["Resources"][logical_id]["Properties"]
    env = dict.fromkeys(props["Environment"]["Variables"], "from-the-template")
    env |= {"AWS_REGION": "us-east-1", "AWS_LAMBDA_FUNCTION_NAME": logical_id}
    name = FUNCTIONS[logical_id].removeprefix("functions/").rstrip("/")
    module = cold_start(name, env, f"template_env_{name}_app", clear=True)
    assert callable(module.lambda_handler)
    if logical_id == "ApiFunction":  # every part of the service
        Settings.from_environment(env).require([*TASKS, *SUBMISSION, *LOGS, *IDEMPOTENCY, *SCHEDULER])


def test_function_code_lives_where_the_layout_says() -> None:
    resources = _sam_template()["Resources"]
    for name, code_uri in FUNCTIONS.items():
        assert resources[name]["Properties"]["CodeUri"] == code_uri
    assert resources["CommonLayer"]["Properties"]["ContentUri"] == "layers/common/"
    assert resources["CommonLayer"]["Metadata"]["BuildMethod"] == "python3.13"


# ------------------------------------------------------------------------------------------------ least privilege

WILDCARD_ACTION = re.compile(r"^(\*|[A-Za-z0-9-]+:\*)$")


def test_no_allow_statement_grants_wildcard_actions(transformed: dict[str, Any]) -> None:
    """Deny statements may use wildcards (the bucket's deny-non-TLS uses s3:*); Allow statements may not."""
    offenders = []
    for where, statement in template.statements(transformed["Resources"]):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement:
            offenders.append((where, "NotAction"))
        for action in template.actions(statement):
            if isinstance(action, str) and WILDCARD_ACTION.match(action):
                offenders.append((where, action))
    assert not offenders, f"wildcard actions: {offenders}"


def test_the_policy_walk_sees_every_role(transformed: dict[str, Any]) -> None:
    """Guards the test above: it must see the inline policies of the roles SAM generates."""
    locations = [where for where, _ in template.statements(transformed["Resources"])]
    for role in ["RunTaskStateMachineRole", "ApiFunctionRole", "LogsToFirehoseRole", "FirehoseDeliveryRole"]:
        assert any(w.startswith(f"/{role}/Properties/Policies") for w in locations), role


def test_pass_role_is_limited_to_ecs_tasks_and_the_scheduler(transformed: dict[str, Any]) -> None:
    pass_role = [
        s
        for _, s in template.statements(transformed["Resources"])
        if s.get("Effect") == "Allow" and "iam:PassRole" in template.actions(s)
    ]
    assert pass_role
    services = set()
    for statement in pass_role:
        assert statement["Resource"] != "*"
        [service] = statement["Condition"]["StringEquals"].values()
        services.add(service)
        if service == "scheduler.amazonaws.com":  # only the scheduler's own role, to EventBridge Scheduler
            assert statement["Resource"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert services == {"ecs-tasks.amazonaws.com", "scheduler.amazonaws.com"}


def test_the_reconciler_runs_every_five_minutes_with_only_what_it_needs(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    [schedule] = [
        r["Properties"]
        for r in template.of_type(transformed, "AWS::Scheduler::Schedule").values()
        if r["Properties"]["Target"]["Arn"] == {"Fn::GetAtt": ["ReconcilerFunction", "Arn"]}
    ]
    assert schedule["ScheduleExpression"] == "rate(5 minutes)" and schedule["State"] == "ENABLED"
    assert "GroupName" not in schedule  # the stack's group holds the users' schedules only
    assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": ["ReconcilerScheduleRole", "Arn"]}
    [invoke] = [s for _, s in template.statements(resources["ReconcilerScheduleRole"]["Properties"]["Policies"])]
    assert invoke["Action"] == "lambda:InvokeFunction"
    assert invoke["Resource"] == {"Fn::GetAtt": ["ReconcilerFunction", "Arn"]}
    granted = {
        a
        for _, s in template.statements(resources["ReconcilerFunctionRole"]["Properties"]["Policies"])
        for a in template.actions(s)
    }
    assert granted == {
        "dynamodb:Query",  # the status index and the tenants' index only: no Scan
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",  # the tasks an index query names
        "dynamodb:UpdateItem",
        "dynamodb:PutItem",  # the metering record, in the finalize transaction
        "states:DescribeExecution",
        "states:StopExecution",
        "states:StartExecution",  # a queued task whose execution ended gets a new one
        "states:SendTaskSuccess",  # each tenant's dispatch resumes the tasks it grants a slot
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ecs:StopTask",
    }
