"""Environment variables, parsed once into one settings model. Nothing else reads os.environ."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field


class Settings(BaseModel):
    tasks_table: str = Field("tasks", validation_alias="TASKS_TABLE_NAME")
    idempotency_table: str = Field("idempotency", validation_alias="IDEMPOTENCY_TABLE_NAME")
    state_machine_arn: str = Field(
        "arn:aws:states:us-east-1:123456789012:stateMachine:run-task", validation_alias="STATE_MACHINE_ARN"
    )
    cluster: str = Field("taskrunner", validation_alias="ECS_CLUSTER")
    task_log_group: str = Field("/taskrunner/tasks", validation_alias="TASK_LOG_GROUP")
    task_log_stream_prefix: str = Field("task", validation_alias="TASK_LOG_STREAM_PREFIX")
    task_family_prefix: str = Field("taskrunner", validation_alias="TASK_FAMILY_PREFIX")
    region: str = Field("us-east-1", validation_alias="AWS_REGION")
    price_table_json: str | None = Field(None, validation_alias="PRICE_TABLE_JSON")
    idempotency_ttl_seconds: int = Field(86_400, validation_alias="IDEMPOTENCY_TTL_SECONDS")
    schedule_group: str = Field("default", validation_alias="SCHEDULE_GROUP_NAME")
    scheduler_role_arn: str = Field("arn:aws:iam::123456789012:role/scheduler", validation_alias="SCHEDULER_ROLE_ARN")
    scheduled_submit_function_arn: str = Field(
        "arn:aws:lambda:us-east-1:123456789012:function:scheduled-submit",
        validation_alias="SCHEDULED_SUBMIT_FUNCTION_ARN",
    )
    schedules_dead_letter_queue_arn: str | None = Field(None, validation_alias="SCHEDULES_DLQ_ARN")

    def price_table(self) -> dict[str, dict[str, Any]] | None:
        return json.loads(self.price_table_json) if self.price_table_json else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env = dict(os.environ)
    env.setdefault("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1"))
    known = {f.validation_alias for f in Settings.model_fields.values()}
    return Settings.model_validate({k: v for k, v in env.items() if k in known})
