"""Task definitions: the family a task's revision belongs to, and the cache of registered revisions.

RunTask cannot override the image, so every image needs a task definition; one is registered per family and
reused by every task of the family. A revision embeds more than the image: the task and execution roles, the
log group with its stream prefix and region. A family must therefore change whenever one of those does (the
stack recreated under the same name, a role replaced): a revision naming a role that no longer exists fails
RunTask on iam:PassRole, for every later task of the family.

The state machine registers a family's first revision and records its ARN in the tasks table, in one item per
family (`task_definition_key`); the service looks the ARN up there when it starts an execution, so that a task
of a known image goes straight to RunTask (no ECS call, no registration).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from botocore.exceptions import ClientError

from taskrunner.models import TaskSpec
from taskrunner.observability import logger
from taskrunner.settings import Settings

#: The cache item of a family: pk `TASKDEF#<family>`, sk `TASKDEF` (statemachines/run_task.asl.json writes it).
TASK_DEFINITION_KEY_PREFIX = "TASKDEF#"
TASK_DEFINITION_SORT_KEY = "TASKDEF"
#: The cache item's attribute holding the registered revision's ARN.
TASK_DEFINITION_ARN_ATTRIBUTE = "task_definition_arn"


def task_definition_family(settings: Settings, spec: TaskSpec) -> str:
    """The family of `spec`'s task definition: one per image, architecture and ephemeral storage (what RunTask
    cannot override) and per everything else a revision embeds (roles, log group, stream prefix, region).

    The name is `<prefix>-<architecture>-<storage>g-<digest>`, at most 164 characters (ECS allows 255)."""
    embedded = {
        "image": launch_image(settings, spec.image),
        "task_role_arn": settings.task_role_arn,
        "execution_role_arn": settings.task_execution_role_arn,
        "log_group": settings.task_log_group,
        "log_stream_prefix": settings.task_log_stream_prefix,
        "region": settings.region,
    }
    digest = hashlib.sha256(json.dumps(embedded, sort_keys=True).encode()).hexdigest()[:24]
    return f"{settings.task_family_prefix}-{spec.architecture.value.lower()}-{spec.ephemeral_storage_gib}g-{digest}"


#: Docker Hub's registry names: an image without a registry comes from Docker Hub.
DOCKER_HUB_REGISTRIES = ("docker.io", "index.docker.io", "registry-1.docker.io")
ECR_PUBLIC_REGISTRY = "public.ecr.aws"


def launch_image(settings: Settings, image: str) -> str:
    """The image reference a task definition names for `image`: through the ECR pull-through cache when the
    deployment has one for the image's upstream registry (ECR's `<prefix>/docker-hub/...` and
    `<prefix>/ecr-public/...` repositories), else `image` itself. Tasks in private subnets then pull from this
    account's ECR in the region, not through one NAT address that Docker Hub rate-limits."""
    prefix = settings.pull_through_cache_prefix
    upstreams = {u.strip() for u in settings.pull_through_cache_upstreams.split(",") if u.strip()}
    if not prefix:
        return image
    first, _, rest = image.partition("/")
    has_registry = bool(rest) and ("." in first or ":" in first or first == "localhost")
    if not has_registry or first in DOCKER_HUB_REGISTRIES:
        path = rest if has_registry else image
        if "docker-hub" not in upstreams:
            return image
        if "/" not in path.split("@", 1)[0].split(":", 1)[0]:
            path = f"library/{path}"  # an official image: Docker Hub's `library` namespace
        return f"{prefix}/docker-hub/{path}"
    if first == ECR_PUBLIC_REGISTRY and "ecr-public" in upstreams:
        return f"{prefix}/ecr-public/{rest}"
    return image


def task_definition_key(family: str) -> dict[str, Any]:
    """The key of `family`'s cache item in the tasks table."""
    return {"pk": {"S": f"{TASK_DEFINITION_KEY_PREFIX}{family}"}, "sk": {"S": TASK_DEFINITION_SORT_KEY}}


class DynamoTaskDefinitionCache:
    """The registered revisions the state machine recorded in the tasks table (`TaskDefinitionCache`)."""

    def __init__(self, table: str, client: Any) -> None:
        self.table = table
        self.ddb = client

    def lookup(self, family: str) -> str | None:
        """The recorded revision of `family`, or None. A miss costs little (the workflow finds or registers the
        revision itself), so a failed read is one: it must not fail a submission."""
        try:
            item = self.ddb.get_item(
                TableName=self.table,
                Key=task_definition_key(family),
                ProjectionExpression=TASK_DEFINITION_ARN_ATTRIBUTE,
            ).get("Item")
        except ClientError as exc:
            logger.warning("could not read the task definition cache", family=family, error=str(exc))
            return None
        arn = (item or {}).get(TASK_DEFINITION_ARN_ATTRIBUTE, {}).get("S")
        return str(arn) if arn else None

    def forget(self, family: str) -> None:
        """Drop `family`'s recorded revision (ECS no longer runs it): the next task of the family registers anew."""
        try:
            self.ddb.delete_item(TableName=self.table, Key=task_definition_key(family))
        except ClientError as exc:
            logger.warning("could not forget a task definition", family=family, error=str(exc))


#: What ECS says when RunTask names a revision it will not run any more (deregistered: INACTIVE, or deleted).
_UNUSABLE_TASK_DEFINITION = re.compile(
    r"task ?definition (is inactive|.*(not found|does not exist|is being deleted))|unable to find task ?definition",
    re.IGNORECASE,
)


def names_an_unusable_task_definition(reason: str | None) -> bool:
    """Whether a workflow error's reason says that the task definition itself cannot be run."""
    return bool(reason and _UNUSABLE_TASK_DEFINITION.search(reason))
