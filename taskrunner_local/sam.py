"""template.yaml as the local stack reads it: parsed, packaged, transformed by aws-sam-translator."""

from __future__ import annotations

import copy
import json
import os
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
class HttpRoute:
    method: str
    path: str
    function: str  # logical id


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

    def http_routes(self) -> list[HttpRoute]:
        routes = []
        for logical_id, resource in self.of_type("AWS::Serverless::Function").items():
            for event in resource.get("Properties", {}).get("Events", {}).values():
                if event.get("Type") == "HttpApi":
                    props = event.get("Properties", {})
                    routes.append(
                        HttpRoute(props.get("Method", "ANY").upper(), props.get("Path", "$default"), logical_id)
                    )
        return routes

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
