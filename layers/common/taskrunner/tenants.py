"""Tenants: who is calling (the principal), the quotas a tenant's tasks share, and API keys.

The layout of a tenant's records in the tasks table is shared by the tenant administration (name, quotas,
keys) and by the fair queue (the counters of what the tenant has in flight): see TENANT_ITEM_FIELDS.

API keys are `trk_<key id>_<secret>`: the key id (12 characters of lowercase base32) names a key in listings and
logs, the secret (`secrets.token_urlsafe(32)`, 256 random bits) makes it unguessable. Only the SHA-256 digest of the
whole key is stored: a leaked table leaks no key, and a fast digest is enough for secrets of 256 random bits (slow
password hashes exist for secrets people choose). A key is shown once, in the answer that made it.

Rotating a tenant's key makes a new one and gives every key that still works an expiry `grace_seconds` away (0: at
once), so clients can switch over within the grace period; a key can also be revoked alone. A disabled tenant's keys
stop working, and work again when it is enabled. `default`, the admin tenant, exists without being created (the
deployment's admin keys, ADMIN_API_KEY_SHA256, belong to it) and cannot be disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from taskrunner.errors import (
    AdminTenantCannotBeDisabled,
    ApiKeyNotFound,
    InvalidParameter,
    StaleStatus,
    TenantAlreadyExists,
    TenantNotFound,
)
from taskrunner.models import DEFAULT_TENANT
from taskrunner.settings import Settings

#: the tenant of the deployment's admin keys (and of every task from before tenants existed)
ADMIN_TENANT = DEFAULT_TENANT


def _a_json_number(value: Any) -> Any:
    """A number as JSON writes it: `true` is not 1 and `"5"` is not 5 (pydantic's lax mode takes both). Stored
    numbers (Decimal) and null pass."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


def _a_json_boolean(value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


JsonNumber = BeforeValidator(_a_json_number)


class Quotas(BaseModel):
    """What one tenant may have in flight at once (tasks holding a slot: admitted and not yet metered).
    A missing (null) limit is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_running_tasks: Annotated[int | None, JsonNumber] = Field(default=None, ge=1, le=100_000)
    # Fargate's smallest task has 0.25 vCPU and 0.5 GiB: a smaller limit would admit nothing (and a float as small
    # as 5e-324 cannot even be stored as a DynamoDB number)
    max_vcpu: Annotated[float | None, JsonNumber] = Field(default=None, ge=0.25, le=100_000)
    max_memory_gib: Annotated[float | None, JsonNumber] = Field(default=None, ge=0.5, le=1_000_000)


class Principal(BaseModel):
    """The authenticated caller: its tenant, and whether it may administer tenants."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    admin: bool = False
    key_id: str | None = None


def tenant_key(name: str) -> dict[str, dict[str, str]]:
    """The DynamoDB key of a tenant's item in the tasks table."""
    return {"pk": {"S": f"TENANT#{name}"}, "sk": {"S": "TENANT"}}


#: The tenant item (tenant_key): attributes written by the tenant administration
#:   name (S), enabled (BOOL), quotas (M of N, a missing limit is none), created_at/updated_at (S, ISO),
#:   keys (L of M: key_id, sha256, created_at, expires_at?), gsi1pk = "TENANTS", gsi1sk = name;
#: and by the fair queue, with ADD only (a missing counter is 0):
#:   running_tasks (N), running_cpu (N, CPU units), running_memory (N, MiB), queued_tasks (N).
#: The queue may create the item of a tenant that has none (the admin tenant, `default`) by ADDing counters, so
#: "the tenant exists" means the item has `created_at`, never just that the item exists.
TENANT_ITEM_FIELDS = (
    "name",
    "enabled",
    "quotas",
    "created_at",
    "updated_at",
    "keys",
    "running_tasks",
    "running_cpu",
    "running_memory",
    "queued_tasks",
)

#: 1 to 32 lowercase letters, digits and '-', starting and ending with a letter or digit
TENANT_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
KEY_ID_PATTERN = r"^[a-z2-7]{12}$"
_KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_KEY_ID_LENGTH = 12
_KEY_FORMAT = re.compile(r"trk_([a-z2-7]{12})_[A-Za-z0-9_-]{43}")
#: the longest key read at all: keys this system makes have 60 characters, admin keys (ADMIN_API_KEY_SHA256) may be
#: of the operator's own making
MAX_KEY_CHARS = 512
_DIGEST = re.compile(r"[0-9a-f]{64}")
DEFAULT_GRACE_SECONDS = 86_400
MAX_GRACE_SECONDS = 2_592_000
#: keys of one tenant that work at once (each rotation with a grace period adds one until the grace ends): bounds
#: the tenant item and the transaction that rewrites its keys
MAX_LIVE_KEYS = 10
_RACE_RETRIES = 5

TenantName = Annotated[
    str,
    StringConstraints(pattern=TENANT_NAME_PATTERN),
    Field(
        description="1 to 32 lowercase letters, digits or '-', starting and ending with a letter or digit",
        examples=["acme"],
    ),
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------------------ API keys


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of a whole key: all that is stored of it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_key() -> tuple[str, str, str]:
    """A new key, its key id and its digest."""
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(_KEY_ID_LENGTH))
    key = f"trk_{key_id}_{secrets.token_urlsafe(32)}"
    return key, key_id, key_digest(key)


def key_id_of(key: str) -> str | None:
    """The key id of a key in the format this system makes, else None (cheap: no digest, no read)."""
    match = _KEY_FORMAT.fullmatch(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Refusal:
    """Why a request has no principal: shown to the caller, so it never quotes the key."""

    reason: str


def bearer_key(authorization: object) -> str | Refusal:
    """The API key of an `Authorization: Bearer <key>` header value (the scheme in any case), or why there is none.
    Any value at all is answered, never raised on: a header is whatever a client sent."""
    if authorization is None or authorization == "":
        return Refusal("no Authorization header")
    if not isinstance(authorization, str):
        return Refusal("the Authorization header is not `Bearer <api key>`")
    if len(authorization) > MAX_KEY_CHARS + 64:
        return Refusal("the Authorization header is too long to hold an API key")
    if not authorization.isascii():  # HTTP's separators are spaces and tabs, not U+00A0 or other Unicode spaces
        return Refusal("the Authorization header is not `Bearer <api key>`")
    parts = authorization.split(maxsplit=1)
    if not parts or parts[0].lower() != "bearer":
        return Refusal("the Authorization header is not `Bearer <api key>`")
    key = parts[1].strip() if len(parts) == 2 else ""
    if not key:
        return Refusal("the Authorization header has no API key after `Bearer`")
    if len(key) > MAX_KEY_CHARS or not (key.isascii() and key.isprintable()) or " " in key:
        return Refusal("the API key is malformed")
    return key


def authorizer_context(outcome: Principal | Refusal) -> dict[str, str | bool]:
    """The context an HTTP API Lambda authorizer (simple responses) hands the API function, as
    `requestContext.authorizer.lambda`: the principal, or an empty tenant and the reason."""
    if isinstance(outcome, Refusal):
        return {"tenant": "", "reason": outcome.reason}
    return {"tenant": outcome.tenant, "admin": outcome.admin, "key_id": outcome.key_id or ""}


def principal_from_context(context: object) -> Principal | Refusal:
    """The principal of an authorizer context (`authorizer_context`'s), or why there is none."""
    if not isinstance(context, Mapping):
        return Refusal("the request carries no authorizer context")
    tenant, reason = context.get("tenant"), context.get("reason")
    if not isinstance(tenant, str) or not tenant:
        return Refusal(reason if isinstance(reason, str) and reason else "no valid API key")
    key_id = context.get("key_id")
    return Principal(
        tenant=tenant,
        admin=context.get("admin") in (True, "true"),  # API Gateway may hand a boolean on as a string
        key_id=key_id if isinstance(key_id, str) and key_id else None,
    )


_ASSUMED_ROLE = re.compile(r"arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+")
_IAM_PRINCIPAL = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:(?:role|user)/.+")


def role_arn(user_arn: object) -> str | None:
    """The IAM principal an HTTP API's IAM authorizer names (`userArn`), as PRINCIPAL# items and
    ADMIN_PRINCIPAL_ARNS name it: a role session's `arn:aws:sts::<account>:assumed-role/<role>/<session>` is its role,
    `arn:aws:iam::<account>:role/<role>` (a session's ARN has no role path, so neither has the mapped ARN); a user
    is itself."""
    if not isinstance(user_arn, str):
        return None
    assumed = _ASSUMED_ROLE.fullmatch(user_arn)
    if assumed:
        partition, account, role = assumed.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return user_arn if _IAM_PRINCIPAL.fullmatch(user_arn) else None


# ------------------------------------------------------------------------------------------------------ models


class ApiKeyInfo(BaseModel):
    """A key of a tenant, as the administration shows it: never the key, nor its digest."""

    key_id: str
    created_at: datetime
    expires_at: Annotated[
        datetime | None, Field(description="When the key stops working (a rotation's grace period); null: never")
    ] = None


class StoredApiKey(ApiKeyInfo):
    """An entry of the tenant item's `keys`; its digest names the key's own item."""

    sha256: str

    def info(self) -> ApiKeyInfo:
        return ApiKeyInfo(key_id=self.key_id, created_at=self.created_at, expires_at=self.expires_at)

    def works_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


class ApiKeyRecord(BaseModel):
    """A key's own item (`APIKEY#<sha256>`): what authentication reads."""

    sha256: str
    tenant: str
    key_id: str
    created_at: datetime
    expires_at: datetime | None = None


class InFlight(BaseModel):
    """What the tenant's tasks hold now (admitted and not yet metered), and how many wait in QUEUED."""

    running_tasks: int = 0
    vcpu: float = 0.0
    memory_gib: float = 0.0
    queued_tasks: int = 0


class TenantSpec(BaseModel):
    """A new tenant (POST /tenants)."""

    model_config = ConfigDict(extra="forbid")

    name: TenantName
    quotas: Quotas = Field(default_factory=Quotas)


class TenantUpdate(BaseModel):
    """PUT /tenants/{name}: replaces the quotas; `enabled` disables or enables the tenant (absent: unchanged)."""

    model_config = ConfigDict(extra="forbid")

    quotas: Quotas
    enabled: Annotated[bool | None, BeforeValidator(_a_json_boolean)] = None


class KeyRotation(BaseModel):
    """POST /tenants/{name}/keys."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: Annotated[
        int,
        JsonNumber,
        Field(
            ge=0,
            le=MAX_GRACE_SECONDS,
            description="How long the tenant's current keys keep working (0: revoked at once; at most 30 days)",
        ),
    ] = DEFAULT_GRACE_SECONDS


class Tenant(BaseModel):
    name: str
    enabled: bool
    quotas: Quotas
    created_at: datetime
    updated_at: datetime
    keys: Annotated[list[ApiKeyInfo], Field(description="The keys that work now")]
    in_flight: InFlight


class TenantWithKey(Tenant):
    """A tenant with the API key just made: the only answer that ever shows it."""

    api_key: Annotated[str, Field(description="The new key: shown this once, stored only as its SHA-256 digest")]
    api_key_id: str


class TenantPage(BaseModel):
    items: list[Tenant]
    next_token: str | None = None


class TenantRecord(BaseModel):
    """A tenant item as stored: the administration's fields and the fair queue's counters."""

    model_config = ConfigDict(extra="ignore")

    name: str
    enabled: bool = True
    quotas: Quotas = Field(default_factory=Quotas)
    created_at: datetime
    updated_at: datetime
    keys: list[StoredApiKey] = []
    running_tasks: int = 0
    running_cpu: int = 0
    running_memory: int = 0
    queued_tasks: int = 0

    def view(self, now: datetime) -> Tenant:
        return Tenant(
            name=self.name,
            enabled=self.enabled,
            quotas=self.quotas,
            created_at=self.created_at,
            updated_at=self.updated_at,
            keys=[key.info() for key in self.keys if key.works_at(now)],
            in_flight=InFlight(
                running_tasks=self.running_tasks,
                vcpu=self.running_cpu / 1024,
                memory_gib=self.running_memory / 1024,
                queued_tasks=self.queued_tasks,
            ),
        )


# ------------------------------------------------------------------------------------------------------ port


class TenantStore(Protocol):
    def create(self, tenant: TenantRecord, key: ApiKeyRecord) -> None:
        """Write a new tenant and its first key at once. Raises TenantAlreadyExists."""

    def get(self, name: str) -> TenantRecord | None:
        """The tenant, or None when it was never created (an item of counters alone is not a tenant)."""

    def ensure(self, tenant: TenantRecord) -> TenantRecord:
        """Give a tenant that was never created `tenant`'s fields (the admin tenant's, made on first use), keeping
        what its item holds; returns the tenant as stored."""

    def list_tenants(self, limit: int, next_token: str | None) -> tuple[list[TenantRecord], str | None]:
        """Tenants by name. Raises InvalidParameter for a token it did not issue."""

    def update(self, name: str, changes: Mapping[str, Any], updated_at: datetime) -> TenantRecord:
        """Set the tenant item's `changes` (quotas, enabled); returns the tenant as stored. Raises TenantNotFound."""

    def replace_keys(
        self,
        tenant: TenantRecord,
        keys: list[StoredApiKey],
        updated_at: datetime,
        *,
        add: ApiKeyRecord | None,
        expire: Mapping[str, datetime],
        delete: Collection[str],
    ) -> None:
        """At once: the tenant's key list becomes `keys`, key `add` is written, the key items of digests `expire`
        get their expiry, those of `delete` go. Raises StaleStatus when the tenant changed since `tenant` was read
        (its updated_at)."""

    def api_key(self, sha256: str) -> ApiKeyRecord | None:
        """The key item of this digest (a consistent read)."""

    def enabled(self, name: str) -> bool | None:
        """Whether the tenant is enabled (a consistent read); None when it was never created."""

    def principal_tenant(self, role_arn: str) -> str | None:
        """The tenant an IAM principal is mapped to (its PRINCIPAL# item), if any."""


# ------------------------------------------------------------------------------------------------------ service


def _checked_digests(digests: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(d.strip().lower() for d in digests if d.strip())
    malformed = [d for d in checked if not _DIGEST.fullmatch(d)]
    if malformed:
        raise ValueError(
            f"ADMIN_API_KEY_SHA256 holds {len(malformed)} value(s) that are not SHA-256 hex digests (64 hex characters)"
        )
    return checked


def _comma_separated(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class TenantService:
    """The tenant administration, and who a key or an IAM principal is."""

    def __init__(
        self,
        *,
        store: TenantStore,
        admin_key_digests: Iterable[str] = (),
        admin_principal_arns: Iterable[str] = (),
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.admin_key_digests = _checked_digests(admin_key_digests)
        self.admin_principal_arns = frozenset(arn.strip() for arn in admin_principal_arns if arn.strip())
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, store: TenantStore) -> TenantService:
        """With the deployment's admin keys (ADMIN_API_KEY_SHA256) and admin IAM roles (ADMIN_PRINCIPAL_ARNS)."""
        return cls(
            store=store,
            admin_key_digests=_comma_separated(settings.admin_api_key_sha256),
            admin_principal_arns=_comma_separated(settings.admin_principal_arns),
        )

    # -- administration

    def create(self, spec: TenantSpec) -> TenantWithKey:
        if spec.name == ADMIN_TENANT:
            raise TenantAlreadyExists(spec.name)
        now = self.clock()
        key, key_id, digest = new_api_key()
        record = TenantRecord(
            name=spec.name,
            quotas=spec.quotas,
            created_at=now,
            updated_at=now,
            keys=[StoredApiKey(key_id=key_id, sha256=digest, created_at=now)],
        )
        self.store.create(record, ApiKeyRecord(sha256=digest, tenant=spec.name, key_id=key_id, created_at=now))
        return TenantWithKey(**record.view(now).model_dump(), api_key=key, api_key_id=key_id)

    def get(self, name: str) -> Tenant:
        return self._record(name).view(self.clock())

    def list_tenants(self, limit: int, next_token: str | None) -> TenantPage:
        if next_token is None:
            self._record(ADMIN_TENANT)  # listed like any other from its first listing on
        records, token = self.store.list_tenants(limit, next_token)
        now = self.clock()
        return TenantPage(items=[record.view(now) for record in records], next_token=token)

    def update(self, name: str, update: TenantUpdate) -> Tenant:
        if name == ADMIN_TENANT and update.enabled is False:
            raise AdminTenantCannotBeDisabled(name)
        changes: dict[str, Any] = {"quotas": update.quotas.model_dump(mode="json", exclude_none=True)}
        if update.enabled is not None:
            changes["enabled"] = update.enabled
        return self._update(name, changes)

    def disable(self, name: str) -> Tenant:
        """Its keys stop working; its records, and its tasks already admitted, stay."""
        if name == ADMIN_TENANT:
            raise AdminTenantCannotBeDisabled(name)
        return self._update(name, {"enabled": False})

    def rotate_key(self, name: str, rotation: KeyRotation) -> TenantWithKey:
        """A new key; the keys that work now stop after the grace period (at once for 0)."""
        key, key_id, digest = new_api_key()

        def rotated(record: TenantRecord, now: datetime) -> tuple[list[StoredApiKey], dict[str, datetime]]:
            ends = now + timedelta(seconds=rotation.grace_seconds)
            graced: list[StoredApiKey] = []
            expire: dict[str, datetime] = {}
            for old in record.keys:
                if rotation.grace_seconds and old.works_at(now):
                    until = min(old.expires_at or ends, ends)
                    if until != old.expires_at:
                        expire[old.sha256] = until
                    graced.append(old.model_copy(update={"expires_at": until}))
            if len(graced) >= MAX_LIVE_KEYS:
                raise InvalidParameter(
                    "grace_seconds",
                    f"tenant {name} already has {len(graced)} keys that work, the most it may have at once: rotate "
                    "with grace_seconds 0, or revoke a key first",
                )
            new = StoredApiKey(key_id=key_id, sha256=digest, created_at=now)
            return [*graced, new], expire

        record, now = self._rewrite_keys(
            name, rotated, add=lambda now: ApiKeyRecord(sha256=digest, tenant=name, key_id=key_id, created_at=now)
        )
        return TenantWithKey(**record.view(now).model_dump(), api_key=key, api_key_id=key_id)

    def revoke_key(self, name: str, key_id: str) -> None:
        """The key stops working now."""

        def without(record: TenantRecord, now: datetime) -> tuple[list[StoredApiKey], dict[str, datetime]]:
            live = [k for k in record.keys if k.works_at(now)]
            if not any(k.key_id == key_id for k in live):
                raise ApiKeyNotFound(name, key_id)
            return [k for k in live if k.key_id != key_id], {}

        self._rewrite_keys(name, without, add=None)

    # -- authentication

    def authenticate_header(self, authorization: object) -> Principal | Refusal:
        """The principal of an Authorization header value, or why there is none."""
        key = bearer_key(authorization)
        return key if isinstance(key, Refusal) else self.authenticate(key)

    def authenticate(self, key: str) -> Principal | Refusal:
        """The principal of an API key: a deployment's admin key, or a tenant's key that has not expired, of a
        tenant that is enabled. Reads the key's item and its tenant's (consistently: a revocation or a disable
        holds at once), none for an admin key."""
        digest = key_digest(key)
        key_id = key_id_of(key)
        if self._is_admin_digest(digest):
            return Principal(tenant=ADMIN_TENANT, admin=True, key_id=key_id or "admin")
        if key_id is None:
            return Refusal("the API key is malformed")
        record = self.store.api_key(digest)
        if record is None or record.key_id != key_id:
            return Refusal("unknown or revoked API key")
        if record.expires_at is not None and record.expires_at <= self.clock():
            return Refusal("the API key has expired (rotated out)")
        refusal = self._tenant_refusal(record.tenant)
        return refusal or Principal(tenant=record.tenant, admin=record.tenant == ADMIN_TENANT, key_id=key_id)

    def principal_for_role(self, user_arn: object) -> Principal | Refusal:
        """The principal of an IAM caller (the IAM authorizer's `userArn`): an admin role of the deployment
        (ADMIN_PRINCIPAL_ARNS), or the tenant its PRINCIPAL# item maps it to, if that tenant is enabled."""
        arn = role_arn(user_arn)
        if arn is None:
            return Refusal("the IAM caller is not an IAM role or user")
        if arn in self.admin_principal_arns:
            return Principal(tenant=ADMIN_TENANT, admin=True)
        tenant = self.store.principal_tenant(arn)
        if tenant is None:
            return Refusal(f"IAM principal {arn} is mapped to no tenant")
        return self._tenant_refusal(tenant) or Principal(tenant=tenant, admin=tenant == ADMIN_TENANT)

    def usage_tenant(self, principal: Principal, requested: str | None) -> str:
        """Whose usage `principal` reads when asking for `requested`'s: admins any tenant's, everyone else only their
        own (another tenant's is answered as a tenant that does not exist)."""
        if requested is None or requested == principal.tenant:
            return principal.tenant
        if not principal.admin:
            raise TenantNotFound(requested)
        self._record(requested)
        return requested

    # -- internals

    def _is_admin_digest(self, digest: str) -> bool:
        matched = False
        for admin in self.admin_key_digests:  # every one compared, in constant time
            matched |= hmac.compare_digest(digest, admin)
        return matched

    def _tenant_refusal(self, tenant: str) -> Refusal | None:
        enabled = self.store.enabled(tenant)
        if enabled is None and tenant != ADMIN_TENANT:
            return Refusal("unknown or revoked API key")
        if enabled is False:
            return Refusal(f"tenant {tenant} is disabled")
        return None

    def _admin_record(self, now: datetime) -> TenantRecord:
        return TenantRecord(name=ADMIN_TENANT, created_at=now, updated_at=now)

    def _record(self, name: str) -> TenantRecord:
        record = self.store.get(name)
        if record is not None:
            return record
        if name == ADMIN_TENANT:
            return self.store.ensure(self._admin_record(self.clock()))
        raise TenantNotFound(name)

    def _update(self, name: str, changes: Mapping[str, Any]) -> Tenant:
        if name == ADMIN_TENANT:
            self._record(name)
        now = self.clock()
        return self.store.update(name, changes, now).view(now)

    def _rewrite_keys(
        self,
        name: str,
        new_keys: Callable[[TenantRecord, datetime], tuple[list[StoredApiKey], dict[str, datetime]]],
        *,
        add: Callable[[datetime], ApiKeyRecord] | None,
    ) -> tuple[TenantRecord, datetime]:
        """Rewrite the tenant's keys as `new_keys` says (the keys to keep, the expiries to set), against the tenant
        as read, again if it changed meanwhile. Keys that no longer work leave the list, and their items go."""
        for _ in range(_RACE_RETRIES):
            record, now = self._record(name), self.clock()
            keys, expire = new_keys(record, now)
            kept = {k.sha256 for k in keys}
            delete = [k.sha256 for k in record.keys if k.sha256 not in kept]
            try:
                self.store.replace_keys(record, keys, now, add=add(now) if add else None, expire=expire, delete=delete)
            except StaleStatus:
                continue
            return record.model_copy(update={"keys": keys, "updated_at": now}), now
        raise StaleStatus(f"tenant {name} kept changing while its keys were rewritten; try again")
