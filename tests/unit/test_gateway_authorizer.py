"""The local gateway authorizes a route's requests as API Gateway does with an HTTP API Lambda authorizer (payload
format 2.0, simple responses): the authorizer's event, its answer's context in the route's event, its cache, and the
answers the gateway gives itself, in the API's one error shape. The functions are stand-ins that record what they
got; the gateway serves real HTTP on a free port."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from taskrunner_local import gateway as gateway_module
from taskrunner_local.gateway import Gateway
from taskrunner_local.runtime import Invocation
from taskrunner_local.sam import HttpRoute, LambdaAuthorizer

ACCOUNT, REGION = "123456789012", "eu-west-1"
CONTEXT = {"tenant": "acme", "admin": False, "key_id": "abcdefghijkl"}


@dataclass
class Functions:
    """Stands in for the Lambda runtime: the authorizer answers `answer(event)`, the route's function echoes its
    event; both record the events they got."""

    answer: Callable[[dict[str, Any]], Invocation] = lambda event: Invocation(
        result={"isAuthorized": True, "context": CONTEXT}
    )
    authorizer_events: list[dict[str, Any]] = field(default_factory=list)
    route_events: list[dict[str, Any]] = field(default_factory=list)

    def invoke(self, function: str, event: Any) -> Invocation:
        if function == "Authorizer":
            self.authorizer_events.append(event)
            return self.answer(event)
        self.route_events.append(event)
        return Invocation(result={"statusCode": 200, "body": json.dumps({"seen": event["requestContext"]})})


def authorizer(ttl_seconds: int = 0) -> LambdaAuthorizer:
    return LambdaAuthorizer("Keys", "Authorizer", ("Authorization",), ttl_seconds)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, Functions]]]:
    """Start a gateway with one authorized route (GET /tasks/{task_id}) and one public one (GET /docs)."""
    started: list[Gateway] = []

    def start(
        ttl_seconds: int = 0, functions: Functions | None = None, clock: Callable[[], float] | None = None
    ) -> tuple[str, Functions]:
        functions = functions or Functions()
        routes = [
            HttpRoute("GET", "/tasks/{task_id}", "Api", authorizer(ttl_seconds)),
            HttpRoute("GET", "/docs", "Api"),
        ]
        gateway = Gateway(
            routes,
            functions,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=0,
            max_request_bytes=1024,
            account=ACCOUNT,
            region=REGION,
        )
        if clock is not None:  # the clock the cache of answers goes by
            gateway.authorizer_answers.clock = clock
        gateway.start()
        started.append(gateway)
        return f"http://127.0.0.1:{gateway.port}", functions

    yield start
    for gateway in started:
        gateway.stop()


def error_of(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return str(body["error"]["code"])


def test_the_authorizer_gets_the_http_api_authorizer_event_and_its_context_reaches_the_route(serve: Any) -> None:
    # Given a route behind a Lambda authorizer
    url, functions = serve()
    # When a request with a key comes
    response = requests.get(f"{url}/tasks/t-1?x=1", headers={"Authorization": "Bearer k"}, timeout=10)
    # Then the authorizer got API Gateway's REQUEST event for it (payload format 2.0)
    assert response.status_code == 200, response.text
    [event] = functions.authorizer_events
    assert (event["version"], event["type"]) == ("2.0", "REQUEST")
    assert event["routeArn"] == f"arn:aws:execute-api:{REGION}:{ACCOUNT}:local/$default/GET/tasks/t-1"
    assert event["identitySource"] == ["Bearer k"]
    assert event["routeKey"] == "GET /tasks/{task_id}" and event["rawPath"] == "/tasks/t-1"
    assert event["rawQueryString"] == "x=1" and event["queryStringParameters"] == {"x": "1"}
    assert event["headers"]["authorization"] == "Bearer k" and event["pathParameters"] == {"task_id": "t-1"}
    assert "authorizer" not in event["requestContext"]
    # and the route's function got the authorizer's context where API Gateway puts it
    [routed] = functions.route_events
    assert routed["requestContext"]["authorizer"] == {"lambda": CONTEXT}
    assert routed["headers"]["authorization"] == "Bearer k"


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}], ids=["no header", "empty"])
def test_a_request_without_the_identity_source_is_401_without_calling_anyone(
    serve: Any, headers: dict[str, str]
) -> None:
    url, functions = serve()
    response = requests.get(f"{url}/tasks/t-1", headers=headers, timeout=10)
    assert response.status_code == 401 and error_of(response) == "UNAUTHENTICATED"
    assert "Authorization: Bearer <api key>" in response.json()["error"]["message"]
    assert functions.authorizer_events == [] and functions.route_events == []


def test_an_answer_that_does_not_authorize_is_403(serve: Any) -> None:
    url, functions = serve(functions=Functions(answer=lambda event: Invocation(result={"isAuthorized": False})))
    response = requests.get(f"{url}/tasks/t-1", headers={"Authorization": "Bearer k"}, timeout=10)
    assert response.status_code == 403 and error_of(response) == "FORBIDDEN"
    assert functions.route_events == []


@pytest.mark.parametrize(
    "invocation",
    [
        Invocation(error={"errorType": "RuntimeError", "errorMessage": "boom"}),
        Invocation(result={"isAuthorized": "yes"}),
        Invocation(result={"isAuthorized": True, "context": ["not", "an", "object"]}),
        Invocation(result=None),
    ],
    ids=["failed", "not a boolean", "context not an object", "no answer"],
)
def test_an_authorizer_that_fails_or_answers_wrongly_is_500(serve: Any, invocation: Invocation) -> None:
    url, functions = serve(functions=Functions(answer=lambda event: invocation))
    response = requests.get(f"{url}/tasks/t-1", headers={"Authorization": "Bearer k"}, timeout=10)
    assert response.status_code == 500 and error_of(response) == "INTERNAL_ERROR"
    assert functions.route_events == []


def test_a_public_route_calls_no_authorizer(serve: Any) -> None:
    url, functions = serve()
    response = requests.get(f"{url}/docs", timeout=10)
    assert response.status_code == 200
    assert functions.authorizer_events == []
    assert "authorizer" not in functions.route_events[0]["requestContext"]


def test_without_a_ttl_every_request_asks_the_authorizer(serve: Any) -> None:
    url, functions = serve(ttl_seconds=0)
    for _ in range(3):
        requests.get(f"{url}/tasks/t-1", headers={"Authorization": "Bearer k"}, timeout=10)
    assert len(functions.authorizer_events) == 3


def test_with_a_ttl_an_answer_is_kept_per_identity_until_it_expires(serve: Any) -> None:
    # Given an authorizer whose answers are kept 60 s, on a clock the test moves
    now = [1000.0]
    url, functions = serve(ttl_seconds=60, clock=lambda: now[0])

    def get(key: str) -> int:
        return requests.get(f"{url}/tasks/t-1", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code

    # When one key calls twice, and another once
    assert [get("one"), get("one"), get("two")] == [200, 200, 200]
    # Then the authorizer was asked once per key
    assert [e["identitySource"] for e in functions.authorizer_events] == [["Bearer one"], ["Bearer two"]]
    # and once the answer is 60 s old, it is asked again
    now[0] += 61
    get("one")
    assert len(functions.authorizer_events) == 3


def test_the_cache_of_answers_stays_bounded(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "MAX_AUTHORIZER_ANSWERS", 3)
    url, functions = serve(ttl_seconds=60)
    for key in ("a", "b", "c", "d", "a"):
        requests.get(f"{url}/tasks/t-1", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    # `a`, the oldest, made room for `d`, so it was asked about again
    assert [e["identitySource"][0] for e in functions.authorizer_events] == [f"Bearer {k}" for k in "abcda"]


def test_a_rejected_header_line_is_quoted_without_its_credentials() -> None:
    from waitress.utilities import BadRequest

    from taskrunner_local.gateway import _error_message

    error = BadRequest('Bare CR or LF found in header line "Authorization: Bearer trk_abc_secret\rx"')
    message = _error_message(error, adj=None)
    assert "trk_abc_secret" not in message and "Authorization: [hidden]" in message
