"""moto's ECS as a Fargate agent finds it, in-process: an account of a test's own with a cluster and a task definition,
and tasks as RunTask and the lifecycle patch leave them, for the agent to run, adopt or settle."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.ecs.models import Task, ecs_backends
from moto.logs.models import logs_backends

from taskrunner_local.aws_inside import AwsInside
from taskrunner_local.moto_patches import TASK_LIFECYCLE_ATTRIBUTES

REGION = "us-east-1"
CLUSTER = "tasks"
CONTAINER = "main"
STREAM_PREFIX = "task"


def new_account() -> str:
    """An account id no other test uses: its backends are the test's own."""
    return f"{uuid.uuid4().int % 10**12:012d}"


@dataclass
class EcsAccount:
    """moto's ECS and CloudWatch Logs backends of an account, with one cluster and one task definition (`family`,
    one essential container of `image`, logging with awslogs into `log_group`)."""

    family: str
    image: str = "busybox"
    account: str = field(default_factory=new_account)
    #: how long before now the tasks of `task()` were accepted
    task_age: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        self.cluster = self.backend.create_cluster(CLUSTER)
        self.definition = self.backend.register_task_definition(
            self.family,
            [
                {
                    "name": CONTAINER,
                    "image": self.image,
                    "essential": True,
                    "memory": 512,
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {"awslogs-group": self.log_group, "awslogs-stream-prefix": STREAM_PREFIX},
                    },
                }
            ],
            network_mode="bridge",  # no subnet to give awsvpc: the agent does not look at it
            cpu="256",
            memory="512",
        )

    @property
    def log_group(self) -> str:
        return f"/taskrunner/{self.family}"

    @property
    def backend(self) -> Any:
        return ecs_backends[self.account][REGION]

    @property
    def aws(self) -> AwsInside:
        return AwsInside(self.account, REGION)

    def task(self, script: str = "true", *, status: str = "PROVISIONING", started: bool = False) -> Any:
        """A task of the definition running `sh -c script`, in the cluster, as RunTask and the lifecycle patch leave it
        (PROVISIONING: not yet given to an agent); `status` and `started`: as an agent left it."""
        task: Any = Task(
            self.cluster,
            self.definition,
            None,
            None,
            self.backend,
            group=f"family:{self.family}",
            launch_type="FARGATE",
            overrides={"containerOverrides": [{"name": CONTAINER, "command": ["sh", "-c", script]}]},
        )
        task._status = status
        task.created_at = datetime.now(UTC) - self.task_age
        for attribute in TASK_LIFECYCLE_ATTRIBUTES:
            if not hasattr(task, attribute):
                setattr(task, attribute, None)
        for container in task.containers:
            container.exitCode = None
            container.reason = None
            container.last_status = status if status != "PROVISIONING" else "PENDING"
        if started:
            task.pull_started_at = task.pull_stopped_at = task.started_at = task.created_at + timedelta(seconds=1)
        self.backend.tasks.setdefault(self.cluster.name, {})[task.task_arn] = task
        return task

    def stream(self, task: Any) -> list[str]:
        """The messages of the task's log stream, in order."""
        group = logs_backends[self.account][REGION].groups.get(self.log_group)
        stream = group.streams.get(f"{STREAM_PREFIX}/{CONTAINER}/{task.id}") if group is not None else None
        return [event.message for event in stream.events] if stream is not None else []
