"""The HTTP API locally: requests become API Gateway HTTP API events (payload format 2.0) for the function
behind each route of the template's HttpApi events, and the function's answer becomes the response, as
`sam local start-api` does, without Docker."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from taskrunner_local.runtime import LambdaRuntime
from taskrunner_local.sam import HttpRoute

_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)


@dataclass(frozen=True)
class _CompiledRoute:
    route: HttpRoute
    pattern: re.Pattern[str]

    @property
    def route_key(self) -> str:
        return f"{self.route.method} {self.route.path}"


def _compile(route: HttpRoute) -> _CompiledRoute:
    regex = ""
    for part in re.split(r"(\{[^}]+\})", route.path):
        if part.startswith("{") and part.endswith("+}"):
            regex += f"(?P<{part[1:-2]}>.+)"
        elif part.startswith("{"):
            regex += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            regex += re.escape(part)
    return _CompiledRoute(route, re.compile(f"^{regex}$"))


class Gateway:
    def __init__(
        self,
        routes: list[HttpRoute],
        runtime: LambdaRuntime,
        *,
        host: str,
        port: int,
        max_request_bytes: int,
        account: str = "123456789012",
    ) -> None:
        # Literal paths win over templated ones, as in API Gateway.
        self.routes = sorted((_compile(r) for r in routes), key=lambda c: c.route.path.count("{"))
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.account = account
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "taskrunner-local-gateway"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

            def _handle(self) -> None:
                gateway.handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="gateway")

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ request → event → response

    def match(self, method: str, path: str) -> tuple[_CompiledRoute, dict[str, str]] | None:
        for compiled in self.routes:
            if compiled.route.method not in (method, "ANY"):
                continue
            found = compiled.pattern.match(path)
            if found:
                return compiled, found.groupdict()
        return None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        request_id = str(uuid.uuid4())
        try:
            self._handle(request, request_id)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # the gateway answers, whatever happened behind it
            self._send(
                request, 500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}', request_id
            )

    def _handle(self, request: BaseHTTPRequestHandler, request_id: str) -> None:
        length = int(request.headers.get("content-length") or 0)
        if length > self.max_request_bytes:
            request.close_connection = True
            self._send(
                request,
                413,
                {"content-type": "application/json"},
                b'{"message":"Request Entity Too Large"}',
                request_id,
            )
            return
        body = request.rfile.read(length) if length else b""
        url = urlsplit(request.path)
        matched = self.match(request.command, url.path)
        if matched is None:
            self._send(request, 404, {"content-type": "application/json"}, b'{"message":"Not Found"}', request_id)
            return
        compiled, path_parameters = matched
        event = self.event(
            request,
            path=url.path,
            query=url.query,
            body=body,
            compiled=compiled,
            path_parameters=path_parameters,
            request_id=request_id,
        )
        invocation = self.runtime.invoke(compiled.route.function, event)
        if invocation.error is not None:
            self._send(
                request, 500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}', request_id
            )
            return
        status, headers, payload = self.response(invocation.result)
        self._send(request, status, headers, payload, request_id)

    def event(
        self,
        request: BaseHTTPRequestHandler,
        *,
        path: str,
        query: str,
        body: bytes,
        compiled: _CompiledRoute,
        path_parameters: dict[str, str],
        request_id: str,
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
        query_parameters: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            query_parameters[name] = f"{query_parameters[name]},{value}" if name in query_parameters else value
        content_type = headers.get("content-type", "")
        is_text = not body or content_type.startswith(_TEXT_TYPES) or not content_type
        try:
            text = body.decode() if is_text else None
        except UnicodeDecodeError:
            text = None
        now = datetime.now(UTC)
        host = headers.get("host", "localhost")
        return {
            "version": "2.0",
            "routeKey": compiled.route_key,
            "rawPath": path,
            "rawQueryString": query,
            "cookies": cookies or None,
            "headers": headers,
            "queryStringParameters": query_parameters or None,
            "pathParameters": path_parameters or None,
            "stageVariables": None,
            "requestContext": {
                "accountId": self.account,
                "apiId": "local",
                "domainName": host,
                "domainPrefix": host.split(".")[0],
                "http": {
                    "method": request.command,
                    "path": path,
                    "protocol": request.request_version,
                    "sourceIp": request.client_address[0],
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": request_id,
                "routeKey": compiled.route_key,
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "body": (text if text is not None else base64.b64encode(body).decode()) if body else None,
            "isBase64Encoded": bool(body) and text is None,
        }

    @staticmethod
    def response(result: Any) -> tuple[int, dict[str, str], bytes]:
        """Payload format 2.0: a dict with statusCode is a full response; anything else is a 200 JSON body."""
        if not isinstance(result, dict) or "statusCode" not in result:
            return 200, {"content-type": "application/json"}, json.dumps(result).encode()
        headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name.lower()] = ",".join(map(str, values))
        body = result.get("body") or ""
        payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
        cookies = result.get("cookies") or []
        if cookies:
            headers["set-cookie"] = "\n".join(cookies)
        headers.setdefault("content-type", "application/json")
        return int(result["statusCode"]), headers, payload

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: bytes, request_id: str
    ) -> None:
        request.send_response(status)
        for name, value in headers.items():
            if name == "set-cookie":
                for cookie in value.split("\n"):
                    request.send_header("Set-Cookie", cookie)
            elif name not in ("content-length", "connection", "transfer-encoding"):
                request.send_header(name, value)
        request.send_header("apigw-requestid", request_id)
        request.send_header("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))
        request.send_header("content-length", str(len(payload)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)
