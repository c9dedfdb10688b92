"""Tenants over the API function and the authorizer function: API keys made by the administration routes are
checked by the authorizer, whose context the API function gets (as API Gateway hands it on), on moto."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from taskrunner.tenants import key_digest, new_api_key

from tests.integration.conftest import invoke
from tests.support.apigw import ADMIN_PRINCIPAL, ROUTES, http_event
from tests.support.functions import cold_start, function_environment, load_function
from tests.support.lambda_context import LambdaContext

api = load_function("api")
authorizer = load_function("authorizer")
ADMIN_KEY, _, ADMIN_DIGEST = new_api_key()
SCHEDULE = {"name": "nightly", "schedule_expression": "cron(0 3 * * ? *)", "task": {"image": "busybox"}}


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        return self.body["error"]["code"] if isinstance(self.body, dict) and "error" in self.body else None


def call(method: str, path: str, principal: dict[str, Any] | None = ADMIN_PRINCIPAL, **kwargs: Any) -> Answer:
    response = invoke(api, http_event(method, path, principal=principal, **kwargs))
    body = response["body"]
    parsed = json.loads(body) if body and body.lstrip().startswith(("{", "[")) else body
    return Answer(response["statusCode"], parsed, response.get("headers") or {})


def authorizer_event(headers: Any) -> dict[str, Any]:
    """The HTTP API Lambda authorizer event (payload format 2.0, type REQUEST)."""
    return {
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": "arn:aws:execute-api:us-east-1:123456789012:api1234567/$default/GET/tasks",
        "identitySource": [headers.get("authorization", "")] if isinstance(headers, dict) else [],
        "routeKey": "GET /tasks",
        "rawPath": "/tasks",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {"http": {"method": "GET", "path": "/tasks"}, "routeKey": "GET /tasks"},
    }


def authorize(headers: Any, function: Any = authorizer) -> dict[str, Any]:
    """The authorizer's context for these request headers (it always authorizes)."""
    response = function.lambda_handler(authorizer_event(headers), LambdaContext(function_name="authorizer"))
    assert response["isAuthorized"] is True and set(response) == {"isAuthorized", "context"}, response
    context: dict[str, Any] = response["context"]
    assert all(isinstance(v, str | bool) for v in context.values()), context  # what API Gateway hands on
    return context


def context_of(key: str) -> dict[str, Any]:
    return authorize({"authorization": f"Bearer {key}"})


@pytest.fixture(autouse=True)
def fresh_authorizer(stack):
    """The authorizer's service holds a client: a new one for each test's AWS endpoint."""
    authorizer.tenant_service.cache_clear()
    yield
    authorizer.tenant_service.cache_clear()


def create(name: str, **quotas: Any) -> dict[str, Any]:
    answer = call("POST", "/tenants", body={"name": name, "quotas": quotas})
    assert answer.status == 201, answer.body
    return answer.body  # type: ignore[no-any-return]


def assert_unauthenticated(context: dict[str, Any]) -> str:
    assert context["tenant"] == "" and context["reason"], context
    answer = call("GET", "/tasks", principal=context)
    assert answer.status == 401 and answer.code == "UNAUTHENTICATED", answer.body
    return str(context["reason"])


# -------------------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("principal", [None, {}, {"tenant": ""}, {"tenant": "", "reason": "unknown or revoked"}])
def test_every_route_is_401_without_a_principal_before_anything_else(stack, principal):
    # When: every route but the documents is called without a caller, with bodies that would be 400 or 422
    for method, template in ROUTES:
        if template in ("/openapi.json", "/docs"):
            continue
        path = template.replace("{task_id}", "01JDQ5ZC8W0000000000000000").replace("{key_id}", "abcdefghijkl")
        path = path.replace("{name}", "acme")
        answer = call(method, path, principal=principal, body='{"image": 5' if method in ("POST", "PUT") else None)
        # Then: 401 in the one error shape, asking for a bearer key
        assert answer.status == 401 and answer.code == "UNAUTHENTICATED", (method, path, answer.body)
        assert set(answer.body) == {"error"} and "Bearer" in answer.body["error"]["message"]
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    # and the documents need no key
    assert call("GET", "/openapi.json", principal=None).status == 200
    assert call("GET", "/docs", principal=None).status == 200


def test_a_new_tenants_key_is_shown_once_and_authenticates_as_the_tenant(stack):
    # When: the admin creates a tenant
    answer = call("POST", "/tenants", body={"name": "acme", "quotas": {"max_running_tasks": 2, "max_vcpu": 1.5}})
    # Then: 201 with its key (this once) and a Location
    assert answer.status == 201 and answer.headers["Location"] == "/tenants/acme", answer.body
    created = answer.body
    key = created["api_key"]
    assert created["quotas"] == {"max_running_tasks": 2, "max_vcpu": 1.5, "max_memory_gib": None}
    assert created["in_flight"] == {"running_tasks": 0, "vcpu": 0.0, "memory_gib": 0.0, "queued_tasks": 0}
    assert [k["key_id"] for k in created["keys"]] == [created["api_key_id"]] and key.startswith("trk_")
    # and never again: not alone, not listed
    one, listed = call("GET", "/tenants/acme"), call("GET", "/tenants")
    for text in (json.dumps(one.body), json.dumps(listed.body)):
        assert key not in text and key_digest(key) not in text and "api_key" not in text
    assert [t["name"] for t in listed.body["items"]] == ["acme", "default"]
    # Then: the authorizer names the tenant, and the API function serves it as that tenant
    context = context_of(key)
    assert context == {"tenant": "acme", "admin": False, "key_id": created["api_key_id"]}
    submitted = call("POST", "/tasks", principal=context, body={"image": "busybox"})
    assert submitted.status == 202 and submitted.body["tenant"] == "acme", submitted.body
    # and a second tenant of that name, or of the admin tenant's, is a conflict
    assert call("POST", "/tenants", body={"name": "acme"}).code == "TENANT_ALREADY_EXISTS"
    assert call("POST", "/tenants", body={"name": "default"}).code == "TENANT_ALREADY_EXISTS"


def test_rotation_without_grace_revokes_the_old_key_and_the_new_one_works(stack):
    # Given: a tenant whose key works
    old = create("acme")["api_key"]
    assert context_of(old)["tenant"] == "acme"
    # When: its key is rotated with no grace
    rotated = call("POST", "/tenants/acme/keys", body={"grace_seconds": 0})
    # Then: 201 with the new key; the old one is unauthenticated at once
    assert rotated.status == 201, rotated.body
    assert context_of(rotated.body["api_key"])["tenant"] == "acme"
    assert assert_unauthenticated(context_of(old)) == "unknown or revoked API key"
    assert [k["key_id"] for k in call("GET", "/tenants/acme").body["keys"]] == [rotated.body["api_key_id"]]


def test_rotation_with_grace_keeps_both_keys_until_it_ends(stack):
    # Given: a tenant's key, rotated with an hour of grace (the default body: a day)
    old = create("acme")["api_key"]
    rotated = call("POST", "/tenants/acme/keys", body={"grace_seconds": 3600})
    defaulted = call("POST", "/tenants/acme/keys")
    assert rotated.status == defaulted.status == 201, (rotated.body, defaulted.body)
    new, newest = rotated.body["api_key"], defaulted.body["api_key"]
    # Then: all three keys work now
    assert {context_of(k)["tenant"] for k in (old, new, newest)} == {"acme"}
    ends = {k["key_id"]: k["expires_at"] for k in defaulted.body["keys"]}
    assert ends[defaulted.body["api_key_id"]] is None
    # When: the authorizer's clock is past the hour, but within the day
    authorizer.tenant_service().clock = lambda: datetime.now(UTC) + timedelta(hours=1, seconds=5)
    # Then: the old key is expired; the others still work
    assert "expired" in assert_unauthenticated(context_of(old))
    assert context_of(new)["tenant"] == context_of(newest)["tenant"] == "acme"
    # and past the day, only the newest works
    authorizer.tenant_service().clock = lambda: datetime.now(UTC) + timedelta(days=1, seconds=5)
    assert "expired" in assert_unauthenticated(context_of(new))
    assert context_of(newest)["tenant"] == "acme"


def test_revoking_one_key_stops_it_at_once(stack):
    created = create("acme")
    rotated = call("POST", "/tenants/acme/keys", body={"grace_seconds": 3600}).body
    answer = call("DELETE", f"/tenants/acme/keys/{created['api_key_id']}")
    assert answer.status == 204 and not answer.body
    assert_unauthenticated(context_of(created["api_key"]))
    assert context_of(rotated["api_key"])["tenant"] == "acme"
    again = call("DELETE", f"/tenants/acme/keys/{created['api_key_id']}")
    assert again.status == 404 and again.code == "API_KEY_NOT_FOUND"
    assert call("DELETE", "/tenants/acme/keys/NOT-A-KEY-ID").status == 422


def test_disabling_a_tenant_stops_its_keys_and_enabling_restores_them(stack):
    # Given: a tenant with a task
    key = create("acme", max_running_tasks=3)["api_key"]
    task = call("POST", "/tasks", principal=context_of(key), body={"image": "busybox"}).body
    # When: the admin deletes it
    disabled = call("DELETE", "/tenants/acme")
    # Then: 200 with the tenant disabled, its key unauthenticated, its records kept
    assert disabled.status == 200 and disabled.body["enabled"] is False, disabled.body
    assert disabled.body["quotas"]["max_running_tasks"] == 3
    assert "disabled" in assert_unauthenticated(context_of(key))
    assert call("GET", "/tenants/acme").body["enabled"] is False
    # When/Then: enabled again, the same key works and sees its task
    enabled = call("PUT", "/tenants/acme", body={"quotas": {}, "enabled": True})
    assert (
        enabled.status == 200
        and enabled.body["enabled"] is True
        and enabled.body["quotas"]["max_running_tasks"] is None
    )
    assert call("GET", f"/tasks/{task['task_id']}", principal=context_of(key)).status == 200


def test_the_admin_tenant_cannot_be_disabled(stack):
    for method, path, body in [
        ("DELETE", "/tenants/default", None),
        ("PUT", "/tenants/default", {"quotas": {}, "enabled": False}),
    ]:
        answer = call(method, path, body=body)
        assert answer.status == 409 and answer.code == "ADMIN_TENANT_CANNOT_BE_DISABLED", answer.body
    assert call("GET", "/tenants/default").body["enabled"] is True


def test_missing_tenants_are_404_and_bad_names_422(stack):
    assert call("GET", "/tenants/nobody").code == "TENANT_NOT_FOUND"
    assert call("PUT", "/tenants/nobody", body={"quotas": {}}).code == "TENANT_NOT_FOUND"
    assert call("DELETE", "/tenants/nobody").code == "TENANT_NOT_FOUND"
    assert call("POST", "/tenants/nobody/keys").code == "TENANT_NOT_FOUND"
    assert call("GET", "/tenants/Not_A_Name").status == 422
    answer = call("POST", "/tenants", body={"name": "-bad"})
    assert answer.status == 422 and answer.body["error"]["details"][0]["field"] == "name"
    assert call("POST", "/tenants", body={"name": "acme", "quotas": {"max_cpus": 1}}).status == 422
    assert call("POST", "/tenants/default/keys", body={"grace_seconds": 2_592_001}).status == 422


def test_tenants_are_listed_by_name_in_pages_and_forged_tokens_are_422(stack):
    for name in ("c-3", "a-1", "b-2"):
        create(name)
    first = call("GET", "/tenants", query={"limit": "2"})
    second = call("GET", "/tenants", query={"limit": "2", "next_token": first.body["next_token"]})
    assert [t["name"] for t in first.body["items"] + second.body["items"]] == ["a-1", "b-2", "c-3", "default"]
    assert second.body["next_token"] is None
    forged = call("GET", "/tenants", query={"next_token": "eyJsaXN0aW5nIjoieCIsImFmdGVyIjoiYSJ9"})
    assert forged.status == 422 and forged.body["error"]["details"][0]["field"] == "next_token"


def test_the_deployments_admin_key_is_the_admin(stack):
    # Given: an authorizer deployed with two admin key digests
    environment = {**function_environment(), "ADMIN_API_KEY_SHA256": f"{'0' * 64},{ADMIN_DIGEST}"}
    deployed = cold_start("authorizer", environment, "functions_authorizer_app_with_admin_keys")
    # When/Then: the admin key is the admin tenant, which may administer tenants
    context = authorize({"Authorization": f"bearer {ADMIN_KEY}"}, deployed)
    assert context == {"tenant": "default", "admin": True, "key_id": ADMIN_KEY.split("_")[1]}
    assert call("POST", "/tenants", principal=context, body={"name": "acme"}).status == 201
    # and the function without the digests does not know the key
    assert_unauthenticated(context_of(ADMIN_KEY))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        None,
        "not a mapping",
        {"authorization": None},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer "},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer k\x00ey"},
        {"authorization": "Bearer \udcff\udcfe"},
        {"authorization": "Bearer ключ"},
        {"authorization": "Bearer " + "k" * 10_240},
        {"authorization": "Bearer trk_" + "a" * 12 + "_" + "b" * 43},
        {"authorization": 42},
        {"authorization": ["Bearer x"]},
    ],
)
def test_garbage_authorization_is_unauthenticated_never_an_exception(stack, headers):
    context = authorize(headers)
    reason = assert_unauthenticated(context)
    assert "k" * 100 not in reason


# -------------------------------------------------------------------------------------- admin only


def test_every_tenant_route_is_403_for_a_tenant_that_is_not_admin(stack):
    # Given: two tenants
    a, b = create("tenant-a"), create("tenant-b")
    as_b = context_of(b["api_key"])
    routes = [
        ("POST", "/tenants", {"name": "sneaky"}),
        ("POST", "/tenants", '{"name": '),  # even a body that would be a 400
        ("GET", "/tenants", None),
        ("GET", "/tenants/tenant-a", None),
        ("GET", "/tenants/tenant-b", None),
        ("PUT", "/tenants/tenant-a", {"quotas": {"max_running_tasks": 100}}),
        ("PUT", "/tenants/tenant-b", {"bad": True}),
        ("DELETE", "/tenants/tenant-a", None),
        ("POST", "/tenants/tenant-a/keys", {"grace_seconds": 0}),
        ("POST", "/tenants/tenant-b/keys", None),
        ("DELETE", f"/tenants/tenant-a/keys/{a['api_key_id']}", None),
    ]
    # When/Then: B calls each: 403 FORBIDDEN
    for method, path, body in routes:
        answer = call(method, path, principal=as_b, body=body)
        assert answer.status == 403 and answer.code == "FORBIDDEN", (method, path, answer.body)
    # Then: none of it took effect
    assert context_of(a["api_key"])["tenant"] == "tenant-a"
    tenant_a = call("GET", "/tenants/tenant-a").body
    assert tenant_a["enabled"] and tenant_a["quotas"]["max_running_tasks"] is None
    assert [k["key_id"] for k in tenant_a["keys"]] == [a["api_key_id"]]
    assert call("GET", "/tenants/sneaky").code == "TENANT_NOT_FOUND"


# -------------------------------------------------------------------------------------- isolation


def same_not_found(theirs: Answer, missing: Answer, their_id: str, missing_id: str) -> None:
    assert theirs.status == missing.status == 404, (theirs.body, missing.body)
    assert theirs.code == missing.code
    assert theirs.body["error"]["message"].replace(their_id, "<id>") == missing.body["error"]["message"].replace(
        missing_id, "<id>"
    )


def test_a_tenant_reaches_nothing_of_another_on_any_route(stack):
    # Given: tenants A and B, a task and a schedule of A's, a task of B's
    as_a, as_b = context_of(create("tenant-a")["api_key"]), context_of(create("tenant-b")["api_key"])
    a_task = call("POST", "/tasks", principal=as_a, body={"image": "busybox"}).body
    b_task = call("POST", "/tasks", principal=as_b, body={"image": "busybox"}).body
    assert call("POST", "/schedules", principal=as_a, body=SCHEDULE).status == 201
    a_id, missing_id = a_task["task_id"], f"{a_task['task_id'][:-6]}ZZZZZZ"

    # When/Then: B on A's task: 404 exactly as for a task that does not exist
    for method, path in [("GET", "/tasks/{}"), ("GET", "/tasks/{}/logs"), ("POST", "/tasks/{}/cancel")]:
        theirs = call(method, path.format(a_id), principal=as_b)
        missing = call(method, path.format(missing_id), principal=as_b)
        same_not_found(theirs, missing, a_id, missing_id)
    # and on A's schedule, as on one that does not exist
    for method, path, body in [
        ("GET", "/schedules/{}", None),
        ("PUT", "/schedules/{}", SCHEDULE),
        ("POST", "/schedules/{}/run", None),
        ("DELETE", "/schedules/{}", None),
    ]:
        theirs = call(method, path.format("nightly"), principal=as_b, body=body)
        other = body and {**body, "name": "missing"}
        missing = call(method, path.format("missing"), principal=as_b, body=other)
        same_not_found(theirs, missing, "nightly", "missing")

    # Then: lists hold the caller's own only, and A's task and schedule are untouched
    assert [t["task_id"] for t in call("GET", "/tasks", principal=as_b).body["items"]] == [b_task["task_id"]]
    assert call("GET", "/tasks", principal=as_b, query={"schedule": "nightly"}).body["items"] == []
    assert call("GET", "/schedules", principal=as_b).body["items"] == []
    assert [t["task_id"] for t in call("GET", "/tasks", principal=as_a).body["items"]] == [a_id]
    assert call("GET", f"/tasks/{a_id}", principal=as_a).body["status"] != "CANCELLED"
    assert [s["name"] for s in call("GET", "/schedules", principal=as_a).body["items"]] == ["nightly"]
    # and the admin, a tenant of its own, sees neither
    assert call("GET", "/tasks").body["items"] == []
    assert call("GET", f"/tasks/{a_id}").status == 404


def test_usage_of_another_tenant_is_for_admins_only(stack):
    # Given: tenants A and B
    as_a = context_of(create("tenant-a")["api_key"])
    create("tenant-b")
    window = {"from": "2027-01-01", "to": "2027-01-31"}
    # Then: A reads its own usage, by default or by name
    assert call("GET", "/usage", principal=as_a, query=window).body["tenant"] == "tenant-a"
    assert call("GET", "/usage", principal=as_a, query={**window, "tenant": "tenant-a"}).body["tenant"] == "tenant-a"
    # and another tenant's is not found, exactly as a tenant that does not exist
    theirs = call("GET", "/usage", principal=as_a, query={**window, "tenant": "tenant-b"})
    missing = call("GET", "/usage", principal=as_a, query={**window, "tenant": "nobody"})
    assert theirs.code == "TENANT_NOT_FOUND"
    same_not_found(theirs, missing, "tenant-b", "nobody")
    # Then: the admin reads its own by default, and any tenant's by name; a missing one is 404
    assert call("GET", "/usage", query=window).body["tenant"] == "default"
    assert call("GET", "/usage", query={**window, "tenant": "tenant-b"}).body["tenant"] == "tenant-b"
    assert call("GET", "/usage", query={**window, "tenant": "nobody"}).code == "TENANT_NOT_FOUND"
    assert call("GET", "/usage", query={**window, "tenant": "Not A Name"}).status == 422


# -------------------------------------------------------------------------------------- IAM


def iam_event(user_arn: str, method: str = "GET", path: str = "/tasks", **kwargs: Any) -> dict[str, Any]:
    event = http_event(method, path, principal=None, **kwargs)
    event["requestContext"]["authorizer"] = {
        "iam": {"accountId": "123456789012", "userArn": user_arn, "userId": "AROAEXAMPLE:session"}
    }
    return event


def test_iam_callers_are_mapped_to_their_tenant_by_principal_items(stack, ddb):
    # Given: a tenant, and a role mapped to it
    create("acme")
    role = "arn:aws:iam::123456789012:role/acme-ci"
    ddb.put_item(
        TableName=stack.tasks_table,
        Item={"pk": {"S": f"PRINCIPAL#{role}"}, "sk": {"S": "PRINCIPAL"}, "tenant": {"S": "acme"}},
    )
    # When: a session of the role submits a task
    response = invoke(
        api,
        iam_event(
            "arn:aws:sts::123456789012:assumed-role/acme-ci/build-7", "POST", "/tasks", body={"image": "busybox"}
        ),
    )
    # Then: the task is the tenant's; an unmapped role is 401, and the mapped role may not administer tenants
    assert response["statusCode"] == 202 and json.loads(response["body"])["tenant"] == "acme", response
    unmapped = invoke(api, iam_event("arn:aws:sts::123456789012:assumed-role/other/s"))
    assert unmapped["statusCode"] == 401
    forbidden = invoke(api, iam_event("arn:aws:sts::123456789012:assumed-role/acme-ci/s", path="/tenants"))
    assert forbidden["statusCode"] == 403


def test_admin_roles_come_from_the_deployment(stack, monkeypatch):
    # Given: the API function deployed with an admin role
    from taskrunner import wiring

    monkeypatch.setenv("ADMIN_PRINCIPAL_ARNS", "arn:aws:iam::123456789012:role/ops, arn:aws:iam::123456789012:role/x")
    wiring.reset()
    # When/Then: a session of that role administers tenants
    response = invoke(
        api, iam_event("arn:aws:sts::123456789012:assumed-role/ops/alice", "POST", "/tenants", body={"name": "acme"})
    )
    assert response["statusCode"] == 201, response


# -------------------------------------------------------------------------------------- the document


def test_the_document_declares_the_tenant_routes_and_the_bearer_scheme(stack):
    document = call("GET", "/openapi.json", principal=None).body
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "trk_<key id>_<secret>",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert document["security"] == [{"bearerAuth": []}]
    paths = document["paths"]
    assert {"post", "get"} <= set(paths["/tenants"]) and {"get", "put", "delete"} <= set(paths["/tenants/{name}"])
    assert "post" in paths["/tenants/{name}/keys"] and "delete" in paths["/tenants/{name}/keys/{key_id}"]
    for path, item in paths.items():
        for method, operation in item.items():
            assert "401" in operation["responses"], (method, path)
            if path.startswith("/tenants"):
                assert "403" in operation["responses"], (method, path)
    assert {"201", "409"} <= set(paths["/tenants"]["post"]["responses"])
    assert "404" in paths["/usage"]["get"]["responses"]
    assert any(p["name"] == "tenant" for p in paths["/usage"]["get"]["parameters"])
    assert {"api_key", "api_key_id"} <= set(document["components"]["schemas"]["TenantWithKey"]["properties"])


@pytest.mark.parametrize("quotas", [{"max_vcpu": 5e-324}, {"max_memory_gib": 1e-300}, {"max_vcpu": 0.1}])
def test_quotas_too_small_to_admit_any_task_are_422_not_500(stack, quotas):
    for method, path in (("POST", "/tenants"), ("PUT", "/tenants/tiny")):
        body = {"name": "tiny", "quotas": quotas} if method == "POST" else {"quotas": quotas}
        answer = call(method, path, body=body)
        assert answer.status == 422, answer.body
        assert next(iter(quotas)) in json.dumps(answer.body)


@pytest.mark.parametrize("body", [[None, None], [], 3, True])
def test_a_key_rotation_body_that_is_not_an_object_is_422(stack, body):
    create("rotated-body")
    answer = call("POST", "/tenants/rotated-body/keys", body=body)
    assert answer.status == 422, answer.body


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/tenants", {"name": "strict", "quotas": {"max_running_tasks": True}}, "max_running_tasks"),
        ("POST", "/tenants", {"name": "strict", "quotas": {"max_vcpu": "2"}}, "max_vcpu"),
        ("PUT", "/tenants/strict", {"quotas": {}, "enabled": "true"}, "enabled"),
        ("POST", "/tenants/strict/keys", {"grace_seconds": False}, "grace_seconds"),
    ],
)
def test_tenant_bodies_take_no_booleans_for_numbers_nor_strings_for_either(stack, method, path, body, field):
    create("strict")
    answer = call(method, path, body=body)
    assert answer.status == 422, answer.body
    assert field in json.dumps(answer.body)


def test_a_schedule_whose_task_could_never_fit_the_tenants_quota_is_422_when_written(stack):
    key = create("small-sched", max_vcpu=0.25)["api_key"]
    big = {**SCHEDULE, "task": {"image": "busybox", "cpu": 1024, "memory": 2048}}
    created = call("POST", "/schedules", principal=context_of(key), body=big)
    assert created.status == 422, created.body
    assert created.body["error"]["details"][0]["field"] == "task.cpu" and "max_vcpu=0.25" in json.dumps(created.body)
    assert call("POST", "/schedules", principal=context_of(key), body=SCHEDULE).status == 201
    replaced = call("PUT", "/schedules/nightly", principal=context_of(key), body=big)
    assert replaced.status == 422, replaced.body
