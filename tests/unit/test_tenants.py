"""Tenants and API keys: key format and digest, the Authorization header, the tenant administration and who a key
or an IAM principal is (TenantService on an in-memory store)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from taskrunner.errors import (
    AdminTenantCannotBeDisabled,
    ApiKeyNotFound,
    InvalidParameter,
    StaleStatus,
    TenantAlreadyExists,
    TenantNotFound,
)
from taskrunner.tenants import (
    MAX_LIVE_KEYS,
    KeyRotation,
    Principal,
    Quotas,
    Refusal,
    TenantService,
    TenantSpec,
    TenantUpdate,
    authorizer_context,
    bearer_key,
    key_digest,
    key_id_of,
    new_api_key,
    principal_from_context,
    role_arn,
)

from tests.support.tenants import InMemoryTenantStore

NOW = datetime(2027, 3, 25, 12, 0, tzinfo=UTC)
ADMIN_KEY = "an-admin-key-of-the-operators-own-making"
ADMIN_ROLE = "arn:aws:iam::123456789012:role/platform-admin"


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    store: InMemoryTenantStore = field(default_factory=InMemoryTenantStore)
    clock: Clock = field(default_factory=Clock)
    service: TenantService = field(init=False)

    def __post_init__(self) -> None:
        self.service = TenantService(
            store=self.store,
            admin_key_digests=[key_digest(ADMIN_KEY)],
            admin_principal_arns=[ADMIN_ROLE],
            clock=self.clock,
        )

    def tenant_of(self, key: str) -> str | None:
        outcome = self.service.authenticate(key)
        return outcome.tenant if isinstance(outcome, Principal) else None


@pytest.fixture
def world() -> World:
    return World()


# ------------------------------------------------------------------------------------------------- keys


def test_a_new_key_has_its_format_and_is_stored_only_as_its_sha256() -> None:
    # When: keys are made
    keys = [new_api_key() for _ in range(200)]
    # Then: each is trk_<12 base32>_<43 url-safe>, its id is in it, its digest is the SHA-256 of the whole key
    for key, key_id, digest in keys:
        assert re.fullmatch(r"trk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}", key), key
        assert key_id_of(key) == key_id and key.split("_", 2)[1] == key_id
        assert digest == hashlib.sha256(key.encode()).hexdigest() == key_digest(key)
    assert len({key for key, _, _ in keys}) == len({key_id for _, key_id, _ in keys}) == 200


@pytest.mark.parametrize(
    "key",
    [
        "",
        "trk_",
        "trk_abcdefghijkl",
        "trk_ABCDEFGHIJKL_" + "a" * 43,  # uppercase id
        "trk_abcdefghijk1_" + "a" * 43,  # 1 is not base32
        "trk_abcdefghijkl_" + "a" * 42,
        "trk_abcdefghijkl_" + "a" * 44,
        "trk_abcdefghijkl_" + "a" * 42 + "!",
        "xyz_abcdefghijkl_" + "a" * 43,
        " trk_abcdefghijkl_" + "a" * 43,
    ],
)
def test_the_format_check_refuses_what_is_not_a_key_of_this_system(key: str) -> None:
    assert key_id_of(key) is None


def test_a_digest_is_taken_of_any_string_without_raising() -> None:
    assert len(key_digest("\udc80\x00é")) == 64


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("Bearer trk_key", "trk_key"),
        ("bearer trk_key", "trk_key"),
        ("BEARER   trk_key  ", "trk_key"),
        ("\tBearer\ttrk_key", "trk_key"),
    ],
)
def test_the_bearer_scheme_is_read_in_any_case(authorization: str, expected: str) -> None:
    assert bearer_key(authorization) == expected


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "trk_abcdefghijkl_" + "a" * 43,  # a key without its scheme
        "Bearer two words",
        "Bearer k\x00ey",
        "Bearer kéy",
        "Bearer\xa0trk_key",  # a no-break space is not HTTP's separator
        "Bearer\u2003trk_key",
        "Bearer \udc80\udcff",
        "Bearer " + "k" * 10_240,
        "B" * 10_240,
        42,
        ["Bearer trk_key"],
        {"Bearer": "trk_key"},
    ],
)
def test_any_other_header_value_is_a_refusal_never_an_exception(authorization: object) -> None:
    outcome = bearer_key(authorization)
    assert isinstance(outcome, Refusal) and outcome.reason


# ------------------------------------------------------------------------------------------------- administration


def test_a_new_tenant_shows_its_key_once(world: World) -> None:
    # When: a tenant is created with quotas
    created = world.service.create(TenantSpec(name="acme", quotas=Quotas(max_running_tasks=2, max_vcpu=1.5)))
    # Then: the answer holds its key; reading it again never does, nor the key's digest
    assert created.api_key.startswith("trk_") and key_id_of(created.api_key) == created.api_key_id
    assert created.enabled and created.quotas.max_running_tasks == 2 and created.quotas.max_vcpu == 1.5
    assert [k.key_id for k in created.keys] == [created.api_key_id]
    again = world.service.get("acme").model_dump_json()
    assert created.api_key not in again and key_digest(created.api_key) not in again and "api_key" not in again
    assert world.tenant_of(created.api_key) == "acme"
    # and the stored key is its digest alone
    assert list(world.store.keys) == [key_digest(created.api_key)]


def test_a_tenant_exists_once_and_default_always_exists(world: World) -> None:
    world.service.create(TenantSpec(name="acme"))
    with pytest.raises(TenantAlreadyExists):
        world.service.create(TenantSpec(name="acme"))
    with pytest.raises(TenantAlreadyExists):
        world.service.create(TenantSpec(name="default"))
    with pytest.raises(TenantNotFound):
        world.service.get("nobody")
    # default, never created, is there: enabled and unlimited
    admin = world.service.get("default")
    assert admin.enabled and admin.quotas == Quotas() and admin.keys == []


@pytest.mark.parametrize("name", ["a", "acme", "a-1", "0" * 32, "a" + "-" * 30 + "z"])
def test_tenant_names_that_are_valid(name: str) -> None:
    assert TenantSpec(name=name).name == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "Acme", "a_b", "a.b", "a" * 33, "a#b", "ä"])
def test_tenant_names_that_are_not(name: str) -> None:
    with pytest.raises(ValidationError):
        TenantSpec(name=name)


def test_unknown_fields_and_quotas_out_of_range_are_refused() -> None:
    with pytest.raises(ValidationError):
        TenantSpec.model_validate({"name": "acme", "quota": {}})
    with pytest.raises(ValidationError):
        TenantSpec.model_validate({"name": "acme", "quotas": {"max_vcpu": 0}})
    with pytest.raises(ValidationError):
        KeyRotation(grace_seconds=2_592_001)
    assert KeyRotation().grace_seconds == 86_400


def test_tenants_are_listed_by_name_with_default_among_them(world: World) -> None:
    # Given: three tenants
    for name in ("zeta", "acme", "edge"):
        world.service.create(TenantSpec(name=name))
    # When: listed two at a time
    first = world.service.list_tenants(2, None)
    assert first.next_token
    second = world.service.list_tenants(2, first.next_token)
    # Then: every tenant once, by name, default included
    assert [t.name for t in first.items + second.items] == ["acme", "default", "edge", "zeta"]
    assert second.next_token is None


def test_disabling_stops_the_keys_and_enabling_restores_them(world: World) -> None:
    # Given: a tenant with a working key
    created = world.service.create(TenantSpec(name="acme", quotas=Quotas(max_running_tasks=3)))
    # When: it is disabled
    disabled = world.service.disable("acme")
    # Then: its key is refused, naming why; its record stays
    assert disabled.enabled is False and disabled.quotas.max_running_tasks == 3
    outcome = world.service.authenticate(created.api_key)
    assert isinstance(outcome, Refusal) and "disabled" in outcome.reason
    assert created.api_key not in outcome.reason
    # When/Then: enabled again with new quotas, the same key works
    enabled = world.service.update("acme", TenantUpdate(quotas=Quotas(max_vcpu=4), enabled=True))
    assert enabled.enabled and enabled.quotas == Quotas(max_vcpu=4)
    assert world.tenant_of(created.api_key) == "acme"


def test_updating_without_enabled_keeps_it(world: World) -> None:
    world.service.create(TenantSpec(name="acme"))
    world.service.disable("acme")
    assert world.service.update("acme", TenantUpdate(quotas=Quotas())).enabled is False
    with pytest.raises(TenantNotFound):
        world.service.update("nobody", TenantUpdate(quotas=Quotas()))
    with pytest.raises(TenantNotFound):
        world.service.disable("nobody")


def test_the_admin_tenant_takes_quotas_but_cannot_be_disabled(world: World) -> None:
    with pytest.raises(AdminTenantCannotBeDisabled):
        world.service.disable("default")
    with pytest.raises(AdminTenantCannotBeDisabled):
        world.service.update("default", TenantUpdate(quotas=Quotas(), enabled=False))
    updated = world.service.update("default", TenantUpdate(quotas=Quotas(max_running_tasks=50)))
    assert updated.enabled and updated.quotas.max_running_tasks == 50
    assert world.service.get("default").quotas.max_running_tasks == 50


def test_in_flight_is_read_from_the_queue_counters(world: World) -> None:
    world.service.create(TenantSpec(name="acme"))
    stored = world.store.tenants["acme"]
    world.store.tenants["acme"] = stored.model_copy(
        update={"running_tasks": 2, "running_cpu": 1536, "running_memory": 3072, "queued_tasks": 4}
    )
    in_flight = world.service.get("acme").in_flight
    assert (in_flight.running_tasks, in_flight.vcpu, in_flight.memory_gib, in_flight.queued_tasks) == (2, 1.5, 3, 4)


# ------------------------------------------------------------------------------------------------- rotation


def test_rotation_without_grace_revokes_the_old_key_at_once(world: World) -> None:
    # Given: a tenant and its key
    created = world.service.create(TenantSpec(name="acme"))
    # When: its key is rotated with no grace
    rotated = world.service.rotate_key("acme", KeyRotation(grace_seconds=0))
    # Then: the new key works, the old one not at all, and only the new one is listed (the old one's item is gone)
    assert rotated.api_key != created.api_key
    assert world.tenant_of(rotated.api_key) == "acme"
    assert world.tenant_of(created.api_key) is None
    assert [k.key_id for k in world.service.get("acme").keys] == [rotated.api_key_id]
    assert key_digest(created.api_key) not in world.store.keys


def test_rotation_with_grace_keeps_both_keys_until_the_grace_ends(world: World) -> None:
    # Given: a tenant and its key
    created = world.service.create(TenantSpec(name="acme"))
    # When: its key is rotated with an hour of grace
    rotated = world.service.rotate_key("acme", KeyRotation(grace_seconds=3600))
    # Then: both keys work, and the old one shows when it ends
    assert world.tenant_of(created.api_key) == world.tenant_of(rotated.api_key) == "acme"
    keys = {k.key_id: k for k in rotated.keys}
    assert keys[created.api_key_id].expires_at == NOW + timedelta(hours=1)
    assert keys[rotated.api_key_id].expires_at is None
    # When: the hour has passed
    world.clock.advance(3600)
    # Then: the old key is refused as expired, and no longer listed; the new one works
    outcome = world.service.authenticate(created.api_key)
    assert isinstance(outcome, Refusal) and "expired" in outcome.reason
    assert world.tenant_of(rotated.api_key) == "acme"
    assert [k.key_id for k in world.service.get("acme").keys] == [rotated.api_key_id]
    # and the next rotation removes the expired key's item
    world.service.rotate_key("acme", KeyRotation(grace_seconds=60))
    assert key_digest(created.api_key) not in world.store.keys


def test_a_second_rotation_never_lengthens_a_grace_already_running(world: World) -> None:
    created = world.service.create(TenantSpec(name="acme"))
    world.service.rotate_key("acme", KeyRotation(grace_seconds=60))
    world.service.rotate_key("acme", KeyRotation(grace_seconds=86_400))
    assert world.store.keys[key_digest(created.api_key)].expires_at == NOW + timedelta(seconds=60)


def test_keys_that_work_at_once_are_bounded(world: World) -> None:
    world.service.create(TenantSpec(name="acme"))
    for _ in range(MAX_LIVE_KEYS - 1):
        world.service.rotate_key("acme", KeyRotation(grace_seconds=3600))
    with pytest.raises(InvalidParameter) as refused:
        world.service.rotate_key("acme", KeyRotation(grace_seconds=3600))
    assert refused.value.field == "grace_seconds"
    assert len(world.service.rotate_key("acme", KeyRotation(grace_seconds=0)).keys) == 1


def test_a_rotation_that_races_another_change_reads_again(world: World) -> None:
    # Given: a store whose first key rewrite finds the tenant changed
    world.service.create(TenantSpec(name="acme"))
    real = world.store.replace_keys
    calls = []

    def racing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise StaleStatus("changed")
        real(*args, **kwargs)  # type: ignore[arg-type]

    world.store.replace_keys = racing  # type: ignore[method-assign]
    # When/Then: the rotation succeeds on the second attempt
    rotated = world.service.rotate_key("acme", KeyRotation(grace_seconds=0))
    assert len(calls) == 2 and world.tenant_of(rotated.api_key) == "acme"


def test_revoking_one_key_stops_it_alone(world: World) -> None:
    # Given: two working keys
    created = world.service.create(TenantSpec(name="acme"))
    rotated = world.service.rotate_key("acme", KeyRotation(grace_seconds=3600))
    # When: the old one is revoked
    world.service.revoke_key("acme", created.api_key_id)
    # Then: it is refused at once, the other works
    assert world.tenant_of(created.api_key) is None and world.tenant_of(rotated.api_key) == "acme"
    with pytest.raises(ApiKeyNotFound):
        world.service.revoke_key("acme", created.api_key_id)
    with pytest.raises(TenantNotFound):
        world.service.revoke_key("nobody", created.api_key_id)


def test_the_admin_tenant_may_get_keys_of_its_own(world: World) -> None:
    rotated = world.service.rotate_key("default", KeyRotation(grace_seconds=0))
    outcome = world.service.authenticate(rotated.api_key)
    assert outcome == Principal(tenant="default", admin=True, key_id=rotated.api_key_id)


# ------------------------------------------------------------------------------------------------- authentication


def test_an_admin_key_of_the_deployment_is_the_admin_without_a_read(world: World) -> None:
    outcome = world.service.authenticate(ADMIN_KEY)
    assert outcome == Principal(tenant="default", admin=True, key_id="admin")
    assert world.store.reads == 0


def test_an_admin_key_in_the_key_format_is_named_by_its_key_id() -> None:
    key, key_id, digest = new_api_key()
    service = TenantService(store=InMemoryTenantStore(), admin_key_digests=[digest.upper(), ""])
    assert service.authenticate(key) == Principal(tenant="default", admin=True, key_id=key_id)


def test_admin_digests_that_are_not_sha256_fail_loudly() -> None:
    with pytest.raises(ValueError, match="ADMIN_API_KEY_SHA256"):
        TenantService(store=InMemoryTenantStore(), admin_key_digests=["not-a-digest"])


def test_unknown_and_forged_keys_are_refused(world: World) -> None:
    # Given: a tenant's key
    created = world.service.create(TenantSpec(name="acme"))
    forged = f"trk_{created.api_key_id}_{new_api_key()[0].rsplit('_', 1)[1]}"  # its key id, another secret
    # When/Then: an unknown key, a forged one and a malformed one are refused; a malformed one costs no read
    for key in (new_api_key()[0], forged):
        outcome = world.service.authenticate(key)
        assert isinstance(outcome, Refusal) and key not in outcome.reason
    reads = world.store.reads
    assert isinstance(world.service.authenticate("not-a-key"), Refusal)
    assert world.store.reads == reads
    # and a non-admin tenant's key is never admin
    assert world.service.authenticate(created.api_key) == Principal(tenant="acme", key_id=created.api_key_id)


def test_the_header_path_and_the_authorizer_context_round_trip(world: World) -> None:
    created = world.service.create(TenantSpec(name="acme"))
    outcome = world.service.authenticate_header(f"Bearer {created.api_key}")
    context = authorizer_context(outcome)
    assert context == {"tenant": "acme", "admin": False, "key_id": created.api_key_id}
    assert principal_from_context(context) == outcome
    refused = authorizer_context(world.service.authenticate_header("Basic x"))
    assert refused["tenant"] == "" and refused["reason"]
    assert isinstance(principal_from_context(refused), Refusal)


@pytest.mark.parametrize(
    "context",
    [None, "x", [], {}, {"tenant": ""}, {"tenant": None}, {"tenant": 5}, {"reason": "no key"}],
)
def test_a_context_without_a_tenant_is_no_principal(context: object) -> None:
    assert isinstance(principal_from_context(context), Refusal)


def test_admin_in_a_context_may_come_as_a_string() -> None:
    assert principal_from_context({"tenant": "default", "admin": "true"}) == Principal(tenant="default", admin=True)
    assert principal_from_context({"tenant": "acme", "admin": "false"}) == Principal(tenant="acme")


# ------------------------------------------------------------------------------------------------- IAM


@pytest.mark.parametrize(
    ("user_arn", "expected"),
    [
        ("arn:aws:sts::123456789012:assumed-role/acme-ci/session-1", "arn:aws:iam::123456789012:role/acme-ci"),
        ("arn:aws-cn:sts::123456789012:assumed-role/r/s", "arn:aws-cn:iam::123456789012:role/r"),
        ("arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/alice"),
        ("arn:aws:iam::123456789012:role/path/r", "arn:aws:iam::123456789012:role/path/r"),
        ("arn:aws:sts::123456789012:federated-user/bob", None),
        ("", None),
        (None, None),
    ],
)
def test_the_iam_caller_is_named_by_its_role(user_arn: object, expected: str | None) -> None:
    assert role_arn(user_arn) == expected


def test_iam_principals_map_to_their_tenant(world: World) -> None:
    # Given: a tenant and a role mapped to it
    world.service.create(TenantSpec(name="acme"))
    world.store.principals["arn:aws:iam::123456789012:role/acme-ci"] = "acme"
    session = "arn:aws:sts::123456789012:assumed-role/acme-ci/build-7"
    # Then: a session of the role is the tenant; an admin role is the admin; an unmapped role is no one
    assert world.service.principal_for_role(session) == Principal(tenant="acme")
    admin_session = "arn:aws:sts::123456789012:assumed-role/platform-admin/me"
    assert world.service.principal_for_role(admin_session) == Principal(tenant="default", admin=True)
    assert isinstance(world.service.principal_for_role("arn:aws:iam::123456789012:role/other"), Refusal)
    assert isinstance(world.service.principal_for_role(None), Refusal)
    # and a disabled tenant's role is refused
    world.service.disable("acme")
    assert isinstance(world.service.principal_for_role(session), Refusal)


# ------------------------------------------------------------------------------------------------- usage


def test_whose_usage_a_caller_may_read(world: World) -> None:
    world.service.create(TenantSpec(name="acme"))
    admin, acme = Principal(tenant="default", admin=True), Principal(tenant="acme")
    assert world.service.usage_tenant(admin, None) == "default"
    assert world.service.usage_tenant(admin, "acme") == "acme"
    assert world.service.usage_tenant(acme, None) == world.service.usage_tenant(acme, "acme") == "acme"
    with pytest.raises(TenantNotFound) as missing:
        world.service.usage_tenant(admin, "nobody")
    # another tenant's usage is answered as a tenant that does not exist
    with pytest.raises(TenantNotFound) as theirs:
        world.service.usage_tenant(acme, "default")
    assert str(theirs.value).replace("default", "x") == str(missing.value).replace("nobody", "x")
