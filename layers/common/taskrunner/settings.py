"""Environment variables, parsed once into one settings model. Nothing else reads os.environ.

Resources (tables, the cluster, the state machine, the scheduler's role, ...) have no defaults: a function that
was not given one must fail, not talk to a plausible-looking resource that is not its own. Each function says at
cold start which variables it needs (`taskrunner.wiring.require`, called by every handler module at import), and
fails there with one error naming every missing variable; reading a resource that is not set fails the same way,
so no code path can fall back to a guess. Values that are not resources keep defaults: the region comes from
AWS_REGION (or AWS_DEFAULT_REGION), the idempotency TTL and the log stream prefix are conventions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskrunner import fargate

#: The environment variables that name resources, each read through the property of the same meaning below.
RESOURCE_VARIABLES = (
    "TASKS_TABLE_NAME",
    "IDEMPOTENCY_TABLE_NAME",
    "STATE_MACHINE_ARN",
    "ECS_CLUSTER",
    "TASK_LOG_GROUP",
    "TASK_FAMILY_PREFIX",
    "TASK_ROLE_ARN",
    "TASK_EXECUTION_ROLE_ARN",
    "SCHEDULE_GROUP_NAME",
    "SCHEDULER_ROLE_ARN",
    "SCHEDULED_SUBMIT_FUNCTION_ARN",
    "SCHEDULES_DLQ_ARN",
)
REGION_VARIABLE = "AWS_REGION"


class MissingSettings(RuntimeError):
    """The environment lacks variables that the code about to run needs. The message names every one of them."""

    def __init__(self, variables: Iterable[str], who: str | None = None) -> None:
        self.variables = tuple(dict.fromkeys(variables))
        names = ", ".join(v if v != REGION_VARIABLE else f"{v} (or AWS_DEFAULT_REGION)" for v in self.variables)
        plural = "s" if len(self.variables) > 1 else ""
        super().__init__(
            f"{who or 'taskrunner'}: missing environment variable{plural} {names}. "
            "template.yaml sets them (Globals.Function.Environment or the function's own Environment); "
            "there are no defaults for resources."
        )


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    region: str
    #: AWS_LAMBDA_FUNCTION_NAME, to say which function an error is about
    function_name: str | None = None
    task_log_stream_prefix: str = "task"
    #: the price table's changes, read when the service is built (taskrunner.fargate.configured_price_table)
    price_table_json: str | None = None
    fargate_spot_discount_percent: str | None = None
    #: the ECR pull-through cache (`<registry>/<prefix>`) and the upstreams it caches (`ecr-public`, `docker-hub`),
    #: comma-separated; tasks of those upstreams' images pull through it (taskrunner.task_definitions.launch_image)
    pull_through_cache_prefix: str | None = None
    pull_through_cache_upstreams: str = ""
    idempotency_ttl_seconds: int = 86_400
    #: the reconciler (taskrunner.reconcile): grace past a task's timeout, and for a task to get an ECS task
    reconcile_grace_seconds: int = 300
    reconcile_launch_grace_seconds: int = 900
    #: tasks examined per run at most, and how far back to look for terminal tasks still awaiting their metering
    reconcile_max_tasks: int = 500
    #: (a task may wait 14 days in the queue, then run 14 days: 2 x 1,209,600 s, and a day of grace)
    reconcile_lookback_seconds: int = 2_505_600
    #: comma-separated tenants whose tasks the reconciler looks at, besides every tenant that has an item
    reconcile_tenants: str = "default"
    #: comma-separated SHA-256 hex digests of the deployment's admin API keys (the authorizer's), and the IAM role
    #: ARNs that are admins when the API uses IAM auth (taskrunner.tenants)
    admin_api_key_sha256: str = ""
    admin_principal_arns: str = ""
    #: the resource variables that are set (and not empty), by name; read them through the properties below
    resources: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Settings:
        region = env.get(REGION_VARIABLE) or env.get("AWS_DEFAULT_REGION")
        function_name = env.get("AWS_LAMBDA_FUNCTION_NAME") or None
        if not region:
            raise MissingSettings([REGION_VARIABLE], function_name)
        optional: dict[str, Any] = {
            field: env[variable]
            for field, variable in (
                ("task_log_stream_prefix", "TASK_LOG_STREAM_PREFIX"),
                ("price_table_json", "PRICE_TABLE_JSON"),
                ("fargate_spot_discount_percent", "FARGATE_SPOT_DISCOUNT_PERCENT"),
                ("pull_through_cache_prefix", "PULL_THROUGH_CACHE_PREFIX"),
                ("pull_through_cache_upstreams", "PULL_THROUGH_CACHE_UPSTREAMS"),
                ("idempotency_ttl_seconds", "IDEMPOTENCY_TTL_SECONDS"),
                ("reconcile_grace_seconds", "RECONCILE_GRACE_SECONDS"),
                ("reconcile_launch_grace_seconds", "RECONCILE_LAUNCH_GRACE_SECONDS"),
                ("reconcile_max_tasks", "RECONCILE_MAX_TASKS"),
                ("reconcile_lookback_seconds", "RECONCILE_LOOKBACK_SECONDS"),
                ("reconcile_tenants", "RECONCILE_TENANTS"),
                ("admin_api_key_sha256", "ADMIN_API_KEY_SHA256"),
                ("admin_principal_arns", "ADMIN_PRINCIPAL_ARNS"),
            )
            if env.get(variable)
        }
        resources = {name: env[name] for name in RESOURCE_VARIABLES if env.get(name)}
        return cls(region=region, function_name=function_name, resources=resources, **optional)

    def missing(self, variables: Iterable[str]) -> list[str]:
        """Those of `variables` (resource variables) that are not set."""
        variables = list(variables)
        unknown = [v for v in variables if v not in RESOURCE_VARIABLES]
        if unknown:
            raise ValueError(f"not resource variables: {unknown}; known: {RESOURCE_VARIABLES}")
        return [v for v in variables if v not in self.resources]

    def require(self, variables: Iterable[str], who: str | None = None) -> Settings:
        """These settings, after checking that every one of `variables` is set (else `MissingSettings`)."""
        missing = self.missing(variables)
        if missing:
            raise MissingSettings(missing, who or self.function_name)
        return self

    def resource(self, variable: str) -> str:
        """The value of a resource variable; `MissingSettings` if it is not set."""
        self.require([variable])
        return self.resources[variable]

    @property
    def tasks_table(self) -> str:
        return self.resource("TASKS_TABLE_NAME")

    @property
    def idempotency_table(self) -> str:
        return self.resource("IDEMPOTENCY_TABLE_NAME")

    @property
    def state_machine_arn(self) -> str:
        return self.resource("STATE_MACHINE_ARN")

    @property
    def cluster(self) -> str:
        return self.resource("ECS_CLUSTER")

    @property
    def task_log_group(self) -> str:
        return self.resource("TASK_LOG_GROUP")

    @property
    def task_family_prefix(self) -> str:
        return self.resource("TASK_FAMILY_PREFIX")

    @property
    def task_role_arn(self) -> str:
        """The role tasks run as: every task definition names it (taskrunner.task_definitions)."""
        return self.resource("TASK_ROLE_ARN")

    @property
    def task_execution_role_arn(self) -> str:
        """The role ECS pulls images and writes logs with: every task definition names it."""
        return self.resource("TASK_EXECUTION_ROLE_ARN")

    @property
    def schedule_group(self) -> str:
        return self.resource("SCHEDULE_GROUP_NAME")

    @property
    def scheduler_role_arn(self) -> str:
        return self.resource("SCHEDULER_ROLE_ARN")

    @property
    def scheduled_submit_function_arn(self) -> str:
        return self.resource("SCHEDULED_SUBMIT_FUNCTION_ARN")

    @property
    def schedules_dead_letter_queue_arn(self) -> str:
        return self.resource("SCHEDULES_DLQ_ARN")

    def price_table(self) -> fargate.PriceTable | None:
        """The shipped Fargate price table as PRICE_TABLE_JSON and FARGATE_SPOT_DISCOUNT_PERCENT change it; None when
        they do not. A malformed value raises InvalidPriceTable, naming the variable and what is wrong."""
        if not (self.price_table_json or self.fargate_spot_discount_percent):
            return None
        return fargate.configured_price_table(self.price_table_json, self.fargate_spot_discount_percent)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_environment(os.environ)
