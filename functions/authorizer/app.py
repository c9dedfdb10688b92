"""HTTP API Lambda authorizer (payload format 2.0, simple responses): who the bearer API key is.

It always authorizes, and says in its context who the caller is: `{"tenant", "admin", "key_id"}` for a valid key,
`{"tenant": "", "reason"}` otherwise. The API function answers a context without a tenant 401 in the API's own
error shape (API Gateway's own 403 for an unauthorized request would be another shape, with no reason).

It imports only what a key check needs (no taskrunner.wiring, no Powertools event handler, no tracer): a cold start
here delays a request that has not reached the API yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from taskrunner.aws import client
from taskrunner.settings import get_settings
from taskrunner.tenant_store import DynamoTenantStore
from taskrunner.tenants import Refusal, TenantService, authorizer_context

#: the service name of taskrunner.observability's logger, which this function does not import (its tracer and
#: metrics would add some 100 ms to every cold start)
logger = Logger(service="taskrunner")

_settings = get_settings()
_settings.require(["TASKS_TABLE_NAME"])  # cold start: fail now, naming the variable


@cache
def tenant_service() -> TenantService:
    return TenantService.from_settings(_settings, DynamoTenantStore(_settings.tasks_table, client("dynamodb")))


def authorization_header(event: Mapping[str, Any]) -> object:
    """The Authorization header as API Gateway passes it (payload 2.0 lowercases names; any case is read)."""
    headers = event.get("headers")
    if not isinstance(headers, Mapping):
        return None
    return next((value for name, value in headers.items() if str(name).lower() == "authorization"), None)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcome = tenant_service().authenticate_header(authorization_header(event))
    if isinstance(outcome, Refusal):
        logger.info("unauthenticated", reason=outcome.reason, route=event.get("routeKey"))
    return {"isAuthorized": True, "context": authorizer_context(outcome)}
