"""Tenants, their API keys and the IAM principal → tenant table, in the tasks table (the TenantStore of
taskrunner.tenants), with boto3.

Items (pk, sk):
- `TENANT#<name>`, `TENANT`: the tenant (taskrunner.tenants.TENANT_ITEM_FIELDS), listed by name through gsi1
  (gsi1pk `TENANTS`, gsi1sk the name). Its fields are written with UpdateItem SET only, never a PutItem over the
  item: the fair queue ADDs its counters to the same item.
- `APIKEY#<sha256 of the key>`, `APIKEY`: tenant, key_id, created_at, expires_at (absent: never).
- `PRINCIPAL#<IAM role ARN>`, `PRINCIPAL`: tenant (AuthMode=IAM; written by the operator).

The authorizer reads keys through this module on every request it is asked about, so it imports little: the task
store's listing helpers (taskrunner.adapters, with the task service behind them) are imported by the one method
that lists.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from taskrunner.errors import StaleStatus, TenantAlreadyExists, TenantNotFound
from taskrunner.tenants import ApiKeyRecord, StoredApiKey, TenantRecord, tenant_key

#: the gsi1 partition that lists every tenant by name
TENANTS_PARTITION = "TENANTS"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def api_key_key(sha256: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"APIKEY#{sha256}"}, "sk": {"S": "APIKEY"}}


def principal_key(role_arn: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"PRINCIPAL#{role_arn}"}, "sk": {"S": "PRINCIPAL"}}


def _attribute(value: Any) -> dict[str, Any]:
    """A JSON-compatible value (datetimes as ISO strings) as a DynamoDB attribute value (numbers as Decimal)."""
    plain = value.isoformat() if isinstance(value, datetime) else value
    return dict(_serializer.serialize(json.loads(json.dumps(plain), parse_float=Decimal)))


def _set_clause(
    fields: Mapping[str, Any], *, keep_existing: bool = False
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """`SET #f0 = :v0, ...` for `fields`; with `keep_existing`, each only where the item has none yet."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    sets: list[str] = []
    for i, (field, value) in enumerate(fields.items()):
        names[f"#f{i}"] = field
        values[f":v{i}"] = _attribute(value)
        sets.append(f"#f{i} = if_not_exists(#f{i}, :v{i})" if keep_existing else f"#f{i} = :v{i}")
    return "SET " + ", ".join(sets), names, values


def _tenant(item: Mapping[str, Any]) -> TenantRecord:
    return TenantRecord.model_validate({k: _deserializer.deserialize(v) for k, v in item.items()})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _first_item_failed_its_condition(exc: ClientError) -> bool:
    """A cancelled transaction whose first item (the tenant's, in every transaction here) failed its condition."""
    if _error_code(exc) != "TransactionCanceledException":
        return False
    reasons = exc.response.get("CancellationReasons") or []
    return bool(reasons) and reasons[0].get("Code") == "ConditionalCheckFailed"


class DynamoTenantStore:
    def __init__(self, table: str, client: Any) -> None:
        self.table = table
        self.ddb = client

    # -- items

    @staticmethod
    def _tenant_fields(tenant: TenantRecord) -> dict[str, Any]:
        """The tenant item's fields that the administration writes (never the fair queue's counters)."""
        return {
            "name": tenant.name,
            "enabled": tenant.enabled,
            "quotas": tenant.quotas.model_dump(mode="json", exclude_none=True),
            "created_at": tenant.created_at,
            "updated_at": tenant.updated_at,
            "keys": [key.model_dump(mode="json", exclude_none=True) for key in tenant.keys],
            "gsi1pk": TENANTS_PARTITION,
            "gsi1sk": tenant.name,
        }

    def _key_item(self, key: ApiKeyRecord) -> dict[str, Any]:
        fields = key.model_dump(mode="json", exclude_none=True, exclude={"sha256"})
        return {**api_key_key(key.sha256), **{name: _attribute(value) for name, value in fields.items()}}

    def _get(self, key: dict[str, Any], *attributes: str) -> dict[str, Any] | None:
        request: dict[str, Any] = {"TableName": self.table, "Key": key, "ConsistentRead": True}
        if attributes:
            request["ProjectionExpression"] = ", ".join(f"#a{i}" for i in range(len(attributes)))
            request["ExpressionAttributeNames"] = {f"#a{i}": name for i, name in enumerate(attributes)}
        item: dict[str, Any] | None = self.ddb.get_item(**request).get("Item")
        return item

    # -- TenantStore: administration

    def create(self, tenant: TenantRecord, key: ApiKeyRecord) -> None:
        clause, names, values = _set_clause(self._tenant_fields(tenant))
        names["#created"] = "created_at"
        try:
            self.ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": tenant_key(tenant.name),
                            "UpdateExpression": clause,
                            "ConditionExpression": "attribute_not_exists(#created)",
                            "ExpressionAttributeNames": names,
                            "ExpressionAttributeValues": values,
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": self._key_item(key),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if _first_item_failed_its_condition(exc):
                raise TenantAlreadyExists(tenant.name) from exc
            raise

    def get(self, name: str) -> TenantRecord | None:
        item = self._get(tenant_key(name))
        return _tenant(item) if item and "created_at" in item else None

    def ensure(self, tenant: TenantRecord) -> TenantRecord:
        clause, names, values = _set_clause(self._tenant_fields(tenant), keep_existing=True)
        response = self.ddb.update_item(
            TableName=self.table,
            Key=tenant_key(tenant.name),
            UpdateExpression=clause,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return _tenant(response["Attributes"])

    def list_tenants(self, limit: int, next_token: str | None) -> tuple[list[TenantRecord], str | None]:
        from taskrunner.adapters import (
            LISTING_INDEX,
            _batch_get,
            _decode_token,
            _encode_token,
            _index_page,
            _item_key,
            _listing,
        )

        listing = _listing(LISTING_INDEX, TENANTS_PARTITION, "by name")
        after = _decode_token(next_token, listing) if next_token else None
        entries, position = _index_page(
            self.ddb, self.table, LISTING_INDEX, [TENANTS_PARTITION], limit=limit, newest_first=False, after=after
        )
        found = _batch_get(self.ddb, self.table, entries)
        tenants = [_tenant(found[key]) for key in map(_item_key, entries) if key in found]
        return tenants, _encode_token(listing, position) if position else None

    def update(self, name: str, changes: Mapping[str, Any], updated_at: datetime) -> TenantRecord:
        clause, names, values = _set_clause({**changes, "updated_at": updated_at})
        names["#created"] = "created_at"
        try:
            response = self.ddb.update_item(
                TableName=self.table,
                Key=tenant_key(name),
                UpdateExpression=clause,
                ConditionExpression="attribute_exists(#created)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise TenantNotFound(name) from exc
            raise
        return _tenant(response["Attributes"])

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
        clause, names, values = _set_clause(
            {"keys": [key.model_dump(mode="json", exclude_none=True) for key in keys], "updated_at": updated_at}
        )
        names["#seen"] = "updated_at"
        values[":seen"] = _attribute(tenant.updated_at)
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": tenant_key(tenant.name),
                    "UpdateExpression": clause,
                    "ConditionExpression": "#seen = :seen",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        if add is not None:
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": self._key_item(add),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        items += [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": api_key_key(digest),
                    "UpdateExpression": "SET expires_at = :expires",
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeValues": {":expires": _attribute(expires_at)},
                }
            }
            for digest, expires_at in expire.items()
        ]
        items += [{"Delete": {"TableName": self.table, "Key": api_key_key(digest)}} for digest in delete]
        try:
            self.ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _first_item_failed_its_condition(exc):
                raise StaleStatus(f"tenant {tenant.name} changed meanwhile") from exc
            raise

    # -- TenantStore: authentication

    def api_key(self, sha256: str) -> ApiKeyRecord | None:
        item = self._get(api_key_key(sha256), "tenant", "key_id", "created_at", "expires_at")
        if not item or "tenant" not in item:
            return None
        fields = {name: _deserializer.deserialize(value) for name, value in item.items()}
        return ApiKeyRecord.model_validate({**fields, "sha256": sha256})

    def enabled(self, name: str) -> bool | None:
        item = self._get(tenant_key(name), "enabled", "created_at")
        if not item or "created_at" not in item:
            return None
        return bool(item.get("enabled", {}).get("BOOL", True))

    def principal_tenant(self, role_arn: str) -> str | None:
        item = self._get(principal_key(role_arn), "tenant")
        tenant = (item or {}).get("tenant", {}).get("S")
        return str(tenant) if tenant else None
