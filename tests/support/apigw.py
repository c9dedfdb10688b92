"""API Gateway HTTP API (payload format 2.0) events, as API Gateway sends them to the API function."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

#: the authorizer context of the deployment's admin key (taskrunner.tenants.authorizer_context)
ADMIN_PRINCIPAL: dict[str, Any] = {"tenant": "default", "admin": True, "key_id": "admin"}

ROUTES = [
    ("POST", "/tasks"),
    ("GET", "/tasks"),
    ("GET", "/tasks/{task_id}"),
    ("POST", "/tasks/{task_id}/cancel"),
    ("GET", "/tasks/{task_id}/logs"),
    ("GET", "/usage"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("POST", "/schedules"),
    ("GET", "/schedules"),
    ("GET", "/schedules/{name}"),
    ("PUT", "/schedules/{name}"),
    ("DELETE", "/schedules/{name}"),
    ("POST", "/schedules/{name}/run"),
    ("POST", "/tenants"),
    ("GET", "/tenants"),
    ("GET", "/tenants/{name}"),
    ("PUT", "/tenants/{name}"),
    ("DELETE", "/tenants/{name}"),
    ("POST", "/tenants/{name}/keys"),
    ("DELETE", "/tenants/{name}/keys/{key_id}"),
]


def _route_key(method: str, path: str) -> tuple[str, dict[str, str] | None]:
    parts = path.strip("/").split("/")
    for route_method, template in ROUTES:
        t_parts = template.strip("/").split("/")
        if route_method != method or len(t_parts) != len(parts):
            continue
        params = {}
        for t, p in zip(t_parts, parts, strict=True):
            if t.startswith("{"):
                params[t.strip("{}")] = p
            elif t != p:
                break
        else:
            return f"{method} {template}", params or None
    return f"{method} {path}", None


def http_event(
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    base64_body: bool = False,
    principal: dict[str, Any] | None = ADMIN_PRINCIPAL,
) -> dict[str, Any]:
    """An event as API Gateway hands it to the API function; `principal` is the Lambda authorizer's context
    (`requestContext.authorizer.lambda`), None for no authorizer context at all."""
    route_key, path_params = _route_key(method, path)
    raw_body = body if isinstance(body, str) or body is None else json.dumps(body)
    all_headers = {"host": "api.example.com", "user-agent": "curl/8.5.0", "accept": "*/*"}
    if raw_body is not None:
        all_headers["content-type"] = "application/json"
        all_headers["content-length"] = str(len(raw_body.encode()))
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    if base64_body and raw_body is not None:
        raw_body = base64.b64encode(raw_body.encode()).decode()
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "cookies": [],
        "headers": all_headers,
        "queryStringParameters": query or None,
        "pathParameters": path_params,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api1234567",
            "domainName": "api1234567.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "api1234567",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": route_key,
            "stage": "$default",
            "time": "27/Nov/2026:22:23:21 +0000",
            "timeEpoch": 1795818201000,
            **({"authorizer": {"lambda": dict(principal)}} if principal is not None else {}),
        },
        "body": raw_body,
        "isBase64Encoded": base64_body,
    }


def authorizer_event(method: str, path: str, *, authorization: str) -> dict[str, Any]:
    """The event an HTTP API Lambda authorizer gets (payload format 2.0, type REQUEST) for a request carrying the
    Authorization header `authorization` (its identity source)."""
    request = http_event(method, path, headers={"Authorization": authorization}, principal=None)
    context = request["requestContext"]
    return {
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": f"arn:aws:execute-api:us-east-1:{context['accountId']}:{context['apiId']}/$default/{method}{path}",
        "identitySource": [authorization],
        **{key: request[key] for key in ("routeKey", "rawPath", "rawQueryString", "cookies", "headers")},
        "queryStringParameters": request["queryStringParameters"],
        "requestContext": context,
        "pathParameters": request["pathParameters"],
        "stageVariables": None,
    }
