"""The body of an API request, checked before routing: its media type, its encoding and its JSON.

API Gateway hands the function whatever bytes a client sent. Anything the API cannot read becomes a clear 4xx
here (415 for a media type it does not speak, 400 for bytes that are not UTF-8 or not JSON, or JSON it will
not parse: nested too deep, numbers too long), so no request body can reach a code path that fails with a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

#: Media types read as JSON. `curl -d` labels its body a form, and browsers' fetch() sends text/plain by
#: default: both carry JSON to this API in practice.
JSON_MEDIA_TYPES = frozenset({"application/json", "text/plain", "application/x-www-form-urlencoded"})
MAX_JSON_DEPTH = 32
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class BodyProblem:
    status: int
    code: str
    message: str


def _header(event: dict[str, Any], name: str) -> str:
    return next((v for k, v in (event.get("headers") or {}).items() if k.lower() == name), "")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json_media_type(kind: str) -> bool:
    return not kind or kind in JSON_MEDIA_TYPES or (kind.startswith("application/") and kind.endswith("+json"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _text(event: dict[str, Any]) -> str | BodyProblem:
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return str(body)
    try:
        raw = base64.b64decode(str(body), validate=True)
    except (binascii.Error, ValueError):
        return BodyProblem(400, "MALFORMED_BODY", "The request body is not valid base64")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BodyProblem(400, "MALFORMED_BODY", f"The request body is not UTF-8 (invalid byte at offset {exc.start})")


def checked_json_body(event: dict[str, Any]) -> dict[str, Any] | BodyProblem:
    """The event with its body as JSON text labelled `application/json`, or the problem that stops it."""
    method = str(((event.get("requestContext") or {}).get("http") or {}).get("method", "")).upper()
    if not event.get("body") or method not in _METHODS_WITH_BODY:
        return event
    kind = media_type(_header(event, "content-type"))
    if not _is_json_media_type(kind):
        return BodyProblem(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type {kind!r} is not supported; send the body as JSON (application/json)",
        )
    text = _text(event)
    if isinstance(text, BodyProblem):
        return text
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return BodyProblem(400, "MALFORMED_JSON", f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    except ValueError as exc:  # JSONDecodeError, or an integer literal longer than Python converts
        reason = "a number is too long" if "integer string conversion" in str(exc) else str(exc)
        return BodyProblem(400, "MALFORMED_JSON", f"The request body is not valid JSON: {reason}")
    if _depth(document) > MAX_JSON_DEPTH:
        return BodyProblem(400, "MALFORMED_JSON", f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "content-type"}
    headers["content-type"] = "application/json"
    return {**event, "headers": headers, "body": text, "isBase64Encoded": False}
