"""The local stack deploys template.yaml the way a fresh AWS account would: the template's own network for the
tasks, the archive's .gz objects, and names that fit their services' limits."""

from __future__ import annotations

import re
import uuid

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.stack import LocalStack
from tests.support.local_tasks import shell, wait_until

_SPLIT = re.compile(r"States\.StringSplit\('([^']*)', ','\)")


def _stack_resources(stack: LocalStack, resource_type: str) -> list[str]:
    resources = stack.client("cloudformation").describe_stack_resources(StackName=stack.deployment.stack_name)
    return [r["PhysicalResourceId"] for r in resources["StackResources"] if r.get("ResourceType") == resource_type]


def _task_network(stack: LocalStack) -> dict[str, object]:
    sfn = stack.client("stepfunctions")
    definition = sfn.describe_state_machine(stateMachineArn=stack.deployment.state_machine_arn)["definition"]
    [network] = re.findall(r'"AwsvpcConfiguration":\s*(\{[^}]*\})', definition)
    subnets, groups = _SPLIT.findall(network)
    [assign] = re.findall(r'"AssignPublicIp":\s*"(\w+)"', network)
    return {"subnets": subnets.split(","), "security_groups": groups.split(","), "assign_public_ip": assign}


def test_tasks_run_in_the_public_network_the_stack_created(stack: LocalStack, api: TaskRunnerClient) -> None:
    # Given the local stack, deployed without network parameters
    ec2 = stack.client("ec2")
    [vpc_id] = _stack_resources(stack, "AWS::EC2::VPC")
    network = _task_network(stack)
    # Then the workflow runs tasks in the stack's two subnets, in two zones, with public IPs
    subnets = ec2.describe_subnets(SubnetIds=network["subnets"])["Subnets"]
    assert len(subnets) == 2 and {s["VpcId"] for s in subnets} == {vpc_id}
    assert len({s["AvailabilityZone"] for s in subnets}) == 2
    assert network["assign_public_ip"] == "ENABLED"
    # behind the stack's security group, which admits nothing and lets everything out
    [group] = ec2.describe_security_groups(GroupIds=network["security_groups"])["SecurityGroups"]
    assert group["VpcId"] == vpc_id and group["IpPermissions"] == []
    assert [(e["IpProtocol"], e["IpRanges"][0]["CidrIp"]) for e in group["IpPermissionsEgress"]] == [
        ("-1", "0.0.0.0/0")
    ]
    # and their route to the internet
    [gateway] = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])[
        "InternetGateways"
    ]
    # (moto's CloudFormation keeps subnet associations apart from their route table, where DescribeRouteTables
    # does not show them: tests/template/test_network.py checks the template associates both subnets)
    [route_table] = _stack_resources(stack, "AWS::EC2::RouteTable")
    tables = ec2.describe_route_tables(RouteTableIds=[route_table])
    routes = [r for t in tables["RouteTables"] for r in t["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    assert routes and {r["GatewayId"] for r in routes} == {gateway["InternetGatewayId"]}
    # When a task runs, its ECS task is attached to one of those subnets
    task = api.wait(api.submit(shell("true"))["task_id"])
    described = stack.client("ecs").describe_tasks(
        cluster=stack.deployment.outputs["ClusterName"], tasks=[task["ecs_task_arn"]]
    )["tasks"][0]
    attached = {d["value"] for a in described["attachments"] for d in a["details"] if d["name"] == "subnetId"}
    assert attached and attached <= set(network["subnets"])


def test_archived_log_objects_are_named_gz(stack: LocalStack, api: TaskRunnerClient) -> None:
    # Given a task whose output is archived
    marker = f"gz-{uuid.uuid4()}"
    api.wait(api.submit(shell(f"echo {marker}"))["task_id"])
    s3 = stack.client("s3")
    bucket = stack.deployment.outputs["ArchiveBucketName"]

    def keys_with_marker() -> list[str]:
        return [
            item["Key"]
            for item in s3.list_objects_v2(Bucket=bucket, Prefix="tasks/").get("Contents", [])
            if marker.encode() in _unzipped(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        ]

    # Then the archive object holding it is named for what it is: gzip data
    assert wait_until(keys_with_marker)
    assert all(key.endswith(".gz") for key in keys_with_marker())


def _unzipped(body: bytes) -> bytes:
    import gzip
    import zlib

    try:
        return gzip.decompress(body)
    except (OSError, EOFError, zlib.error):
        return body


def test_the_schedule_groups_and_schedules_names_fit_their_limits(stack: LocalStack) -> None:
    scheduler = stack.client("scheduler")
    group = stack.deployment.outputs["ScheduleGroupName"]
    assert len(group) <= 64
    assert group in {g["Name"] for g in scheduler.list_schedule_groups()["ScheduleGroups"]}
    for arn in stack.deployment.schedule_arns.values():
        schedule_group, name = arn.rsplit("/", 2)[-2:]
        assert len(name) <= 64
        assert scheduler.get_schedule(GroupName=schedule_group, Name=name)["Arn"] == arn
