"""`Idempotency-Key` for task submission, through Powertools idempotency (DynamoDB persistence).

The same key with the same spec returns the first call's task; the same key with a different spec raises
`IdempotencyValidationError` (409 at the edge). Keys are scoped by tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer
from pydantic import BaseModel

from taskrunner.aws import client
from taskrunner.models import Task, TaskSpec
from taskrunner.settings import get_settings
from taskrunner.wiring import task_service


class SubmitRequest(BaseModel):
    tenant: str
    idempotency_key: str
    spec: TaskSpec


@cache
def idempotency_config() -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath="[tenant, idempotency_key]",
        payload_validation_jmespath="spec",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=get_settings().idempotency_ttl_seconds,
    )


def register_lambda_context(context: Any) -> None:
    """Lets an in-progress record expire with the invocation, so a crashed attempt can be retried."""
    idempotency_config().register_lambda_context(context)


@cache
def idempotent_submit() -> Callable[..., Task]:
    settings = get_settings()
    persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=client("dynamodb"))
    config = idempotency_config()

    @idempotent_function(  # type: ignore[untyped-decorator]
        data_keyword_argument="request",
        config=config,
        persistence_store=persistence,
        output_serializer=PydanticSerializer(Task),
    )
    def submit(request: SubmitRequest) -> Task:
        return task_service().submit(request.tenant, request.spec)

    return submit  # type: ignore[no-any-return]


def submit_once(tenant: str, idempotency_key: str, spec: TaskSpec) -> Task:
    return idempotent_submit()(request=SubmitRequest(tenant=tenant, idempotency_key=idempotency_key, spec=spec))
