"""template.yaml as the template tests read it: transformed offline, walked for policies, and evaluated.

`evaluate` resolves the intrinsic functions that parameters and conditions decide (Ref of a parameter or pseudo
parameter, Fn::If, Fn::Equals, Fn::Not, Fn::And, Fn::Or, Fn::Join, Fn::Select, Fn::Split, Fn::Sub, Fn::GetAZs)
the way CloudFormation does, so a test can say what a value becomes for given parameter values. A resource's Ref
or Fn::GetAtt stays a readable placeholder, `<Logical>` or `<Logical.Attribute>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from taskrunner_local.sam import SamApp

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"
REGION = "us-east-1"
ACCOUNT = "123456789012"


def _artifact_uri(logical_id: str, key: str, path: Path) -> str:
    return f"s3://artifacts-bucket/{logical_id}/{key.lower()}"


@cache
def _transformed() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        return SamApp(TEMPLATE).transform(_artifact_uri)


def transformed() -> dict[str, Any]:
    """The template after `sam package` and the SAM transform (managed policies from the offline table)."""
    import copy

    return copy.deepcopy(_transformed())


def of_type(template: Mapping[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == resource_type}


def statements(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every policy statement under `node` (identity and resource policies), with its location."""
    if isinstance(node, dict):
        found = node.get("Statement")
        if isinstance(found, list):
            for i, statement in enumerate(found):
                if isinstance(statement, dict):
                    yield f"{where}/Statement[{i}]", statement
        elif isinstance(found, dict):
            yield f"{where}/Statement", found
        for key, value in node.items():
            yield from statements(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from statements(value, f"{where}[{i}]")


def actions(statement: Mapping[str, Any]) -> list[str]:
    found = statement.get("Action", [])
    return [found] if isinstance(found, str) else list(found)


# ------------------------------------------------------------------------------------------------ evaluation

_SUB_PLACEHOLDER = re.compile(r"\$\{([^}!][^}]*)\}")


@dataclass
class Evaluation:
    """Parameter values (the template's defaults, overridden by `given`) and the conditions they decide."""

    template: Mapping[str, Any]
    given: Mapping[str, str] = field(default_factory=dict)
    stack_name: str = "taskrunner"
    stack_uuid: str = "0f3e2a10-9a1b-11ef-8c43-0a1b2c3d4e5f"

    def parameter(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{self.stack_name}/{self.stack_uuid}",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }
        if name in pseudo:
            return pseudo[name]
        declared = self.template["Parameters"][name]
        value = self.given.get(name, declared.get("Default"))
        if value is None:
            raise KeyError(f"parameter {name} has no default and no value was given")
        if declared["Type"] == "CommaDelimitedList" or declared["Type"].startswith("List<"):
            return str(value).split(",")
        return str(value)

    def condition(self, name: str) -> bool:
        return bool(self.evaluate(self.template["Conditions"][name]))

    def evaluate(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.evaluate(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: self.evaluate(v) for k, v in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref":
            if argument in self.template.get("Parameters", {}) or argument.startswith("AWS::"):
                return self.parameter(argument)
            return f"<{argument}>"
        if function == "Fn::GetAtt":
            target = argument if isinstance(argument, str) else ".".join(argument)
            return f"<{target}>"
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::If":
            name, when_true, when_false = argument
            return self.evaluate(when_true if self.condition(name) else when_false)
        if function == "Fn::Equals":
            left, right = self.evaluate(argument)
            return left == right
        if function == "Fn::Not":
            return not self.evaluate(argument[0])
        if function == "Fn::And":
            return all(self.evaluate(argument))
        if function == "Fn::Or":
            return any(self.evaluate(argument))
        if function == "Fn::Join":
            separator, items = argument
            return separator.join(str(item) for item in self.evaluate(items))
        if function == "Fn::Select":
            index, items = argument
            return self.evaluate(items)[int(self.evaluate(index))]
        if function == "Fn::Split":
            separator, text = argument
            return str(self.evaluate(text)).split(separator)
        if function == "Fn::GetAZs":
            return [f"{REGION}{zone}" for zone in "abcdef"]
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            known = {k: self.evaluate(v) for k, v in variables.items()}

            def replace(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in known:
                    return str(known[name])
                if "." in name:
                    return f"<{name}>"
                return str(self.evaluate({"Ref": name}))

            return _SUB_PLACEHOLDER.sub(replace, text)
        return {function: self.evaluate(argument)}
