"""Tenants over HTTP on the session's local stack: authentication, isolation, quotas with the fair queue, usage.

Every test creates its own tenants (names with a random suffix): the session's stack is shared with other modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests

from taskrunner_local.client import TERMINAL
from taskrunner_local.images import BUSYBOX_IMAGE
from taskrunner_local.stack import LocalStack

#: the statuses of a task the queue has let through (what a quota of running tasks bounds)
STARTED = {"PROVISIONING", "RUNNING"}
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def busybox(script: str, **spec: object) -> dict[str, Any]:
    """A small task of the offline busybox image running `script` with sh."""
    return {"image": BUSYBOX_IMAGE, "command": ["sh", "-c", script], "cpu": 256, "memory": 512, **spec}


@dataclass
class Caller:
    """The API as one bearer key sees it (`key=None`: no Authorization header; `authorization`: a header as is)."""

    base_url: str
    key: str | None
    authorization: str | None = None
    http: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        elif self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        return self.http.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.post("/tasks", json=spec)
        assert response.status_code == 202, response.text
        return response.json()

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def tasks(self, **params: str) -> list[dict[str, Any]]:
        response = self.get("/tasks", params={"limit": "100", **params})
        assert response.status_code == 200, response.text
        return response.json()["items"]

    def wait(self, task_id: str, statuses: set[str] = TERMINAL, timeout: float = 60.0) -> dict[str, Any]:
        """The task once it is in one of `statuses` (and, when terminal, metered)."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(task_id)
            if task["status"] in statuses and (task["status"] not in TERMINAL or task["metering"]):
                return task
            assert time.monotonic() < deadline, f"task {task_id} is {task['status']} after {timeout} s: {task}"
            time.sleep(0.1)

    def usage(self, **params: str) -> requests.Response:
        # a range around today: the records of tasks that ran during this test, whatever the day of the month
        today = datetime.now(UTC).date()
        window = {"from": (today - timedelta(days=1)).isoformat(), "to": (today + timedelta(days=1)).isoformat()}
        return self.get("/usage", params={**window, **params})


@dataclass(frozen=True)
class Tenant:
    name: str
    api_key: str
    caller: Caller
    #: the 201 body of POST /tenants
    created: dict[str, Any]

    @property
    def key_id(self) -> str:
        return key_id_of(self.api_key)


def key_id_of(api_key: str) -> str:
    """The key id of a `trk_<key id>_<secret>` key (the secret may contain `_`)."""
    return api_key.split("_", 2)[1]


@pytest.fixture(scope="module")
def admin(stack: LocalStack) -> Caller:
    """The API as the stack's admin (tenant `default`)."""
    return Caller(stack.api_url, stack.admin_key)


#: creates a tenant: new_tenant(prefix, **quotas)
NewTenant = Callable[..., Tenant]


@pytest.fixture
def new_tenant(admin: Caller) -> Iterator[NewTenant]:
    """Creates tenants with a unique name (`prefix-<random>`) and the given quotas; cancels what they left running."""
    created: list[Tenant] = []

    def create(prefix: str, **quotas: float) -> Tenant:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        response = admin.post("/tenants", json={"name": name, "quotas": quotas})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["name"] == name and body["enabled"] is True, body
        assert body["api_key"].startswith("trk_"), body
        tenant = Tenant(name, body["api_key"], Caller(admin.base_url, body["api_key"]), body)
        created.append(tenant)
        return tenant

    yield create
    for tenant in created:  # a failed test may leave tasks running (a revoked key leaves them be)
        with contextlib.suppress(requests.RequestException):
            listed = tenant.caller.get("/tasks", params={"limit": "100"})
            for task in listed.json()["items"] if listed.status_code == 200 else []:
                if task["status"] not in TERMINAL:
                    tenant.caller.post(f"/tasks/{task['task_id']}/cancel")


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The response is `status` in the one error shape with `code`; returns its error."""
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


def assert_same_not_found(
    theirs: requests.Response, missing: requests.Response, their_id: str, missing_id: str
) -> None:
    """Another tenant's id is answered exactly as an id that does not exist (no enumeration)."""
    code = missing.json()["error"]["code"]
    assert code.endswith("_NOT_FOUND"), missing.text
    error = assert_error(theirs, 404, code)
    assert missing.status_code == 404
    assert error["message"].replace(their_id, "<id>") == missing.json()["error"]["message"].replace(missing_id, "<id>")


def schedule_body(name: str, command: str = "echo scheduled") -> dict[str, Any]:
    return {"name": name, "schedule_expression": "cron(0 3 * * ? *)", "task": busybox(command)}


# ------------------------------------------------------------------------------------------------- isolation


def test_two_tenants_see_nothing_of_each_other_on_any_route(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: tenants A and B, each with a finished and metered task, and a schedule of A
    a, b = new_tenant("iso-a"), new_tenant("iso-b")
    a_task = a.caller.wait(a.caller.submit(busybox("echo from-a"))["task_id"])
    b_task = b.caller.wait(b.caller.submit(busybox("echo from-b"))["task_id"])
    assert a_task["tenant"] == a.name and b_task["tenant"] == b.name
    schedule = f"nightly-{uuid.uuid4().hex[:6]}"
    response = a.caller.post("/schedules", json=schedule_body(schedule))
    assert response.status_code == 201, response.text
    missing_task = f"{a_task['task_id'][:-6]}ZZZZZZ"  # the shape of a task id, naming none
    missing_schedule = f"missing-{uuid.uuid4().hex[:6]}"

    # When/Then: B reaches A's task and schedule on every route: 404, exactly as for ids that do not exist
    a_id = a_task["task_id"]
    for method, path in [("GET", "/tasks/{}"), ("GET", "/tasks/{}/logs"), ("POST", "/tasks/{}/cancel")]:
        theirs = b.caller.request(method, path.format(a_id))
        missing = b.caller.request(method, path.format(missing_task))
        assert_same_not_found(theirs, missing, a_id, missing_task)
    for method, path, body in [
        ("GET", "/schedules/{}", None),
        ("PUT", "/schedules/{}", schedule_body(schedule, "echo hijacked")),
        ("POST", "/schedules/{}/run", None),
        ("DELETE", "/schedules/{}", None),
    ]:
        theirs = b.caller.request(method, path.format(schedule), json=body)
        missing = b.caller.request(
            method, path.format(missing_schedule), json=body and {**body, "name": missing_schedule}
        )
        assert_same_not_found(theirs, missing, schedule, missing_schedule)

    # Then: A's task and schedule are untouched by all of that
    assert a.caller.task(a_id)["status"] == "SUCCEEDED"
    assert a.caller.get(f"/tasks/{a_id}/logs").json()["events"][0]["message"] == "from-a"
    kept = a.caller.get(f"/schedules/{schedule}")
    assert kept.status_code == 200 and kept.json()["task"]["command"] == ["sh", "-c", "echo scheduled"], kept.text
    assert a.caller.tasks(schedule=schedule) == []

    # Then: B's lists hold only B's own
    assert [t["task_id"] for t in b.caller.tasks()] == [b_task["task_id"]]
    assert b.caller.tasks(schedule=schedule) == []
    assert b.caller.get("/schedules").json()["items"] == []
    assert {t["task_id"] for t in a.caller.tasks()} == {a_id}
    # a schedule name is per tenant: B may use A's (a 409 would tell B that A has one)
    mine = b.caller.post("/schedules", json=schedule_body(schedule, "echo mine"))
    assert mine.status_code == 201, mine.text
    assert b.caller.delete(f"/schedules/{schedule}").status_code == 204
    assert a.caller.get(f"/schedules/{schedule}").status_code == 200

    # Then: usage counts the caller's tenant only; another tenant's usage is "not found", as a missing tenant's
    b_usage = b.caller.usage().json()
    assert b_usage["tenant"] == b.name and b_usage["totals"]["tasks"] == 1, b_usage
    assert b_usage["totals"]["billed_seconds"] == b_task["metering"]["billed_seconds"]
    missing_tenant = f"missing-{uuid.uuid4().hex[:6]}"
    missing = b.caller.usage(tenant=missing_tenant)
    assert_error(missing, 404, "TENANT_NOT_FOUND")
    assert_same_not_found(b.caller.usage(tenant=a.name), missing, a.name, missing_tenant)
    for_admin = admin.usage(tenant=a.name)
    assert for_admin.status_code == 200, for_admin.text
    assert for_admin.json()["tenant"] == a.name and for_admin.json()["totals"]["tasks"] == 1
    assert a.caller.delete(f"/schedules/{schedule}").status_code == 204


def test_an_idempotency_key_is_the_tenants_own(new_tenant: NewTenant) -> None:
    # Given: tenant A submitted with two Idempotency-Keys
    a, b = new_tenant("idem-a"), new_tenant("idem-b")
    same, other = f"same-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    spec = busybox("echo idempotent")
    a_first = a.caller.post("/tasks", json=spec, headers={"Idempotency-Key": same})
    a_second = a.caller.post("/tasks", json=spec, headers={"Idempotency-Key": other})
    assert a_first.status_code == 202 and a_second.status_code == 202, (a_first.text, a_second.text)
    # When: B sends the same keys, with the same body and with another
    b_same = b.caller.post("/tasks", json=spec, headers={"Idempotency-Key": same})
    b_other = b.caller.post("/tasks", json=busybox("echo else"), headers={"Idempotency-Key": other})
    # Then: B gets tasks of its own (not A's task, and no 409 telling it A used the key)
    for mine, theirs in [(b_same, a_first), (b_other, a_second)]:
        assert mine.status_code == 202, mine.text
        assert mine.json()["tenant"] == b.name and mine.json()["task_id"] != theirs.json()["task_id"]
    # and A's key still answers A's task
    replayed = a.caller.post("/tasks", json=spec, headers={"Idempotency-Key": same})
    assert replayed.status_code == 202 and replayed.json()["task_id"] == a_first.json()["task_id"], replayed.text
    for tenant, submitted in [(a, a_first), (a, a_second), (b, b_same), (b, b_other)]:
        tenant.caller.wait(submitted.json()["task_id"])


def test_only_admins_may_administer_tenants(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: tenants A and B
    a, b = new_tenant("adm-a"), new_tenant("adm-b")
    sneaky = f"sneaky-{uuid.uuid4().hex[:6]}"
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/tenants", {"name": sneaky, "quotas": {}}),
        ("GET", "/tenants", None),
        *[("GET", f"/tenants/{name}", None) for name in (a.name, b.name)],
        *[("PUT", f"/tenants/{name}", {"quotas": {"max_running_tasks": 100}}) for name in (a.name, b.name)],
        ("POST", f"/tenants/{a.name}/keys", {"grace_seconds": 0}),
        ("DELETE", f"/tenants/{a.name}/keys/{a.key_id}", None),
        ("DELETE", f"/tenants/{a.name}", None),
    ]
    # When/Then: B calls every tenant route, on A and on itself: 403 FORBIDDEN
    for method, path, body in routes:
        assert_error(b.caller.request(method, path, json=body), 403, "FORBIDDEN")
    # Then: none of it took effect
    assert a.caller.get("/tasks").status_code == 200
    tenant = admin.get(f"/tenants/{a.name}").json()
    assert tenant["enabled"] is True and [k["key_id"] for k in tenant["keys"]] == [a.key_id], tenant
    assert admin.get(f"/tenants/{sneaky}").status_code == 404


def test_an_api_key_is_shown_once_and_never_again(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: a tenant just created (its 201 carried the key)
    a = new_tenant("once", max_running_tasks=3)
    assert a.created["quotas"]["max_running_tasks"] == 3
    secrets_of_a = (a.api_key, a.api_key.rsplit("_", 1)[1], hashlib.sha256(a.api_key.encode()).hexdigest())
    # When: the admin reads it alone and in the list of tenants
    one = admin.get(f"/tenants/{a.name}")
    listed, token = [], None
    while True:
        page = admin.get("/tenants", params={"limit": "100", **({"next_token": token} if token else {})})
        assert page.status_code == 200, page.text
        listed.append(page.text)
        token = page.json()["next_token"]
        if not token:
            break
    # Then: neither shows the key nor its hash, but the tenant is there with its key's id
    assert one.status_code == 200, one.text
    assert "api_key" not in one.json() and [k["key_id"] for k in one.json()["keys"]] == [a.key_id]
    assert any(f'"{a.name}"' in text for text in listed)
    for text in [one.text, *listed]:
        assert not any(secret in text for secret in secrets_of_a)
    # and a second tenant of the same name is a conflict
    assert_error(admin.post("/tenants", json={"name": a.name, "quotas": {}}), 409, "TENANT_ALREADY_EXISTS")


# -------------------------------------------------------------------------------------------- authentication


def unknown_key() -> str:
    return f"trk_{''.join(secrets.choice(BASE32) for _ in range(12))}_{secrets.token_urlsafe(32)}"


def test_requests_without_a_valid_key_are_401_in_the_one_error_shape(stack: LocalStack, new_tenant: NewTenant) -> None:
    # Given: a working key, and ways of not sending one
    a = new_tenant("auth")
    forged = f"trk_{a.key_id}_{secrets.token_urlsafe(32)}"  # a real key id with a wrong secret
    callers = {
        "no header": Caller(stack.api_url, None),
        "unknown key": Caller(stack.api_url, unknown_key()),
        "a real key id, wrong secret": Caller(stack.api_url, forged),
        "not a key": Caller(stack.api_url, "not-a-key"),
        "empty bearer": Caller(stack.api_url, None, authorization="Bearer "),
        "basic auth": Caller(stack.api_url, None, authorization="Basic dXNlcjpwYXNz"),
        "key without scheme": Caller(stack.api_url, None, authorization=a.api_key),
    }
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/tasks", None),
        ("POST", "/tasks", busybox("echo never")),
        ("GET", "/tasks/anything", None),
        ("GET", "/schedules", None),
        ("GET", "/usage", None),
        ("GET", "/tenants", None),
        ("POST", "/tenants", {"name": f"x-{uuid.uuid4().hex[:6]}", "quotas": {}}),
    ]
    # When/Then: each is 401 UNAUTHENTICATED on every route, and never echoes what was sent
    for why, caller in callers.items():
        for method, path, body in routes:
            response = caller.request(method, path, json=body)
            error = assert_error(response, 401, "UNAUTHENTICATED")
            assert caller.key is None or caller.key not in response.text, (why, response.text)
            assert a.api_key not in error["message"], why
    # Then: the real key works, and the documents need none
    assert a.caller.get("/tasks").status_code == 200
    assert Caller(stack.api_url, None).get("/openapi.json").status_code == 200
    assert Caller(stack.api_url, None).get("/docs").status_code == 200


def test_a_disabled_tenants_key_stops_at_once_and_works_again_when_enabled(
    admin: Caller, new_tenant: NewTenant
) -> None:
    # Given: a tenant whose key works
    a = new_tenant("disabled")
    assert a.caller.get("/tasks").status_code == 200
    # When: the admin deletes (disables) it
    deleted = admin.delete(f"/tenants/{a.name}")
    # Then: at once its key is 401; its record stays, disabled
    assert deleted.status_code == 200 and deleted.json()["enabled"] is False, deleted.text
    assert_error(a.caller.get("/tasks"), 401, "UNAUTHENTICATED")
    assert_error(a.caller.post("/tasks", json=busybox("echo never")), 401, "UNAUTHENTICATED")
    kept = admin.get(f"/tenants/{a.name}")
    assert kept.status_code == 200 and kept.json()["enabled"] is False, kept.text
    # When/Then: enabled again, the same key works
    enabled = admin.put(f"/tenants/{a.name}", json={"quotas": {}, "enabled": True})
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True, enabled.text
    assert a.caller.get("/tasks").status_code == 200


def test_rotation_without_grace_revokes_the_old_key_at_once(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: a tenant whose key works
    a = new_tenant("rotate-now")
    assert a.caller.get("/tasks").status_code == 200
    # When: the admin rotates its key with no grace
    rotated = admin.post(f"/tenants/{a.name}/keys", json={"grace_seconds": 0})
    # Then: the new key works, the old one is 401 at once
    assert rotated.status_code == 201, rotated.text
    new_key = rotated.json()["api_key"]
    assert new_key.startswith("trk_") and new_key != a.api_key
    assert_error(a.caller.get("/tasks"), 401, "UNAUTHENTICATED")
    assert Caller(admin.base_url, new_key).get("/tasks").status_code == 200


def test_rotation_with_grace_keeps_both_keys_until_one_is_revoked(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: a tenant with a task
    a = new_tenant("rotate-grace")
    task = a.caller.submit(busybox("echo hi"))
    # When: the admin rotates its key with an hour of grace
    rotated = admin.post(f"/tenants/{a.name}/keys", json={"grace_seconds": 3600})
    assert rotated.status_code == 201, rotated.text
    new = Caller(admin.base_url, rotated.json()["api_key"])
    # Then: both keys work, as the same tenant; the old one expires in about an hour
    assert a.caller.task(task["task_id"])["tenant"] == a.name
    assert new.task(task["task_id"])["tenant"] == a.name
    keys = {k["key_id"]: k for k in admin.get(f"/tenants/{a.name}").json()["keys"]}
    assert set(keys) == {a.key_id, key_id_of(new.key or "")}, keys
    expires = datetime.fromisoformat(keys[a.key_id]["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(minutes=61), keys
    # When/Then: the admin revokes the old key: 401 at once, the new one still works
    assert admin.delete(f"/tenants/{a.name}/keys/{a.key_id}").status_code == 204
    assert_error(a.caller.get("/tasks"), 401, "UNAUTHENTICATED")
    assert new.get("/tasks").status_code == 200
    new.wait(task["task_id"])


# ------------------------------------------------------------------------------------------ quotas and queue


def in_flight(admin: Caller, tenant: str) -> dict[str, Any]:
    response = admin.get(f"/tenants/{tenant}")
    assert response.status_code == 200, response.text
    return response.json()["in_flight"]


def assert_nothing_in_flight(admin: Caller, tenant: str) -> None:
    """Every slot of the tenant was released (and no task is counted as queued)."""
    counters = in_flight(admin, tenant)
    assert counters["running_tasks"] == 0 and counters["queued_tasks"] == 0, counters
    assert counters["vcpu"] == 0 and counters["memory_gib"] == 0, counters


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an interval ending when another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_quota_of_two_running_tasks_queues_the_rest_and_starts_them_in_order(
    admin: Caller, new_tenant: NewTenant
) -> None:
    # Given: a tenant that may run 2 tasks at once, its first task already running
    a = new_tenant("quota", max_running_tasks=2)
    # alternating lengths keep the moments slots free apart, so that start order is the grant order
    scripts = [f"sleep {2 + i % 2}" for i in range(6)]
    first = a.caller.submit(busybox(scripts[0], name="q0"))
    a.caller.wait(first["task_id"], {"RUNNING"}, timeout=30)
    # When: 5 more are submitted at once
    submitted = [first, *(a.caller.submit(busybox(s, name=f"q{i}")) for i, s in enumerate(scripts[1:], 1))]
    ids = [t["task_id"] for t in submitted]
    seen_queued = {t["task_id"] for t in submitted if t["status"] == "QUEUED"}
    most_started = 0
    deadline = time.monotonic() + 90
    while True:
        tasks = {t["task_id"]: t for t in a.caller.tasks() if t["task_id"] in ids}
        most_started = max(most_started, sum(1 for t in tasks.values() if t["status"] in STARTED))
        seen_queued |= {i for i, t in tasks.items() if t["status"] == "QUEUED"}
        if len(tasks) == 6 and all(t["status"] in TERMINAL and t["metering"] for t in tasks.values()):
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(0.1)

    # Then: never more than 2 started at once, the 4 beyond the quota waited in QUEUED, all succeeded in order
    assert most_started <= 2
    assert set(ids[2:]) <= seen_queued, seen_queued
    assert [tasks[i]["status"] for i in ids] == ["SUCCEEDED"] * 6, [tasks[i]["status_reason"] for i in ids]
    assert sorted(ids, key=lambda i: at(tasks[i]["started_at"])) == ids, [tasks[i]["started_at"] for i in ids]
    # each provisioning began after a slot freed: at no instant more than 2 between PROVISIONING and stopping
    assert max_overlap([(at(tasks[i]["provisioning_at"]), at(tasks[i]["stopped_at"])) for i in ids]) <= 2
    assert_nothing_in_flight(admin, a.name)


def test_a_task_queued_past_its_queue_timeout_ends_timed_out_and_unbilled(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: a tenant with a quota of 1 running task, held by a long task
    a = new_tenant("qtimeout", max_running_tasks=1)
    long = a.caller.submit(busybox("sleep 120"))
    a.caller.wait(long["task_id"], {"RUNNING"}, timeout=30)
    # When: a second task may wait 3 s in the queue
    waiting = a.caller.submit(busybox("echo never", queue_timeout_seconds=3))
    assert waiting["status"] == "QUEUED" and waiting["spec"]["queue_timeout_seconds"] == 3, waiting
    timed_out = a.caller.wait(waiting["task_id"], timeout=30)
    # Then: it timed out in the queue, never started, billed nothing; the long task kept running
    assert timed_out["status"] == "TIMED_OUT", timed_out
    assert "queue" in (timed_out["status_reason"] or "").lower(), timed_out["status_reason"]
    assert timed_out["started_at"] is None and timed_out["ecs_task_arn"] is None, timed_out
    assert timed_out["metering"]["billed_seconds"] == 0 and timed_out["metering"]["cost_usd"] == 0
    elapsed = at(timed_out["updated_at"]) - at(timed_out["created_at"])
    assert timedelta(seconds=3) <= elapsed < timedelta(seconds=20), elapsed
    assert a.caller.task(long["task_id"])["status"] == "RUNNING"
    assert in_flight(admin, a.name)["queued_tasks"] == 0
    # the default queue timeout is a day
    assert long["spec"]["queue_timeout_seconds"] == 86_400
    assert a.caller.post(f"/tasks/{long['task_id']}/cancel").status_code == 202
    assert a.caller.wait(long["task_id"])["status"] == "CANCELLED"
    assert_nothing_in_flight(admin, a.name)


def test_cancel_in_queued_frees_the_queue_and_leaks_no_slot(admin: Caller, new_tenant: NewTenant) -> None:
    # Given: a tenant with a quota of 1 running task, a long task holding it and a second task queued behind it
    a = new_tenant("qcancel", max_running_tasks=1)
    long = a.caller.submit(busybox("sleep 120"))
    a.caller.wait(long["task_id"], {"RUNNING"}, timeout=30)
    queued = a.caller.submit(busybox("echo never"))
    assert a.caller.task(queued["task_id"])["status"] == "QUEUED"
    # When: the queued task is cancelled
    response = a.caller.post(f"/tasks/{queued['task_id']}/cancel")
    # Then: it ends CANCELLED, never started, billed nothing
    assert response.status_code == 202, response.text
    cancelled = a.caller.wait(queued["task_id"], timeout=30)
    assert cancelled["status"] == "CANCELLED" and cancelled["started_at"] is None, cancelled
    assert cancelled["metering"]["billed_seconds"] == 0 and cancelled["metering"]["cost_usd"] == 0
    assert in_flight(admin, a.name)["queued_tasks"] == 0
    # When: the long task is cancelled too
    assert a.caller.post(f"/tasks/{long['task_id']}/cancel").status_code == 202
    assert a.caller.wait(long["task_id"])["status"] == "CANCELLED"
    # Then: no slot is left held, and the tenant's next task is admitted at once and runs
    assert_nothing_in_flight(admin, a.name)
    after = a.caller.submit(busybox("echo after"))
    assert after["status"] == "SUBMITTED", after
    assert a.caller.wait(after["task_id"], timeout=30)["status"] == "SUCCEEDED"


def test_a_scheduled_run_belongs_to_the_schedules_tenant_and_waits_for_its_quota(
    admin: Caller, new_tenant: NewTenant
) -> None:
    # Given: a tenant with a quota of 1 running task, held by a long task, and a schedule of it
    a = new_tenant("qschedule", max_running_tasks=1)
    long = a.caller.submit(busybox("sleep 120"))
    a.caller.wait(long["task_id"], {"RUNNING"}, timeout=30)
    name = f"hourly-{uuid.uuid4().hex[:6]}"
    assert a.caller.post("/schedules", json=schedule_body(name)).status_code == 201
    # When: the schedule runs now
    response = a.caller.post(f"/schedules/{name}/run")
    # Then: its task is the tenant's, and waits in the tenant's queue
    assert response.status_code == 202, response.text
    run = a.caller.task(response.json()["task_id"])
    assert run["tenant"] == a.name and run["schedule"] == name and run["status"] == "QUEUED", run
    assert in_flight(admin, a.name)["queued_tasks"] == 1
    # When/Then: once the long task is cancelled, the scheduled run starts and succeeds
    assert a.caller.post(f"/tasks/{long['task_id']}/cancel").status_code == 202
    assert a.caller.wait(run["task_id"], timeout=60)["status"] == "SUCCEEDED"
    assert a.caller.delete(f"/schedules/{name}").status_code == 204


def test_a_task_larger_than_the_whole_quota_is_rejected_naming_the_quota(new_tenant: NewTenant) -> None:
    # Given: a tenant that may use half a vCPU and 1 GiB in all
    a = new_tenant("small", max_vcpu=0.5, max_memory_gib=1)
    # When/Then: a task of 1 vCPU, or of 2 GiB, could never start: 422 naming the field and the quota
    for spec, name, quota in [
        (busybox("true", cpu=1024, memory=2048), "cpu", "max_vcpu"),
        (busybox("true", cpu=256, memory=2048), "memory", "max_memory_gib"),
    ]:
        error = assert_error(a.caller.post("/tasks", json=spec), 422, "VALIDATION_ERROR")
        assert any(d["field"] == name and quota in d["rule"] for d in error["details"]), error
    # a task that fits is accepted; no task was created by the rejected ones
    fits = a.caller.submit(busybox("true", cpu=512, memory=1024))
    assert [t["task_id"] for t in a.caller.tasks()] == [fits["task_id"]]
    a.caller.wait(fits["task_id"])


def test_usage_of_a_tenant_is_the_sum_of_its_metering_records(
    stack: LocalStack, admin: Caller, new_tenant: NewTenant
) -> None:
    # Given: two tenants; A ran three tasks of different sizes and outcomes, B one
    a, b = new_tenant("usage-a"), new_tenant("usage-b")
    specs = [busybox("sleep 1"), busybox("exit 3", cpu=512, memory=2048), busybox("true", cpu=1024, memory=3072)]
    a_tasks = [a.caller.wait(a.caller.submit(spec)["task_id"]) for spec in specs]
    b.caller.wait(b.caller.submit(busybox("sleep 1", cpu=2048, memory=4096))["task_id"])
    # When: A asks for its usage, and the admin asks for A's
    own = a.caller.usage()
    for_admin = admin.usage(tenant=a.name)
    # Then: both equal the sum of A's metering records in the table (and of A's tasks' metering)
    assert own.status_code == 200 and for_admin.status_code == 200, (own.text, for_admin.text)
    assert own.json() == for_admin.json()
    records = metering_records(stack, a.name)
    assert sorted(records) == sorted(t["task_id"] for t in a_tasks)
    totals = own.json()["totals"]
    assert totals["tasks"] == 3
    assert totals["billed_seconds"] == sum(r["billed_seconds"] for r in records.values())
    assert totals["billed_seconds"] == sum(t["metering"]["billed_seconds"] for t in a_tasks)
    assert math.isclose(totals["cost_usd"], sum(float(r["cost_usd"]) for r in records.values()), abs_tol=1e-9)
    assert math.isclose(totals["cost_usd"], sum(t["metering"]["cost_usd"] for t in a_tasks), abs_tol=1e-9)
    assert totals["cost_usd"] > 0
    assert sum(day["tasks"] for day in own.json()["days"]) == 3
    assert all(date.fromisoformat(day["date"]) for day in own.json()["days"])


def metering_records(stack: LocalStack, tenant: str) -> dict[str, dict[str, Any]]:
    """The metering of each metering record of `tenant` in the tasks table, by task id (one record per task)."""
    ddb = stack.client("dynamodb")
    table = stack.deployment.outputs["TasksTableName"]
    found: dict[str, dict[str, Any]] = {}
    scan = ddb.get_paginator("scan").paginate(
        TableName=table,
        FilterExpression="begins_with(pk, :meter) AND tenant = :tenant",
        ExpressionAttributeValues={":meter": {"S": "METER#"}, ":tenant": {"S": tenant}},
    )
    for page in scan:
        for item in page["Items"]:
            task_id = item["task_id"]["S"]
            assert task_id not in found, f"two metering records of task {task_id}"
            metering = item["metering"]["M"]
            found[task_id] = {
                "billed_seconds": int(metering["billed_seconds"]["N"]),
                "cost_usd": float(metering["cost_usd"]["N"]),
            }
    return found
