"""template.yaml as the local stack reads it: parsed, packaged, transformed by aws-sam-translator."""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtranslator.yaml_helper import yaml_parse

#: The AWS managed policies that the template, or SAM on its behalf, names. The translator asks IAM for
#: these ARNs; offline, this table answers instead, and a name missing here fails the transform.
MANAGED_POLICIES = {
    name: f"arn:aws:iam::aws:policy/{path}{name}"
    for path, name in [
        ("", "AWSXrayWriteOnlyAccess"),
        ("service-role/", "AWSLambdaBasicExecutionRole"),
        ("service-role/", "AmazonECSTaskExecutionRolePolicy"),
    ]
}

ARTIFACT_KEYS = ("CodeUri", "ContentUri", "DefinitionUri")


class OfflineManagedPolicyLoader:
    """Stands in for samtranslator's ManagedPolicyLoader, which lists policies through IAM."""

    def load(self) -> dict[str, str]:
        return dict(MANAGED_POLICIES)


@dataclass(frozen=True)
class LambdaAuthorizer:
    """An HTTP API Lambda authorizer as the template configures it (its `x-amazon-apigateway-authorizer`)."""

    name: str
    #: the authorizer function's logical id
    function: str
    #: the request headers its identity source names (`$request.header.Authorization`): a request without one
    #: of them is refused without calling the function
    identity_headers: tuple[str, ...]
    #: seconds an answer is kept for the same identity values (0: the function is called on every request)
    ttl_seconds: int


@dataclass(frozen=True)
class HttpRoute:
    method: str
    path: str
    function: str  # logical id
    #: who must authorize a request first (None: the route needs no authorization)
    authorizer: LambdaAuthorizer | None = None


class UnservedAuthorization(ValueError):
    """A route's authorization the local gateway cannot give (IAM's SigV4: AuthMode=IAM is for AWS)."""


@dataclass(frozen=True)
class FunctionSource:
    logical_id: str
    code_dir: Path
    handler: str


class SamApp:
    def __init__(self, template_path: Path) -> None:
        self.path = template_path
        self.root = template_path.parent
        self.template: dict[str, Any] = yaml_parse(template_path.read_text())

    @property
    def resources(self) -> dict[str, Any]:
        return self.template["Resources"]  # type: ignore[no-any-return]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v.get("Type") == resource_type}

    def functions(self) -> list[FunctionSource]:
        globals_ = self.template.get("Globals", {}).get("Function", {})
        result = []
        for logical_id, resource in self.of_type("AWS::Serverless::Function").items():
            props = {**globals_, **resource.get("Properties", {})}
            result.append(FunctionSource(logical_id, self.root / props["CodeUri"], props["Handler"]))
        return result

    def layer_dirs(self) -> list[Path]:
        return [
            self.root / r["Properties"]["ContentUri"] for r in self.of_type("AWS::Serverless::LayerVersion").values()
        ]

    def packaged(self, artifact_uri: Any, *, inline_definitions: bool = False) -> dict[str, Any]:
        """The template with local artifact paths replaced, as `sam package` does: `artifact_uri(logical_id,
        key, path)` returns the replacement. With `inline_definitions`, state machine definitions are read into
        the template instead."""
        packaged = copy.deepcopy(self.template)
        for logical_id, resource in packaged["Resources"].items():
            props = resource.get("Properties", {})
            for key in ARTIFACT_KEYS:
                value = props.get(key)
                if not isinstance(value, str) or value.startswith("s3://"):
                    continue
                if key == "DefinitionUri" and inline_definitions:
                    props["Definition"] = json.loads((self.root / value).read_text())
                    del props[key]
                else:
                    props[key] = artifact_uri(logical_id, key, self.root / value)
        return packaged

    def transform(
        self, artifact_uri: Any, parameters: dict[str, Any] | None = None, *, inline_definitions: bool = False
    ) -> dict[str, Any]:
        from samtranslator.translator.transform import transform

        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        packaged = self.packaged(artifact_uri, inline_definitions=inline_definitions)
        return transform(packaged, parameters or {}, OfflineManagedPolicyLoader())  # type: ignore[no-any-return,arg-type]


# ------------------------------------------------------------------------------------------------ the HTTP API


#: a function's ARN in an integration or authorizer URI: `${Function.Arn}` in a Fn::Sub, or a Fn::GetAtt
_FUNCTION_ARN = re.compile(r'\$\{(\w+)\.Arn\}|"Fn::GetAtt": \["(\w+)", "Arn"\]')
_ANY_METHOD = "x-amazon-apigateway-any-method"
_NO_AUTHORIZATION = frozenset({"NONE"})


def http_routes(transformed: dict[str, Any], parameters: dict[str, Any]) -> list[HttpRoute]:
    """The routes of the template's HTTP APIs as API Gateway is given them: the OpenAPI body SAM writes (with each
    route's integration and its `security`, conditions decided by the parameters), so the local gateway serves
    the same routes behind the same authorizers as on AWS."""
    conditions = _Conditions(transformed, parameters)
    routes = []
    for resource in transformed["Resources"].values():
        if resource["Type"] != "AWS::ApiGatewayV2::Api" or "Body" not in resource.get("Properties", {}):
            continue
        body = resource["Properties"]["Body"]
        schemes = body.get("components", {}).get("securitySchemes", {})
        for path, item in body.get("paths", {}).items():
            for method, operation in item.items():
                function = _function_of(operation.get("x-amazon-apigateway-integration", {}).get("uri"))
                if function is None:
                    continue
                security = conditions.resolve(operation.get("security", []))
                verb = "ANY" if method == _ANY_METHOD else method.upper()
                authorizer = _authorizer(security, schemes, conditions, f"{verb} {path}")
                routes.append(HttpRoute(verb, path, function, authorizer))
    return routes


def _function_of(uri: Any) -> str | None:
    """The logical id of the function an integration or authorizer URI invokes."""
    found = _FUNCTION_ARN.search(json.dumps(uri))
    return None if found is None else found.group(1) or found.group(2)


def _authorizer(
    security: list[dict[str, Any]], schemes: dict[str, Any], conditions: _Conditions, route: str
) -> LambdaAuthorizer | None:
    names = {name for requirement in security for name in requirement} - _NO_AUTHORIZATION
    if not names:
        return None
    if len(names) > 1:
        raise UnservedAuthorization(f"{route}: more than one authorizer ({', '.join(sorted(names))})")
    (name,) = names
    config = conditions.resolve(schemes.get(name, {}).get("x-amazon-apigateway-authorizer"))
    if not isinstance(config, dict) or config.get("type") != "request":
        raise UnservedAuthorization(
            f"{route} is authorized by {name}, which the local gateway cannot check (it serves Lambda authorizers; "
            "AuthMode=IAM is for AWS)"
        )
    if str(config.get("authorizerPayloadFormatVersion")) != "2.0" or config.get("enableSimpleResponses") is not True:
        raise UnservedAuthorization(
            f"{route}: the local gateway serves Lambda authorizers of payload format 2.0 with simple responses"
        )
    function = _function_of(config.get("authorizerUri"))
    if function is None:
        raise UnservedAuthorization(f"{route}: the authorizer {name} names no function of the template")
    headers = []
    for source in config.get("identitySource", []):
        if not source.startswith("$request.header."):
            raise UnservedAuthorization(f"{route}: identity source {source} is not served locally (headers are)")
        headers.append(source.removeprefix("$request.header."))
    return LambdaAuthorizer(
        name=name,
        function=function,
        identity_headers=tuple(headers),
        ttl_seconds=int(config.get("authorizerResultTtlInSeconds", 300)),
    )


class _Conditions:
    """The template's conditions and parameter references, decided by the parameter values (the template's
    defaults where none is given): what CloudFormation resolves before API Gateway reads the body."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any]) -> None:
        declared = template.get("Parameters", {})
        self.parameters = {name: parameters.get(name, spec.get("Default")) for name, spec in declared.items()}
        self.conditions = template.get("Conditions", {})

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.resolve(v) for k, v in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref" and argument in self.parameters:
            return self.parameters[argument]
        if function == "Fn::If":
            name, when_true, when_false = argument
            return self.resolve(when_true if self.holds(name) else when_false)
        if function == "Condition":
            return self.holds(argument)
        if function == "Fn::Equals":
            left, right = self.resolve(argument)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not self.resolve(argument[0])
        if function == "Fn::And":
            return all(self.resolve(argument))
        if function == "Fn::Or":
            return any(self.resolve(argument))
        return {function: self.resolve(argument)}

    def holds(self, name: str) -> bool:
        return bool(self.resolve(self.conditions[name]))
