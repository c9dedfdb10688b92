"""Each moto patch of the local stack, shown against the gap it closes (taskrunner_local/moto_patches.py).

Every test runs the same scenario with the patch reverted (the gap shows) and applied (AWS's behaviour). When
a test's "reverted" half starts failing, moto has fixed the gap and the patch can go.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import boto3
import pytest
from botocore.exceptions import ClientError

from taskrunner_local import moto_patches
from taskrunner_local.moto_patches import HOOKS
from tests.support.moto_in_process import patch_state

REGION = "us-east-1"


def ecs_service(api_action: str) -> Any:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs import (
        StateTaskServiceEcs,
    )

    service = StateTaskServiceEcs.__new__(StateTaskServiceEcs)
    service.resource = SimpleNamespace(  # type: ignore[assignment]  # the fields the ECS integration reads
        api_name="ecs", api_action=api_action, resource_arn=f"arn:aws:states:::ecs:{api_action}"
    )
    return service


def fargate_task(ecs: Any, family: str = "f", container: dict[str, Any] | None = None) -> dict[str, Any]:
    subnet = boto3.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    ecs.create_cluster(clusterName="c")
    ecs.register_task_definition(
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[container or {"name": "main", "image": "busybox", "essential": True, "memory": 512}],
    )
    network = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": []}}
    return ecs.run_task(cluster="c", taskDefinition=family, launchType="FARGATE", networkConfiguration=network)[  # type: ignore[no-any-return]
        "tasks"
    ][0]


@pytest.mark.parametrize("applied", [False, True])
def test_task_parameters_are_translated_from_asl_pascal_case_to_boto3(applied: bool) -> None:
    with patch_state("sfn-normalise-parameters", applied):
        parameters = {"Cluster": "c", "TaskDefinition": "t", "Overrides": {"ContainerOverrides": [{"Name": "main"}]}}
        ecs_service("runTask")._normalise_parameters(parameters)
        response = {"tasks": [{"taskArn": "arn", "containers": [{"exitCode": 0}]}]}
        ecs_service("runTask")._normalise_response(response, service_action_name="describe_tasks")
    if applied:
        assert parameters == {
            "cluster": "c",
            "taskDefinition": "t",
            "overrides": {"containerOverrides": [{"name": "main"}]},
        }
        assert response == {"Tasks": [{"TaskArn": "arn", "Containers": [{"ExitCode": 0}]}]}
    else:
        assert "Cluster" in parameters and "tasks" in response  # the gap: nothing is translated


@pytest.mark.parametrize("applied", [False, True])
def test_run_task_keeps_capacity_provider_strategy_and_tags(applied: bool) -> None:
    with patch_state("sfn-ecs-run-task-parameters", applied):
        supported = ecs_service("runTask")._get_supported_parameters()
    assert ({"CapacityProviderStrategy", "Tags", "EnableECSManagedTags"} <= supported) is applied


@pytest.mark.parametrize("applied", [False, True])
def test_fargate_task_definitions_need_no_container_memory(aws: None, applied: bool) -> None:
    with patch_state("ecs-fargate-container-memory", applied):
        ecs = boto3.client("ecs")

        def run() -> Any:
            return fargate_task(ecs, container={"name": "main", "image": "busybox", "essential": True})

        if applied:
            assert run()["taskArn"]
        else:
            with pytest.raises(TypeError):
                run()


@pytest.mark.parametrize("applied", [False, True])
def test_ecs_tasks_follow_a_lifecycle_the_agent_owns(aws: None, applied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(HOOKS, "on_run_task", lambda backend, tasks: seen.extend(tasks))
    with patch_state("ecs-task-lifecycle", applied):
        ecs = boto3.client("ecs")
        task = fargate_task(ecs)
        if applied:
            assert task["lastStatus"] == "PROVISIONING" and [t.task_arn for t in seen] == [task["taskArn"]]
            with pytest.raises(ClientError) as unknown:
                ecs.stop_task(cluster="c", task="arn:aws:ecs:us-east-1:123456789012:task/c/nope")
            assert unknown.value.response["Error"]["Code"] == "InvalidParameterException"
        else:
            assert task["lastStatus"] == "RUNNING" and seen == []
            boto3.client("ecs").stop_task(cluster="c", task=task["taskArn"])
            with pytest.raises(Exception, match="Could not find task"):
                ecs.stop_task(cluster="c", task="arn:aws:ecs:us-east-1:123456789012:task/c/nope")


def _stopped_task_resolver(ecs: Any, exit_code: int) -> tuple[Any, Any]:
    task = fargate_task(ecs)
    from moto.ecs.models import ecs_backends

    [stored] = [t for tasks in ecs_backends["123456789012"][REGION].tasks.values() for t in tasks.values()]
    stored.containers[0].exitCode = exit_code
    stored._status = "STOPPED"
    service = ecs_service("runTask")
    service._get_sfn_resource = lambda: "runTask.sync"
    service._get_sfn_resource_type = lambda: "ecs"
    env = MagicMock(name="Environment")  # the interpreter's execution environment; only its stack matters here
    env.stack = [{"Tasks": [{"TaskArn": task["taskArn"], "ClusterArn": task["clusterArn"]}]}]
    resolver = service._build_sync_resolver(env, SimpleNamespace(region=REGION), {}, None)
    return resolver, env


@pytest.mark.parametrize("applied", [False, True])
def test_run_task_sync_fails_like_aws_on_a_non_zero_exit(aws: None, applied: bool) -> None:
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEventException

    with (
        patch_state("ecs-task-lifecycle", True),
        patch_state("sfn-normalise-parameters", True),
        patch_state("sfn-ecs-sync-failure", applied),
    ):
        resolver, env = _stopped_task_resolver(boto3.client("ecs"), exit_code=3)
        if not applied:
            assert resolver()["Containers"][0]["ExitCode"] == 3  # the gap: reported as a success
            return
        with pytest.raises(FailureEventException) as failure:
            resolver()
    event_details: Any = failure.value.failure_event.event_details
    details = event_details["taskFailedEventDetails"]
    assert details["error"] == "States.TaskFailed"
    cause = json.loads(details["cause"])
    assert cause["Containers"][0]["ExitCode"] == 3 and cause["TaskArn"].startswith("arn:aws:ecs:")


def test_run_task_sync_succeeds_on_exit_zero_with_epoch_millisecond_timestamps(aws: None) -> None:
    with (
        patch_state("ecs-task-lifecycle", True),
        patch_state("sfn-normalise-parameters", True),
        patch_state("sfn-ecs-sync-failure", True),
    ):
        resolver, _ = _stopped_task_resolver(boto3.client("ecs"), exit_code=0)
        output = resolver()
    assert output["LastStatus"] == "STOPPED" and isinstance(output["CreatedAt"], int)


def _ecs_client_error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "r"}},
        "RunTask",
    )


@pytest.mark.parametrize("applied", [False, True])
def test_ecs_integration_errors_have_the_names_aws_gives_them(applied: bool) -> None:
    service = ecs_service("runTask")
    service._get_sfn_resource = lambda: "runTask.sync"
    service._get_sfn_resource_type = lambda: "ecs"
    env = MagicMock(name="Environment")
    with patch_state("sfn-ecs-error-names", applied):
        throttled = service._from_error(env, _ecs_client_error("ThrottlingException", "Rate exceeded"))
        invalid = service._from_error(env, _ecs_client_error("InvalidParameterException", "No subnets"))
    throttled_details = throttled.event_details["taskFailedEventDetails"]
    if not applied:  # the gap: every ECS error is a States.Runtime, which AWS never retries
        assert (
            throttled_details["error"] == invalid.event_details["taskFailedEventDetails"]["error"] == "States.Runtime"
        )
        return
    # AWS: errors the ECS API does not model (throttling among them) are ECS.AmazonECSException, the rest by name
    assert throttled_details["error"] == "ECS.AmazonECSException"
    assert throttled_details["cause"].startswith("Rate exceeded (Service: AmazonECS; Status Code: 400; ")
    assert "Error Code: ThrottlingException" in throttled_details["cause"]
    assert invalid.event_details["taskFailedEventDetails"]["error"] == "ECS.InvalidParameterException"
    # moto's own crashes (HTTP 500) are server faults, retried briefly, not throttling, retried for half an hour
    with patch_state("sfn-ecs-error-names", applied):
        crashed = service._from_error(env, _ecs_client_error("500", "Internal Server Error", status=500))
    assert crashed.event_details["taskFailedEventDetails"]["error"] == "ECS.ServerException"


@pytest.mark.parametrize("applied", [False, True])
def test_lambda_functions_run_without_docker(aws: None, applied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bytes, str]] = []

    def invoke_lambda(name: str, payload: bytes, kind: str) -> tuple[bytes, None]:
        calls.append((name, payload, kind))
        return b'{"ok": 1}', None

    monkeypatch.setattr(HOOKS, "invoke_lambda", invoke_lambda)
    role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    boto3.client("lambda").create_function(
        FunctionName="fn",
        Runtime="python3.13",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
    )
    with patch_state("lambda-invoke-local", applied):
        if applied:
            response = boto3.client("lambda").invoke(FunctionName="fn", Payload=b'{"a": 1}')
            assert json.loads(response["Payload"].read()) == {"ok": 1} and calls == [
                ("fn", b'{"a": 1}', "RequestResponse")
            ]
        else:
            response = boto3.client("lambda").invoke(FunctionName="fn", Payload=b'{"a": 1}')
            assert calls == []  # the gap: moto tries Docker, which is not there, and never runs the handler
            assert response["Payload"].read() != b'{"ok": 1}'


@pytest.mark.parametrize("applied", [False, True])
def test_eventbridge_rules_deliver_to_lambda_targets(aws: None, applied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any], str]] = []

    def invoke_lambda(name: str, payload: bytes, kind: str) -> tuple[bytes, None]:
        calls.append((name, json.loads(payload), kind))
        return b"", None

    monkeypatch.setattr(HOOKS, "invoke_lambda", invoke_lambda)
    events = boto3.client("events")
    events.put_rule(Name="r", EventPattern=json.dumps({"source": ["aws.ecs"]}))
    events.put_targets(Rule="r", Targets=[{"Id": "1", "Arn": "arn:aws:lambda:us-east-1:123456789012:function:fn"}])
    entry = {
        "Source": "aws.ecs",
        "DetailType": "ECS Task State Change",
        "Detail": json.dumps({"lastStatus": "RUNNING"}),
    }
    with patch_state("events-lambda-targets", applied):
        if applied:
            events.put_events(Entries=[entry])
            [(name, event, kind)] = calls
            assert name == "fn" and kind == "Event" and event["detail"] == {"lastStatus": "RUNNING"}
        else:
            with pytest.raises(Exception):  # noqa: B017 - moto raises NotImplementedError for a Lambda target
                events.put_events(Entries=[entry])


@pytest.mark.parametrize("applied", [False, True])
def test_get_log_events_stops_a_page_at_one_megabyte(aws: None, applied: bool) -> None:
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName="g")
    logs.create_log_stream(logGroupName="g", logStreamName="s")
    line, now = "x" * 200_000, int(time.time() * 1000)
    logs.put_log_events(
        logGroupName="g", logStreamName="s", logEvents=[{"timestamp": now + i, "message": line} for i in range(12)]
    )
    with patch_state("logs-page-size", applied):
        first = logs.get_log_events(logGroupName="g", logStreamName="s", startFromHead=True)
        if not applied:
            assert len(first["events"]) == 12  # 2.4 MB in one page
            return
        assert len(first["events"]) == 5  # 5 x (200,000 + 26) bytes fit in 1,048,576; a sixth does not
        rest = logs.get_log_events(
            logGroupName="g", logStreamName="s", startFromHead=True, nextToken=first["nextForwardToken"]
        )
        last = logs.get_log_events(
            logGroupName="g", logStreamName="s", startFromHead=True, nextToken=rest["nextForwardToken"]
        )
        assert [len(p["events"]) for p in (rest, last)] == [5, 2]


@pytest.mark.parametrize("applied", [False, True])
def test_cloudformation_vpcs_get_the_dns_attributes_of_their_template(aws: None, applied: bool) -> None:
    # Given a template whose VPC has DNS hostnames (as the tasks' network of template.yaml does)
    vpc = {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.9.0.0/16", "EnableDnsHostnames": True}}
    template = {"Resources": {"Vpc": vpc}, "Outputs": {"VpcId": {"Value": {"Ref": "Vpc"}}}}
    with patch_state("ec2-cloudformation-vpc-dns", applied):
        # When CloudFormation creates it
        cfn = boto3.client("cloudformation")
        cfn.create_stack(StackName="net", TemplateBody=json.dumps(template))
    [output] = cfn.describe_stacks(StackName="net")["Stacks"][0]["Outputs"]
    # Then it has DNS hostnames (the gap: moto ignores the property)
    attribute = boto3.client("ec2").describe_vpc_attribute(VpcId=output["OutputValue"], Attribute="enableDnsHostnames")
    assert attribute["EnableDnsHostnames"]["Value"] is applied


@pytest.mark.parametrize("applied", [False, True])
def test_cloudformation_updates_a_function_that_uses_a_layer_of_its_stack(aws: None, applied: bool) -> None:
    # Given a stack with a layer and a function that uses it
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="code")
    s3.put_object(Bucket="code", Key="f.zip", Body=b"PK\x05\x06" + b"\x00" * 18)  # an empty zip
    role = {
        "Type": "AWS::IAM::Role",
        "Properties": {"AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": []}},
    }
    layer = {
        "Type": "AWS::Lambda::LayerVersion",
        "Properties": {"LayerName": "common", "Content": {"S3Bucket": "code", "S3Key": "f.zip"}},
    }

    def template(timeout: int) -> str:
        function = {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Runtime": "python3.13",
                "Handler": "app.handler",
                "Role": {"Fn::GetAtt": ["Role", "Arn"]},
                "Code": {"S3Bucket": "code", "S3Key": "f.zip"},
                "Layers": [{"Ref": "Layer"}],
                "Timeout": timeout,
            },
        }
        return json.dumps({"Resources": {"Role": role, "Layer": layer, "Function": function}})

    cfn = boto3.client("cloudformation")
    cfn.create_stack(StackName="app", TemplateBody=template(3))
    with patch_state("lambda-cloudformation-update-layers", applied):
        # When the template changes the function and the stack is updated
        if not applied:
            with pytest.raises((ClientError, AttributeError)):  # the gap: moto crashes (500 in server mode)
                cfn.update_stack(StackName="app", TemplateBody=template(30))
            return
        cfn.update_stack(StackName="app", TemplateBody=template(30))
    # Then the function has its new configuration, and still its layer
    [function] = boto3.client("lambda").list_functions()["Functions"]
    assert function["Timeout"] == 30
    assert len(function["Layers"]) == 1


@pytest.mark.parametrize("applied", [False, True])
def test_firehose_s3_objects_end_in_the_configured_file_extension(aws: None, applied: bool) -> None:
    # Given a delivery stream to S3 whose objects should end in .gz
    s3, firehose = boto3.client("s3"), boto3.client("firehose")
    s3.create_bucket(Bucket="archive")
    destination = {
        "BucketARN": "arn:aws:s3:::archive",
        "RoleARN": "arn:aws:iam::123456789012:role/firehose",
        "Prefix": "tasks/",
        "CompressionFormat": "UNCOMPRESSED",
        "FileExtension": ".gz",
    }
    firehose.create_delivery_stream(DeliveryStreamName="d", ExtendedS3DestinationConfiguration=destination)
    with patch_state("firehose-file-extension", applied):
        # When a record is delivered
        firehose.put_record(DeliveryStreamName="d", Record={"Data": b"data"})
        [key] = [o["Key"] for o in s3.list_objects_v2(Bucket="archive")["Contents"]]
    # Then its object is named with the extension (the gap: moto ignores FileExtension)
    assert key.startswith("tasks/")
    assert key.endswith(".gz") == applied


_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64, "size": 7},
    "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "a" * 64, "size": 1000},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "b" * 64, "size": 234},
    ],
}


@pytest.mark.parametrize("applied", [False, True])
def test_ecr_authorization_tokens_are_fresh_and_valid_for_twelve_hours(aws: None, applied: bool) -> None:
    ecr = boto3.client("ecr")
    with patch_state("ecr-authorization-token", applied):
        first, second = (ecr.get_authorization_token()["authorizationData"][0] for _ in range(2))
    passwords = [base64.b64decode(d["authorizationToken"]).decode().partition(":") for d in (first, second)]
    assert [user for user, _, _ in passwords] == ["AWS", "AWS"]
    assert first["proxyEndpoint"] == f"https://123456789012.dkr.ecr.{REGION}.amazonaws.com"
    hours_left = (first["expiresAt"] - datetime.now(UTC)).total_seconds() / 3600
    if not applied:  # the gap: one well-known password for everyone, expired since 2015
        assert passwords[0][2] == passwords[1][2] == "123456789012-auth-token"
        assert first["expiresAt"].year == 2015
        return
    assert passwords[0][2] != passwords[1][2] and 11.9 < hours_left <= 12
    assert all(moto_patches.ecr_token_valid("123456789012", REGION, password) for _, _, password in passwords)
    assert not moto_patches.ecr_token_valid("210987654321", REGION, passwords[0][2])
    assert not moto_patches.ecr_token_valid("123456789012", "eu-west-2", passwords[0][2])  # tokens are per region
    assert not moto_patches.ecr_token_valid("123456789012", REGION, "123456789012-auth-token")


@pytest.mark.parametrize("applied", [False, True])
def test_ecr_image_size_is_the_sum_of_its_layers(aws: None, applied: bool) -> None:
    ecr = boto3.client("ecr")
    ecr.create_repository(repositoryName="repo")
    ecr.put_image(repositoryName="repo", imageManifest=json.dumps(_MANIFEST), imageTag="v1")
    with patch_state("ecr-image-size", applied):
        [image] = ecr.describe_images(repositoryName="repo")["imageDetails"]
    assert image["imageSizeInBytes"] == (1234 if applied else 7)  # the gap: the config blob's size


@pytest.mark.parametrize("applied", [False, True])
def test_ecr_batch_delete_image_tells_the_registry(aws: None, applied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    ecr = boto3.client("ecr")
    ecr.create_repository(repositoryName="repo")
    digest = ecr.put_image(repositoryName="repo", imageManifest=json.dumps(_MANIFEST), imageTag="v1")["image"][
        "imageId"
    ]["imageDigest"]
    told = MagicMock()
    monkeypatch.setattr(HOOKS, "on_ecr_images_deleted", told)
    with patch_state("ecr-registry-delete", applied):
        ecr.batch_delete_image(repositoryName="repo", imageIds=[{"imageTag": "v1"}])
    assert ecr.describe_images(repositoryName="repo")["imageDetails"] == []
    if applied:
        told.assert_called_once_with("123456789012", REGION, "repo", [digest])
    else:  # the gap: only ECR's record goes, no registry hears of it
        told.assert_not_called()


@pytest.mark.parametrize("applied", [False, True])
def test_task_tokens_are_sent_while_another_execution_is_starting(applied: bool) -> None:
    from moto.stepfunctions.parser.api import InvalidToken
    from moto.stepfunctions.parser.backend.execution import Execution
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    starting = Execution.__new__(Execution)
    starting.exec_status = None  # created by StartExecution, its worker not started yet
    backend = StepFunctionsParserBackend("123456789012", REGION)
    backend.state_machines = [SimpleNamespace(executions=[starting])]  # type: ignore[list-item]
    with patch_state("sfn-task-tokens-while-starting", applied):
        expected = InvalidToken if applied else AttributeError  # AWS: the token is nobody's
        with pytest.raises(expected):
            backend.send_task_success("token-of-nobody", "false")


def test_every_patch_reverts_cleanly() -> None:
    before = {p.name: p.applied for p in moto_patches.PATCHES}
    moto_patches.apply_all()
    moto_patches.revert_all()
    assert not any(p.applied for p in moto_patches.PATCHES)
    for patch in moto_patches.PATCHES:
        if before[patch.name]:
            patch.apply()
