"""The template's resources, created in moto in-process for integration tests.

Table definitions are read from template.yaml so that tests and the deployed stack cannot drift."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from samtranslator.yaml_helper import yaml_parse
from taskrunner.adapters import SLOT_ATTRIBUTE
from taskrunner.settings import Settings

from taskrunner_local.deploy import render_definition

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
STATE_MACHINE = ROOT / "statemachines" / "run_task.asl.json"
ACCOUNT = "123456789012"
REGION = "us-east-1"


def template() -> dict[str, Any]:
    return yaml_parse(TEMPLATE.read_text())


def table_request(logical_id: str, name: str) -> dict[str, Any]:
    props = template()["Resources"][logical_id]["Properties"]
    request = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props["BillingMode"],
    }
    if "GlobalSecondaryIndexes" in props:
        request["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return request


def render_state_machine(substitutions: dict[str, str]) -> str:
    return render_definition(STATE_MACHINE.read_text(), substitutions)


@dataclass
class Stack:
    tasks_table: str = "tasks"
    idempotency_table: str = "idempotency"
    cluster: str = "taskrunner"
    log_group: str = "/taskrunner/tasks"
    # The ARNs that create() gets from moto, known beforehand so that environment() is complete before the stack
    # exists (function modules check their environment when they are imported).
    state_machine_arn: str = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:run-task"
    schedule_group: str = "taskrunner"
    schedules_dlq_arn: str = f"arn:aws:sqs:{REGION}:{ACCOUNT}:schedules-dlq"
    # The roles every task definition names (the functions name task definition families after them).
    task_role_arn: str = f"arn:aws:iam::{ACCOUNT}:role/task"
    task_execution_role_arn: str = f"arn:aws:iam::{ACCOUNT}:role/task-execution"

    @property
    def cluster_arn(self) -> str:
        return f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{self.cluster}"

    def environment(self) -> dict[str, str]:
        return {
            "TASKS_TABLE_NAME": self.tasks_table,
            "IDEMPOTENCY_TABLE_NAME": self.idempotency_table,
            "STATE_MACHINE_ARN": self.state_machine_arn,
            "ECS_CLUSTER": self.cluster,
            "TASK_LOG_GROUP": self.log_group,
            "TASK_LOG_STREAM_PREFIX": "task",
            "TASK_FAMILY_PREFIX": "taskrunner",
            "TASK_ROLE_ARN": self.task_role_arn,
            "TASK_EXECUTION_ROLE_ARN": self.task_execution_role_arn,
            "SCHEDULE_GROUP_NAME": self.schedule_group,
            "SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/scheduler",
            "SCHEDULED_SUBMIT_FUNCTION_ARN": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:scheduled-submit",
            "SCHEDULES_DLQ_ARN": self.schedules_dlq_arn,
        }

    def settings(self) -> Settings:
        """The functions' settings for this stack, as they read them from environment() in the region."""
        return Settings.from_environment({"AWS_REGION": REGION, **self.environment()})

    def substitutions(self) -> dict[str, str]:
        fn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function"
        return {
            "ClusterArn": self.cluster_arn,
            "SubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
            "SecurityGroupIds": "sg-0123456789abcdef0",
            "AssignPublicIp": "DISABLED",
            "TasksTableName": self.tasks_table,
            "FinalizeFunctionArn": f"{fn}:finalize",
            "StopTaskFunctionArn": f"{fn}:stop-task",
            "QueueFunctionArn": f"{fn}:queue",
            "SlotAttribute": SLOT_ATTRIBUTE,
            "TaskExecutionRoleArn": self.task_execution_role_arn,
            "TaskRoleArn": self.task_role_arn,
            "TaskLogGroup": self.log_group,
            "LogStreamPrefix": "task",
            "Region": REGION,
        }

    def create(self) -> Stack:
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(**table_request("TasksTable", self.tasks_table))
        ddb.create_table(**table_request("IdempotencyTable", self.idempotency_table))
        boto3.client("ecs", region_name=REGION).create_cluster(clusterName=self.cluster)
        boto3.client("scheduler", region_name=REGION).create_schedule_group(Name=self.schedule_group)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="schedules-dlq")["QueueUrl"]
        self.schedules_dlq_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        boto3.client("logs", region_name=REGION).create_log_group(logGroupName=self.log_group)
        role = boto3.client("iam", region_name=REGION).create_role(
            RoleName="state-machine",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        self.state_machine_arn = boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name="run-task", definition=render_state_machine(self.substitutions()), roleArn=role
        )["stateMachineArn"]
        return self


def add_container_instance(stack: Stack) -> None:
    """One more EC2 container instance in moto's cluster (each has room for a few dozen small tasks)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    document = json.dumps({"instanceId": instance["InstanceId"], "region": REGION, "accountId": ACCOUNT})
    boto3.client("ecs", region_name=REGION).register_container_instance(
        cluster=stack.cluster, instanceIdentityDocument=document
    )


def run_ecs_task(stack: Stack, started_by: str, *, family: str = "moto-ec2", group: str | None = None) -> str:
    """Start a real ECS task in moto's cluster and return its ARN.

    Uses the EC2 launch type: moto's Fargate RunTask needs the local stack's patches (DESIGN §3)."""
    ecs = boto3.client("ecs", region_name=REGION)
    if not ecs.list_container_instances(cluster=stack.cluster)["containerInstanceArns"]:
        add_container_instance(stack)
    ecs.register_task_definition(
        family=family,
        containerDefinitions=[{"name": "main", "image": "busybox", "memory": 128, "essential": True}],
    )
    extra = {"group": group} if group else {}
    [task] = ecs.run_task(cluster=stack.cluster, taskDefinition=family, startedBy=started_by, count=1, **extra)["tasks"]
    return str(task["taskArn"])
