"""The HTTP API locally: requests become API Gateway HTTP API events (payload format 2.0) for the function
behind each route of the template's HttpApi events, and the function's answer becomes the response, as
`sam local start-api` does, without Docker. A route behind a Lambda authorizer is authorized first, as API Gateway
does it: the authorizer function gets the HTTP API authorizer event (payload 2.0, type REQUEST) and its answer
(`{"isAuthorized": ..., "context": ...}`, kept for the authorizer's TTL by identity values) becomes
`requestContext.authorizer.lambda` of the route's event.

HTTP itself is waitress's (a production WSGI server): a listen backlog of 1024, SO_REUSEADDR, TCP_NODELAY,
keep-alive, chunked request bodies decoded, header and body size limits, and bounded worker threads that only
ever see complete requests (waitress reads requests in its event loop, so a slow or silent client holds a
socket, never a thread). On top of it this module adds what waitress leaves out: a request line is judged as
soon as it arrives (HTTP/0.9 and over-long URIs answered at once, not after a timeout), a request whose bytes
stop coming is answered 408, and every response the gateway makes itself (not the function) is a JSON body in
the API's one error shape, `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import resource
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, urlsplit

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import BadRequest, Error

from taskrunner_local.config import ROOT
from taskrunner_local.runtime import LambdaRuntime
from taskrunner_local.sam import HttpRoute, LambdaAuthorizer

if str(ROOT / "layers" / "common") not in sys.path:  # the layer's error body, the API's one error shape
    sys.path.append(str(ROOT / "layers" / "common"))

from taskrunner.http_errors import error_body

_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)

#: the kernel queue of connections not yet accepted: a burst waits there instead of being reset
BACKLOG = 1024
#: open connections served at once (more wait in the backlog); kept well under the process's file limit
MAX_CONNECTIONS = 1000
#: a request target longer than this is 414 (nginx's and Node's default limits are of this order)
MAX_URI_BYTES = 8 * 1024
#: the request line and headers together; more is 431
MAX_HEADER_BYTES = 16 * 1024
#: seconds a request may go without a byte arriving, and its headers may take in all; then 408
READ_TIMEOUT_SECONDS = 10.0
#: seconds a whole request (headers and body) may take to arrive; then 408
REQUEST_DEADLINE_SECONDS = 60.0
#: seconds an idle keep-alive connection stays open
KEEPALIVE_SECONDS = 60
#: seconds a connection closed after an error keeps reading (and discarding) what the client still sends
LINGER_SECONDS = 2.0
#: worker threads that run functions; further complete requests queue until one is free
THREADS = 16
#: authorizer answers kept at most (a cache of answers by API key must not grow with every key a client tries)
MAX_AUTHORIZER_ANSWERS = 10_000
#: the response headers waitress (PEP 3333) writes itself and an application must not send
_HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    )
)
_REQUEST_LINE = re.compile(rb"(?P<method>[^ ]+) (?P<target>[^ ]+) HTTP/(?P<version>\d\.\d)")
#: how a request line starts: a method token (RFC 9110 tchars), then a space
_REQUEST_LINE_START = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}(?: |$)")


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _error_json(code: str, message: str) -> bytes:
    return json.dumps(error_body(code, message)).encode()


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


# ---------------------------------------------------------------------------------------------- HTTP layer


class UriTooLong(BadRequest):  # type: ignore[misc]
    code = 414
    reason = "URI Too Long"


class RequestTimeout(BadRequest):  # type: ignore[misc]
    code = 408
    reason = "Request Timeout"


def _error_code(error: Any) -> str:
    """The error shape's code for each of waitress's own errors (and ours, above)."""
    return {
        400: "BAD_REQUEST",
        408: "REQUEST_TIMEOUT",
        413: "PAYLOAD_TOO_LARGE",
        414: "URI_TOO_LONG",
        431: "HEADERS_TOO_LARGE",
        501: "UNSUPPORTED_TRANSFER_ENCODING",  # answered as 400: see _JsonErrorTask
    }.get(int(error.code), "INTERNAL_ERROR")


#: a header line waitress quotes back in its error (a bare CR, say) keeps its credentials out of the answer
_CREDENTIALS = re.compile(r"((?:authorization|cookie|x-api-key)\s*:)[^\"\n]*", re.IGNORECASE)


def _error_message(error: Any, adj: Any) -> str:
    code = int(error.code)
    if code == 413:
        return f"The request body is larger than {adj.max_request_body_size - 1} bytes"
    if code == 431:
        return f"The request line and headers are larger than {adj.max_request_header_size - 1} bytes"
    if code == 501:
        return "The request's Transfer-Encoding is not supported; send a Content-Length or chunked body"
    if code == 500:
        return "The gateway failed to handle the request"
    body = _CREDENTIALS.sub(r"\1 [hidden]", str(error.body))
    return f"{error.reason}: {body}"


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress answers the requests it rejects (malformed, too large, timed out) in text/plain; this answers
    them in the API's error shape. The connection closes after it, as waitress does."""

    def execute(self) -> None:
        error = self.request.error
        body = _error_json(_error_code(error), _error_message(error, self.channel.server.adj))
        # RFC 9112 answers a Transfer-Encoding other than chunked with 501; the API's rule is that nothing a
        # client sends earns a 5xx, and API Gateway answers it 400.
        self.status = "400 Bad Request" if int(error.code) == 501 else f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("apigw-requestid", str(uuid.uuid4()))])
        self.set_close_on_finish()
        self.channel.linger_on_close = True
        self.content_length = len(body)
        self.write(body)


def _request_line_problem(line: bytes, complete: bool) -> Error | None:
    """What is wrong with a request line (or the part of it received so far), if anything."""
    if not _REQUEST_LINE_START.match(line):
        return BadRequest("this is not an HTTP request line")
    if not complete:
        return UriTooLong(f"the request line exceeds {MAX_URI_BYTES} bytes") if len(line) > MAX_URI_BYTES else None
    found = _REQUEST_LINE.fullmatch(line)
    if found is None:
        if len(line.split(b" ")) == 2:
            return BadRequest("HTTP/0.9 request lines are not served; send HTTP/1.1")
        return BadRequest("the request line is not METHOD TARGET HTTP/1.1")
    if len(found["target"]) > MAX_URI_BYTES:
        return UriTooLong(f"the request target exceeds {MAX_URI_BYTES} bytes")
    if found["version"] not in (b"1.0", b"1.1"):
        return BadRequest(f"HTTP/{found['version'].decode()} is not served; send HTTP/1.1")
    return None


class _RequestParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's parser, which waits for the whole header block before judging anything; this one judges the
    request line the moment it is complete (or too long to be valid), so an HTTP/0.9 line or an over-long URI
    is answered at once instead of holding the connection until a timeout. It also records when the request
    started, for the 408 deadline."""

    _line_checked = False

    def __init__(self, adj: Any) -> None:
        super().__init__(adj)
        self.started = time.time()  # waitress's own clock (channel.last_activity) is time.time()

    def received(self, data: bytes) -> int:
        if not self._line_checked and not self.completed:
            head = (self.header_plus + data).lstrip(b"\r\n")  # blank lines before a request are allowed
            if head:
                end = head.find(b"\n")
                problem = _request_line_problem(head if end < 0 else head[:end].rstrip(b"\r"), complete=end >= 0)
                if problem is not None:
                    self.fail(problem)
                    return len(data)
                self._line_checked = end >= 0
        return int(super().received(data))

    def fail(self, error: Error) -> None:
        """End the request with an error response (what waitress itself does for over-large headers)."""
        self.parse_header(b"GET / HTTP/1.0\r\n")
        self.error = error
        self.completed = True


class _Channel(HTTPChannel):  # type: ignore[misc]
    parser_class = _RequestParser
    error_task_class = _JsonErrorTask
    request: Any = None  # the request being received (waitress's attribute)
    #: set by an error response: the client may still be sending the request it answers
    linger_on_close = False
    #: while set, the response is out, our side is shut for writing and what the client still sends is discarded
    linger_until = 0.0

    def time_out(self, request: _RequestParser) -> None:
        """Answer a request that stopped arriving with a 408 (in the event loop's thread, like `received`)."""
        with self.requests_lock:
            if self.request is not request or self.requests or request.completed:
                return
            request.error = RequestTimeout("the request did not arrive in time")
            request.completed = True
            self.request = None
            self.requests.append(request)
        self.server.add_task(self)

    # A lingering close, as Apache and nginx do after an error: waitress closes the socket as soon as the error
    # response is out, and closing a socket with unread request bytes in it resets the connection, which can
    # destroy the response before the client has read it (a client still uploading a 413 body sees ECONNRESET
    # instead of the 413). So shut our side for writing, read and discard for up to LINGER_SECONDS, then close.

    def handle_close(self) -> None:
        if (
            self.linger_on_close
            and not self.linger_until
            and self.connected
            and self.socket is not None
            and not self.total_outbufs_len
        ):
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.linger_until = time.time() + LINGER_SECONDS
                self.will_close = self.close_when_flushed = False
                self.request = None
                return
        super().handle_close()

    def readable(self) -> bool:
        return bool(self.linger_until) or bool(super().readable())

    def writable(self) -> bool:
        if self.linger_until:
            return time.time() >= self.linger_until  # then handle_write closes
        return bool(super().writable())

    def handle_read(self) -> None:
        if self.linger_until:
            self.recv(self.adj.recv_bytes)  # discarded; the client's EOF or reset closes the channel (in recv)
        else:
            super().handle_read()

    def handle_write(self) -> None:
        if self.linger_until:
            super().handle_close()
        else:
            super().handle_write()


class _Server(TcpWSGIServer):  # type: ignore[misc]
    channel_class = _Channel
    read_timeout = READ_TIMEOUT_SECONDS
    request_deadline = REQUEST_DEADLINE_SECONDS

    def maintenance(self, now: float) -> None:
        """waitress closes a connection silent for channel_timeout without a word, even in the middle of a
        request. Here a request that stops arriving (no byte for read_timeout, headers not complete within
        read_timeout, or the whole request not within request_deadline) is answered 408 before its connection
        closes; an idle keep-alive connection still closes after channel_timeout."""
        idle_cutoff = now - self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            if channel.requests:  # being served: the response will come
                continue
            request = channel.request
            if isinstance(request, _RequestParser) and not request.completed:
                if (
                    channel.last_activity < now - self.read_timeout
                    or (not request.headers_finished and request.started < now - self.read_timeout)
                    or request.started < now - self.request_deadline
                ):
                    channel.time_out(request)
            elif channel.last_activity < idle_cutoff:
                channel.will_close = True


def _connection_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(64, min(MAX_CONNECTIONS, soft // 2))


# ---------------------------------------------------------------------------------------------- the gateway


def _is_simple_response(answer: Any) -> TypeGuard[dict[str, Any]]:
    """A Lambda authorizer's simple response: `isAuthorized` a boolean, `context` (optional) an object."""
    return (
        isinstance(answer, dict)
        and isinstance(answer.get("isAuthorized"), bool)
        and isinstance(answer.get("context") or {}, dict)
    )


class _AuthorizerAnswers:
    """Authorizers' answers by identity values, each for its authorizer's TTL, as API Gateway caches them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._answers: dict[tuple[str, tuple[str, ...]], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, authorizer: LambdaAuthorizer, identity: list[str]) -> dict[str, Any] | None:
        if authorizer.ttl_seconds <= 0:
            return None
        with self._lock:
            kept = self._answers.get((authorizer.name, tuple(identity)))
        return kept[1] if kept is not None and kept[0] > self.clock() else None

    def put(self, authorizer: LambdaAuthorizer, identity: list[str], answer: dict[str, Any]) -> None:
        if authorizer.ttl_seconds <= 0:
            return
        now = self.clock()
        with self._lock:
            if len(self._answers) >= MAX_AUTHORIZER_ANSWERS:
                self._answers = {key: kept for key, kept in self._answers.items() if kept[0] > now}
                while len(self._answers) >= MAX_AUTHORIZER_ANSWERS:  # the oldest first
                    del self._answers[next(iter(self._answers))]
            self._answers[(authorizer.name, tuple(identity))] = (now + authorizer.ttl_seconds, answer)


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
        region: str = "us-east-1",
        threads: int = THREADS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        # Literal paths win over templated ones, as in API Gateway.
        self.routes = sorted((_compile(r) for r in routes), key=lambda c: c.route.path.count("{"))
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.account = account
        self.region = region
        self.authorizer_answers = _AuthorizerAnswers()
        self.on_request = on_request  # one line per request, for the console
        # queueing behind busy worker threads is how a burst is meant to be absorbed: not worth a warning each
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self._map: dict[int, Any] = {}
        self.server = _Server(
            self,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            backlog=BACKLOG,
            connection_limit=_connection_limit(),
            channel_timeout=KEEPALIVE_SECONDS,
            cleanup_interval=1,
            max_request_header_size=MAX_HEADER_BYTES + 1,
            max_request_body_size=max_request_bytes + 1,  # waitress refuses a body of this size or more
            ident="taskrunner-local-gateway",
            asyncore_use_poll=True,  # poll(), not select(): no limit at file descriptor 1024
            clear_untrusted_proxy_headers=False,  # the function sees every header the client sent
            log_socket_errors=False,
        )
        self.server.read_timeout = read_timeout
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="gateway")

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            # wake the event loop, which closes every socket on its way out (an OSError: it has closed its trigger
            # on its way out already, and nothing is left to wake)
            with contextlib.suppress(OSError):
                self.server.pull_trigger()
            self._thread.join(timeout=5)
        else:
            wasyncore.close_all(self._map)
        self.server.task_dispatcher.shutdown(timeout=1)

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set() and self._map:
                wasyncore.loop(timeout=self.server.adj.asyncore_loop_timeout, map=self._map, use_poll=True, count=1)
        finally:
            wasyncore.close_all(self._map)

    # ------------------------------------------------------------------ request → event → response

    def match(self, method: str, path: str) -> tuple[_CompiledRoute, dict[str, str]] | None:
        for compiled in self.routes:
            if compiled.route.method not in (method, "ANY"):
                continue
            found = compiled.pattern.match(path)
            if found:
                return compiled, found.groupdict()
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """The methods some route serves at this path (none: the path is unknown)."""
        return sorted({c.route.method for c in self.routes if c.pattern.match(path)})

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application waitress calls, in one of its worker threads, with the whole request read."""
        request_id = str(uuid.uuid4())
        started = time.perf_counter()
        try:
            status, headers, payload = self.handle(environ, request_id)
        except Exception:  # the gateway answers, whatever happened behind it
            status, headers = 500, {"content-type": "application/json"}
            payload = _error_json("INTERNAL_ERROR", "The gateway failed to handle the request")
        header_list: list[tuple[str, str]] = []
        for name, value in headers.items():
            if name in _HOP_BY_HOP or "\r" in name or "\n" in name:
                continue
            for line in value.split("\n") if name == "set-cookie" else (value,):
                if "\r" not in line and "\n" not in line:
                    header_list.append((name, line))
        header_list += [("apigw-requestid", request_id), ("content-length", str(len(payload)))]
        start_response(_status_line(status), header_list)
        if self.on_request is not None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            target = urlsplit(environ.get("REQUEST_URI") or "/").path
            self.on_request(f"{environ['REQUEST_METHOD']} {target} {status} {elapsed_ms:.0f} ms")
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [payload]

    def handle(self, environ: dict[str, Any], request_id: str) -> tuple[int, dict[str, str], bytes]:
        method = environ["REQUEST_METHOD"]
        url = urlsplit(environ.get("REQUEST_URI") or "/")  # the raw target: rawPath stays percent-encoded
        matched = self.match(method, url.path)
        if matched is None:
            allowed = self.allowed_methods(url.path)
            json_type = {"content-type": "application/json"}
            if not allowed:
                return 404, json_type, _error_json("ROUTE_NOT_FOUND", f"No route serves {url.path}")
            message = f"{method} is not allowed on {url.path}; allowed: {', '.join(allowed)}"
            return 405, {**json_type, "allow": ", ".join(allowed)}, _error_json("METHOD_NOT_ALLOWED", message)
        # waitress has read the whole body (chunked ones decoded) and refused one over max_request_bytes
        body = environ["wsgi.input"].read() if environ.get("CONTENT_LENGTH", "0") != "0" else b""
        compiled, path_parameters = matched
        event = self.event(
            environ,
            path=url.path,
            query=url.query,
            body=body,
            compiled=compiled,
            path_parameters=path_parameters,
            request_id=request_id,
        )
        if compiled.route.authorizer is not None:
            refused = self.authorize(compiled.route.authorizer, event)
            if refused is not None:
                return refused
        invocation = self.runtime.invoke(compiled.route.function, event)
        if invocation.error is not None:
            return (
                500,
                {"content-type": "application/json"},
                _error_json("INTERNAL_ERROR", "The function behind this route failed"),
            )
        return self.response(invocation.result)

    def authorize(
        self, authorizer: LambdaAuthorizer, event: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes] | None:
        """Authorize a route's request as API Gateway does, adding the authorizer's context to `event`; or the
        response that refuses it. API Gateway answers a request without the identity source 401 without calling
        the authorizer, an answer of `isAuthorized: false` 403, and a failed authorizer 500, each in its own
        `{"message": ...}` shape: here they come in the API's one error shape."""
        json_type = {"content-type": "application/json"}
        identity = [event["headers"].get(name.lower(), "") for name in authorizer.identity_headers]
        if not all(identity):
            needed = ", ".join(authorizer.identity_headers)
            message = f"This route needs an API key: send the {needed} header, `Authorization: Bearer <api key>`"
            return 401, json_type, _error_json("UNAUTHENTICATED", message)
        answer = self.authorizer_answers.get(authorizer, identity)
        if answer is None:
            invocation = self.runtime.invoke(authorizer.function, self.authorizer_event(event, identity))
            answer = invocation.result if invocation.error is None else None
            if not _is_simple_response(answer):
                return 500, json_type, _error_json("INTERNAL_ERROR", "The authorizer behind this route failed")
            self.authorizer_answers.put(authorizer, identity, answer)
        if answer["isAuthorized"] is not True:
            return 403, json_type, _error_json("FORBIDDEN", "The authorizer refused this request")
        event["requestContext"]["authorizer"] = {"lambda": answer.get("context") or {}}
        return None

    def authorizer_event(self, event: dict[str, Any], identity: list[str]) -> dict[str, Any]:
        """The HTTP API Lambda authorizer's event (payload format 2.0) for a route's request."""
        context = event["requestContext"]
        route_arn = (
            f"arn:aws:execute-api:{self.region}:{self.account}:{context['apiId']}/{context['stage']}/"
            f"{context['http']['method']}{event['rawPath']}"
        )
        passed_on = ("routeKey", "rawPath", "rawQueryString", "cookies", "headers", "queryStringParameters")
        return {
            "version": "2.0",
            "type": "REQUEST",
            "routeArn": route_arn,
            "identitySource": identity,
            **{key: event[key] for key in passed_on},
            "requestContext": dict(context),  # the route's gets the authorizer's answer; this one never does
            "pathParameters": event["pathParameters"],
            "stageVariables": event["stageVariables"],
        }

    def event(
        self,
        environ: dict[str, Any],
        *,
        path: str,
        query: str,
        body: bytes,
        compiled: _CompiledRoute,
        path_parameters: dict[str, str],
        request_id: str,
    ) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for key, value in environ.items():  # in the order the client sent them
            if key.startswith("HTTP_"):
                headers[key[5:].lower().replace("_", "-")] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                headers[key.lower().replace("_", "-")] = value
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
                    "method": environ["REQUEST_METHOD"],
                    "path": path,
                    "protocol": environ["SERVER_PROTOCOL"],
                    "sourceIp": environ["REMOTE_ADDR"],
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
