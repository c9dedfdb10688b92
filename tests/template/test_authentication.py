"""How callers authenticate, as the template deploys it: every route but /openapi.json and /docs behind the Lambda
authorizer (AuthMode=API_KEY, the default) or behind IAM (AuthMode=IAM), chosen by a condition that CloudFormation
resolves in the API's OpenAPI body (SAM takes a route's authorizer only as a literal name); the authorizer's
configuration; the parameters that carry the admin keys; and the routes as the local gateway reads them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from taskrunner_local.sam import LambdaAuthorizer, SamApp, UnservedAuthorization, http_routes
from tests.support.template import REGION, TEMPLATE, Evaluation, of_type, transformed

#: the routes anyone may call: the API's description
PUBLIC_ROUTES = {("GET", "/openapi.json"), ("GET", "/docs")}
API_KEY_AUTHORIZER = [{"ApiKeyAuthorizer": []}]
IAM = [{"AWS_IAM": []}]
DIGEST = "a" * 64


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


def _securities(template: dict[str, Any], **parameters: str) -> dict[tuple[str, str], Any]:
    """Each route's `security` as API Gateway gets it, once CloudFormation resolved it for `parameters`."""
    body = Evaluation(template, parameters).evaluate(template["Resources"]["HttpApi"]["Properties"]["Body"])
    return {
        (method.upper(), path): operation.get("security")
        for path, item in body["paths"].items()
        for method, operation in item.items()
    }


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [({}, API_KEY_AUTHORIZER), ({"AuthMode": "API_KEY"}, API_KEY_AUTHORIZER), ({"AuthMode": "IAM"}, IAM)],
    ids=["default", "API_KEY", "IAM"],
)
def test_every_route_but_the_public_ones_is_behind_the_auth_mode_chosen(
    template: dict[str, Any], parameters: dict[str, str], expected: list[dict[str, list[str]]]
) -> None:
    # Given the template resolved for an AuthMode
    securities = _securities(template, **parameters)
    # Then every route needs that mode's caller, and only the API's description is public
    for route, security in securities.items():
        if route in PUBLIC_ROUTES:
            assert security == [{"NONE": []}], route
        else:
            assert security == expected, f"{route} is not behind {expected}: {security}"
    assert set(securities) >= PUBLIC_ROUTES


def test_a_route_the_body_does_not_list_falls_back_to_the_api_key_authorizer() -> None:
    # Given the template with a route left out of the HTTP API's list of routes and their security
    app = SamApp(TEMPLATE)
    del app.template["Resources"]["HttpApi"]["Properties"]["DefinitionBody"]["paths"]["/usage"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        changed = app.transform(lambda logical_id, key, path: f"s3://bucket/{logical_id}")
    # Then SAM's DefaultAuthorizer still puts the route behind the authorizer: never a route without authorization
    assert _securities(changed, AuthMode="IAM")[("GET", "/usage")] == API_KEY_AUTHORIZER
    scheme = changed["Resources"]["HttpApi"]["Properties"]["Body"]["components"]["securitySchemes"]
    assert scheme.keys() == {"ApiKeyAuthorizer", "AWS_IAM"}


def test_the_lambda_authorizer_is_cached_per_authorization_header_with_simple_responses(
    template: dict[str, Any],
) -> None:
    scheme = template["Resources"]["HttpApi"]["Properties"]["Body"]["components"]["securitySchemes"]
    authorizer = scheme["ApiKeyAuthorizer"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "request"
    assert authorizer["authorizerPayloadFormatVersion"] == "2.0"
    assert authorizer["enableSimpleResponses"] is True
    assert authorizer["identitySource"] == ["$request.header.Authorization"]
    assert authorizer["authorizerResultTtlInSeconds"] == {"Ref": "AuthorizerCacheSeconds"}
    assert "AuthorizerFunction" in str(authorizer["authorizerUri"])
    # API Gateway may invoke it for this API only
    [permission] = [
        p["Properties"]
        for p in of_type(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}
    ]
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert "HttpApi" in str(permission["SourceArn"])


def test_the_admin_keys_and_principals_reach_the_functions_that_read_them(template: dict[str, Any]) -> None:
    functions = of_type(template, "AWS::Lambda::Function")
    authorizer = functions["AuthorizerFunction"]["Properties"]["Environment"]["Variables"]
    assert authorizer["ADMIN_API_KEY_SHA256"] == {"Ref": "AdminApiKeySha256"}
    api = functions["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert api["ADMIN_PRINCIPAL_ARNS"] == {"Ref": "AdminPrincipalArns"}
    # the digests are the authorizer's alone
    assert all(
        "ADMIN_API_KEY_SHA256" not in str(f["Properties"]) for k, f in functions.items() if k != "AuthorizerFunction"
    )


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("", True),
        (DIGEST, True),
        (f"{DIGEST},{'0123456789abcdef' * 4}", True),
        (DIGEST.upper(), False),
        (DIGEST[:-1], False),
        (f"{DIGEST},", False),
        (f"{DIGEST}, {DIGEST}", False),
        ("trk_abcdefghijkl_secret", False),
    ],
)
def test_admin_api_key_sha256_takes_digests_only_and_is_never_shown(
    template: dict[str, Any], value: str, accepted: bool
) -> None:
    parameter = template["Parameters"]["AdminApiKeySha256"]
    assert parameter["NoEcho"] is True and parameter["Default"] == ""
    assert bool(re.fullmatch(parameter["AllowedPattern"], value)) is accepted


def test_the_authorizer_cache_and_auth_mode_parameters(template: dict[str, Any]) -> None:
    cache = template["Parameters"]["AuthorizerCacheSeconds"]
    assert (cache["MinValue"], cache["MaxValue"], cache["Default"]) == (0, 3600, 60)
    mode = template["Parameters"]["AuthMode"]
    assert (mode["AllowedValues"], mode["Default"]) == (["API_KEY", "IAM"], "API_KEY")
    principals = template["Parameters"]["AdminPrincipalArns"]["AllowedPattern"]
    assert re.fullmatch(principals, "")
    assert re.fullmatch(principals, "arn:aws:iam::123456789012:role/admin,arn:aws:iam::123456789012:role/ops")
    assert not re.fullmatch(principals, "admin")


# ------------------------------------------------------------------------------------------------ the local gateway


def test_the_local_gateway_serves_the_routes_behind_the_same_authorizer(template: dict[str, Any]) -> None:
    # Given the routes as the local stack deploys them (its cache: none)
    routes = {(r.method, r.path): r for r in http_routes(template, {"AuthorizerCacheSeconds": "0"})}
    # Then they are the API's routes, each to ApiFunction, behind the authorizer but for the public ones
    assert set(routes) == set(_securities(template))
    expected = LambdaAuthorizer("ApiKeyAuthorizer", "AuthorizerFunction", ("Authorization",), ttl_seconds=0)
    for route, served in routes.items():
        assert served.function == "ApiFunction"
        assert served.authorizer == (None if route in PUBLIC_ROUTES else expected), route
    # and with the template's default, API Gateway's cache of 60 s
    [cached] = {r.authorizer for r in http_routes(template, {}) if r.authorizer is not None}
    assert cached.ttl_seconds == 60


def test_the_local_gateway_refuses_iam_mode_with_why(template: dict[str, Any]) -> None:
    with pytest.raises(UnservedAuthorization, match="AuthMode=IAM is for AWS"):
        http_routes(template, {"AuthMode": "IAM"})
