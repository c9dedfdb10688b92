"""An in-memory TenantStore (taskrunner.tenants), with the conditional semantics of taskrunner.tenant_store's."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from taskrunner.errors import InvalidParameter, StaleStatus, TenantAlreadyExists, TenantNotFound
from taskrunner.tenants import ApiKeyRecord, StoredApiKey, TenantRecord


class InMemoryTenantStore:
    def __init__(self) -> None:
        self.tenants: dict[str, TenantRecord] = {}
        self.keys: dict[str, ApiKeyRecord] = {}
        self.principals: dict[str, str] = {}
        self.reads = 0

    def create(self, tenant: TenantRecord, key: ApiKeyRecord) -> None:
        if tenant.name in self.tenants:
            raise TenantAlreadyExists(tenant.name)
        self.tenants[tenant.name] = tenant.model_copy(deep=True)
        self.keys[key.sha256] = key.model_copy()

    def get(self, name: str) -> TenantRecord | None:
        tenant = self.tenants.get(name)
        return tenant.model_copy(deep=True) if tenant else None

    def ensure(self, tenant: TenantRecord) -> TenantRecord:
        self.tenants.setdefault(tenant.name, tenant.model_copy(deep=True))
        return self.tenants[tenant.name].model_copy(deep=True)

    def list_tenants(self, limit: int, next_token: str | None) -> tuple[list[TenantRecord], str | None]:
        if next_token is not None and not next_token.startswith("after:"):
            raise InvalidParameter("next_token", "is not a token this listing issued")
        after = next_token.removeprefix("after:") if next_token else ""
        names = sorted(name for name in self.tenants if name > after)
        page = names[:limit]
        token = f"after:{page[-1]}" if len(names) > limit else None
        return [self.tenants[name].model_copy(deep=True) for name in page], token

    def update(self, name: str, changes: Mapping[str, Any], updated_at: datetime) -> TenantRecord:
        if name not in self.tenants:
            raise TenantNotFound(name)
        stored = self.tenants[name].model_dump()
        stored.update(changes, updated_at=updated_at)
        self.tenants[name] = TenantRecord.model_validate(stored)
        return self.tenants[name].model_copy(deep=True)

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
        stored = self.tenants[tenant.name]
        if stored.updated_at != tenant.updated_at:
            raise StaleStatus(f"tenant {tenant.name} changed meanwhile")
        self.tenants[tenant.name] = stored.model_copy(update={"keys": list(keys), "updated_at": updated_at})
        if add is not None:
            self.keys[add.sha256] = add
        for digest, expires_at in expire.items():
            self.keys[digest] = self.keys[digest].model_copy(update={"expires_at": expires_at})
        for digest in delete:
            self.keys.pop(digest, None)

    def api_key(self, sha256: str) -> ApiKeyRecord | None:
        self.reads += 1
        return self.keys.get(sha256)

    def enabled(self, name: str) -> bool | None:
        self.reads += 1
        tenant = self.tenants.get(name)
        return tenant.enabled if tenant else None

    def principal_tenant(self, role_arn: str) -> str | None:
        self.reads += 1
        return self.principals.get(role_arn)
