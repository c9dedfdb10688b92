"""Task definition families and the cached task definition the service hands the workflow (Given / When / Then).

A task definition revision embeds the task and execution roles, the log group, its stream prefix and the region:
a family reused after one of them changed (the stack recreated under the same name, a role replaced) would make
RunTask fail on iam:PassRole for good, so the family is named after all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from taskrunner.models import Architecture, TaskSpec, TaskStatus
from taskrunner.service import TaskService

from tests.support.fakes import (
    FakeCompute,
    FakeLogs,
    InMemoryTaskDefinitionCache,
    InMemoryTaskStore,
    RecordingOrchestrator,
)
from tests.support.stack import REGION, Stack

TASK_DEFINITION_ARN = "arn:aws:ecs:us-east-1:123456789012:task-definition/taskrunner-x86_64-20g-0123abcd:7"
SPEC = TaskSpec(image="python:3.12-slim")


@dataclass
class World:
    store: InMemoryTaskStore = field(default_factory=InMemoryTaskStore)
    orchestrator: RecordingOrchestrator = field(default_factory=RecordingOrchestrator)
    cache: InMemoryTaskDefinitionCache = field(default_factory=InMemoryTaskDefinitionCache)
    environment: dict[str, str] = field(default_factory=dict)

    def service(self) -> TaskService:
        from taskrunner.settings import Settings

        settings = Settings.from_environment({"AWS_REGION": REGION, **Stack().environment(), **self.environment})
        return TaskService(
            store=self.store,
            orchestrator=self.orchestrator,
            compute=FakeCompute(),
            logs=FakeLogs(),
            settings=settings,
            task_definitions=self.cache,
        )

    def execution_input(self, spec: TaskSpec = SPEC) -> dict[str, Any]:
        task = self.service().submit("default", spec)
        return self.orchestrator.started[task.task_id]


def family_of(spec: TaskSpec = SPEC, **environment: str) -> str:
    return str(World(environment=environment).execution_input(spec)["task_definition"]["family"])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASK_ROLE_ARN", "arn:aws:iam::123456789012:role/taskrunner-TaskRole-NEW"),
        ("TASK_EXECUTION_ROLE_ARN", "arn:aws:iam::123456789012:role/taskrunner-TaskExecutionRole-NEW"),
        ("TASK_LOG_GROUP", "/taskrunner-2/tasks"),
        ("TASK_LOG_STREAM_PREFIX", "job"),
        ("AWS_REGION", "us-east-2"),
    ],
)
def test_a_family_is_not_reused_once_what_its_revisions_embed_changes(variable: str, value: str) -> None:
    # Given a stack whose tasks' roles, log group, stream prefix or region are not what they were
    # When the same image is submitted before and after the change
    before, after = family_of(), family_of(**{variable: value})
    # Then its task definition family differs: revisions naming the old role are never run again
    assert before != after
    assert after.startswith("taskrunner-")


def test_a_family_is_shared_by_tasks_that_can_share_a_task_definition() -> None:
    # Given two tasks of one image that differ only in what RunTask overrides (command, sizes, environment)
    other = TaskSpec(image=SPEC.image, command=["true"], cpu=1024, memory=2048, environment={"A": "1"})
    # Then they share a family; another image, architecture or storage does not
    assert family_of(other) == family_of()
    for different in (
        TaskSpec(image="python:3.13-slim"),
        TaskSpec(image=SPEC.image, architecture=Architecture.ARM64),
        TaskSpec(image=SPEC.image, ephemeral_storage_gib=50),
    ):
        assert family_of(different) != family_of()


def test_a_family_name_is_one_ecs_accepts() -> None:
    # ECS: up to 255 letters, digits, hyphens and underscores
    family = family_of(TASK_FAMILY_PREFIX="a-stack-name-of-128-characters-" + "x" * 97)
    assert len(family) <= 255
    assert all(char.isalnum() or char in "-_" for char in family)


def test_a_cached_task_definition_is_handed_to_the_workflow() -> None:
    # Given an image whose task definition the workflow has registered and recorded
    world = World()
    family = family_of()
    world.cache.registered[family] = TASK_DEFINITION_ARN
    # When a task of it is submitted
    execution_input = world.execution_input()
    # Then the execution starts with it prepared (the workflow neither describes nor registers one)
    assert execution_input["prepared"] == {"task_definition_arn": TASK_DEFINITION_ARN}
    assert world.cache.lookups == [family]


def test_a_new_image_starts_without_a_task_definition() -> None:
    # Given an image nobody has run
    world = World()
    # When a task of it is submitted
    execution_input = world.execution_input()
    # Then the workflow is left to register one
    assert "prepared" not in execution_input


def test_the_execution_input_carries_the_status_key_of_provisioning() -> None:
    # Given the store's status index key for a task in PROVISIONING (it shards the index)
    world = World()
    # When a task is submitted
    execution_input = world.execution_input()
    # Then the workflow is told the key MarkProvisioning writes
    task = world.store.get(execution_input["task_id"])
    assert task is not None
    assert execution_input["status_keys"] == {"PROVISIONING": world.store.status_key(task, TaskStatus.PROVISIONING)}


CACHE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/taskrunner"


@pytest.mark.parametrize(
    ("upstreams", "image", "launched"),
    [
        ("ecr-public,docker-hub", "python:3.12-slim", f"{CACHE}/docker-hub/library/python:3.12-slim"),
        ("ecr-public,docker-hub", "busybox", f"{CACHE}/docker-hub/library/busybox"),
        ("ecr-public,docker-hub", "grafana/k6:0.50.0", f"{CACHE}/docker-hub/grafana/k6:0.50.0"),
        ("ecr-public,docker-hub", "docker.io/library/redis:7", f"{CACHE}/docker-hub/library/redis:7"),
        ("ecr-public,docker-hub", "docker.io/redis:7", f"{CACHE}/docker-hub/library/redis:7"),
        ("ecr-public,docker-hub", "public.ecr.aws/lambda/python:3.13", f"{CACHE}/ecr-public/lambda/python:3.13"),
        # an upstream without a cache rule (Docker Hub needs credentials) and other registries pull directly
        ("ecr-public", "python:3.12-slim", "python:3.12-slim"),
        ("ecr-public,docker-hub", "ghcr.io/org/tool:1", "ghcr.io/org/tool:1"),
        ("ecr-public,docker-hub", "localhost/taskrunner/busybox", "localhost/taskrunner/busybox"),
        ("ecr-public,docker-hub", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1", None),
    ],
)
def test_images_of_cached_upstreams_are_pulled_through_the_ecr_cache(upstreams, image, launched) -> None:
    world = World(environment={"PULL_THROUGH_CACHE_PREFIX": CACHE, "PULL_THROUGH_CACHE_UPSTREAMS": upstreams})
    execution_input = world.execution_input(TaskSpec(image=image))
    assert execution_input["task_definition"]["image"] == (launched or image)
    # the task keeps the image its user asked for
    assert world.store.get(execution_input["task_id"]).spec.image == image


def test_without_a_cache_images_are_launched_as_given_and_turning_it_on_changes_the_family() -> None:
    spec = TaskSpec(image="python:3.12-slim")
    assert World().execution_input(spec)["task_definition"]["image"] == "python:3.12-slim"
    cached = {"PULL_THROUGH_CACHE_PREFIX": CACHE, "PULL_THROUGH_CACHE_UPSTREAMS": "docker-hub"}
    assert family_of(spec) != family_of(spec, **cached)


@pytest.mark.parametrize(
    ("reason", "unusable"),
    [
        ("ECS.ClientException: TaskDefinition is inactive (Service: AmazonECS; Status Code: 400)", True),
        ("ECS.ClientException: Unable to find task definition 'taskrunner-x86_64-20g-0123:3'", True),
        ("ECS.ClientException: The specified task definition does not exist.", True),
        ("ECS.ClientException: Task definition is being deleted", True),
        ("AmazonECS.Unknown: RunTask returned failures: RESOURCE:ENI", False),
        ("ECS.AmazonECSException: Rate exceeded", False),
        ("ECS.InvalidParameterException: No Fargate configuration exists for given values", False),
        (None, False),
    ],
)
def test_errors_that_name_an_unusable_task_definition_are_recognised(reason, unusable) -> None:
    from taskrunner.task_definitions import names_an_unusable_task_definition

    assert names_an_unusable_task_definition(reason) is unusable
