"""Deploys template.yaml into the local AWS endpoint: SAM translator, then moto's CloudFormation.

What moto's CloudFormation cannot create is handled here, each for a stated reason:
- function and layer code is zipped into an artifacts bucket, as `sam package` would;
- `DefinitionSubstitutions` are resolved after the stack exists (moto leaves the placeholders);
- resource types moto skips (and that other resources would then reference) are created through their own
  APIs after the stack: the Firehose delivery stream and its error log stream, the log subscription filter, the
  cluster's capacity providers, the functions' asynchronous invocation configs (retries, on-failure destinations).
  The HTTP API and schedules are served by the local stack itself; alarms are not evaluated locally.
"""

from __future__ import annotations

import copy
import io
import json
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrunner_local.sam import SamApp

#: moto's CloudFormation does not create these; the local stack stands in for them or creates them by API.
DEFERRED_TYPES = (  # in the order they are created
    # moto's CloudFormation keeps state machines where the Step Functions interpreter cannot see them
    "AWS::StepFunctions::StateMachine",
    "AWS::Logs::LogStream",  # the delivery stream's error log
    "AWS::KinesisFirehose::DeliveryStream",
    "AWS::Logs::SubscriptionFilter",  # needs its delivery stream
    "AWS::ECS::ClusterCapacityProviderAssociations",
    "AWS::Scheduler::ScheduleGroup",
    "AWS::Scheduler::Schedule",
    # a function's retries and on-failure destination, which the local Lambda runtime reads back from moto
    "AWS::Lambda::EventInvokeConfig",
)
#: the property that names a resource of each deferred type, where the template may set it
NAME_PROPERTIES = {
    "AWS::StepFunctions::StateMachine": "StateMachineName",
    "AWS::Logs::LogStream": "LogStreamName",
    "AWS::KinesisFirehose::DeliveryStream": "DeliveryStreamName",
    "AWS::Logs::SubscriptionFilter": "FilterName",
    "AWS::Scheduler::ScheduleGroup": "Name",
    "AWS::Scheduler::Schedule": "Name",
}
#: where the template names none, CloudFormation generates a name that fits its service's limit; so does the local stack
NAME_LIMITS = {
    "AWS::StepFunctions::StateMachine": 80,
    "AWS::KinesisFirehose::DeliveryStream": 64,
    "AWS::Scheduler::ScheduleGroup": 64,
    "AWS::Scheduler::Schedule": 64,
}
#: what the local delivery stream is created with, of its ExtendedS3DestinationConfiguration
FIREHOSE_S3_PROPERTIES = {
    "BucketARN",
    "RoleARN",
    "Prefix",
    "ErrorOutputPrefix",
    "BufferingHints",
    "CompressionFormat",
    "FileExtension",
    "CloudWatchLoggingOptions",
}
EVENT_INVOKE_CONFIG_PROPERTIES = {
    "FunctionName",
    "Qualifier",
    "MaximumRetryAttempts",
    "MaximumEventAgeInSeconds",
    "DestinationConfig",
}
DROPPED_TYPES = {
    "AWS::CloudWatch::Alarm",  # nothing evaluates alarms locally
    "AWS::SNS::Subscription",  # nor sends their email
    "AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Stage",
    "AWS::ApiGatewayV2::Route",
    "AWS::ApiGatewayV2::Integration",
    "AWS::ApiGatewayV2::Authorizer",
    "AWS::S3::BucketPolicy",  # access control is not emulated locally
    "AWS::SQS::QueuePolicy",
    "AWS::Lambda::Permission",
}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_PLACEHOLDER_WITH_ATTRIBUTE = re.compile(r"\$\{([\w]+(?:\.[\w]+)?)\}")


def render_definition(text: str, substitutions: dict[str, Any]) -> str:
    """A state machine definition with its `${Name}` placeholders replaced, as `DefinitionSubstitutions` does;
    a placeholder without a value is an error, not left in place."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in substitutions:
            raise KeyError(f"the state machine uses ${{{name}}}, which DefinitionSubstitutions does not define")
        return str(substitutions[name])

    return _PLACEHOLDER.sub(value, text)


@dataclass
class Deployment:
    stack_name: str
    outputs: dict[str, str]
    physical_ids: dict[str, str]
    template: dict[str, Any]
    function_names: dict[str, str] = field(default_factory=dict)  # logical id -> physical name
    state_machine_arn: str = ""
    delivery_stream: str | None = None
    #: the EventBridge Scheduler schedules template.yaml declares: logical id -> schedule ARN
    schedule_arns: dict[str, str] = field(default_factory=dict)


def _zip_dir(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, file.relative_to(path))
    return buffer.getvalue()


def _references(value: Any) -> set[str]:
    """Logical ids that an intrinsic-bearing value refers to."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                found.add(inner)
            elif key == "Fn::GetAtt":
                target = inner[0] if isinstance(inner, list) else str(inner).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found |= {m.split(".")[0] for m in _PLACEHOLDER.findall(text)}
                if isinstance(inner, list):
                    found |= _references(inner[1])
            else:
                found |= _references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= _references(inner)
    return found


def _is_intrinsic(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and (next(iter(value)) == "Ref" or next(iter(value)).startswith("Fn::"))
    )


class _Resolver:
    """Resolves intrinsic values through moto's CloudFormation: each becomes a stack output."""

    def __init__(self) -> None:
        self.expressions: dict[str, Any] = {}

    def defer(self, value: Any) -> Any:
        if _is_intrinsic(value):
            key = f"LocalResolve{len(self.expressions)}"
            self.expressions[key] = value
            return {"__resolve__": key}
        if isinstance(value, dict):
            return {k: self.defer(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.defer(v) for v in value]
        return value

    def outputs(self) -> dict[str, Any]:
        return {key: {"Value": expression} for key, expression in self.expressions.items()}

    @staticmethod
    def fill(value: Any, outputs: dict[str, str]) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__resolve__"}:
                return outputs[value["__resolve__"]]
            return {k: _Resolver.fill(v, outputs) for k, v in value.items()}
        if isinstance(value, list):
            return [_Resolver.fill(v, outputs) for v in value]
        return value


class Deployer:
    def __init__(self, app: SamApp, session: Any, stack_name: str, region: str, account: str) -> None:
        self.app = app
        self.session = session
        self.stack_name = stack_name
        self.region = region
        self.account = account

    def client(self, service: str) -> Any:
        return self.session.client(service)

    # ------------------------------------------------------------------ packaging

    def _upload_artifacts(self) -> Any:
        s3 = self.client("s3")
        bucket = f"{self.stack_name}-artifacts-{self.account}".lower()
        s3.create_bucket(Bucket=bucket)

        def artifact_uri(logical_id: str, key: str, path: Path) -> str:
            object_key = f"{logical_id}/{key}.zip"
            s3.put_object(Bucket=bucket, Key=object_key, Body=_zip_dir(path))
            return f"s3://{bucket}/{object_key}"

        return artifact_uri

    @staticmethod
    def _parameters() -> dict[str, Any]:
        """The template's defaults, as a fresh account deploys it: the stack creates the tasks' network (VPC,
        subnets, internet gateway, security group) in moto's EC2, as it does on AWS."""
        return {"Architecture": "x86_64"}

    # ------------------------------------------------------------------ deploy

    def deploy(self) -> Deployment:
        parameters = self._parameters()
        transformed = self.app.transform(self._upload_artifacts(), parameters, inline_definitions=True)
        template = copy.deepcopy(transformed)
        resources = template["Resources"]
        deferred = {k: v for k, v in resources.items() if v["Type"] in DEFERRED_TYPES}
        removed = {k for k, v in resources.items() if v["Type"] in DROPPED_TYPES} | set(deferred)
        for logical_id in removed:
            del resources[logical_id]
        for resource in resources.values():
            depends = resource.get("DependsOn")
            if isinstance(depends, list):
                resource["DependsOn"] = [d for d in depends if d not in removed]
            elif isinstance(depends, str) and depends in removed:
                del resource["DependsOn"]

        # Names for deferred and dropped resources, so that references to them resolve before the stack exists.
        names = {
            logical_id: self._literal_name(transformed["Resources"][logical_id])
            or self._generated_name(transformed["Resources"][logical_id]["Type"], logical_id)
            for logical_id in removed
        }
        arns = {
            logical_id: self._arn_of(transformed["Resources"][logical_id]["Type"], name)
            for logical_id, name in names.items()
        }
        template = self._with_known(template, names, arns)
        resources = template["Resources"]
        template["Outputs"] = {k: v for k, v in template.get("Outputs", {}).items() if not (_references(v) & removed)}
        resolver = _Resolver()
        deferred_props = {
            logical_id: resolver.defer(self._with_known(resource.get("Properties", {}), names, arns))
            for logical_id, resource in deferred.items()
        }
        template["Outputs"].update(resolver.outputs())

        outputs, physical_ids = self._create_stack(template, parameters)

        deployment = Deployment(
            stack_name=self.stack_name,
            outputs={
                k: v for k, v in outputs.items() if not k.startswith("LocalResolve") and not v.startswith("<moto.")
            },
            physical_ids=physical_ids,
            template=transformed,
        )
        deployment.function_names = {
            k: physical_ids[k] for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"
        }
        order = list(DEFERRED_TYPES)  # a subscription filter needs its delivery stream first
        for logical_id, props in sorted(
            deferred_props.items(), key=lambda item: order.index(deferred[item[0]]["Type"])
        ):
            resource_type = deferred[logical_id]["Type"]
            self._create_deferred(
                logical_id, resource_type, names[logical_id], _Resolver.fill(props, outputs), deployment
            )
        return deployment

    def _generated_name(self, resource_type: str, logical_id: str) -> str:
        limit = NAME_LIMITS.get(resource_type)
        return f"{self.stack_name[: limit - len(logical_id) - 1] if limit else self.stack_name}-{logical_id}"

    def _literal_name(self, resource: dict[str, Any]) -> str | None:
        """The name a template gives a resource, when it is a literal or the stack's name."""
        value = resource.get("Properties", {}).get(NAME_PROPERTIES.get(resource["Type"], ""))
        if isinstance(value, str):
            return value
        if value == {"Ref": "AWS::StackName"}:
            return self.stack_name
        if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
            return str(value["Fn::Sub"]).replace("${AWS::StackName}", self.stack_name)
        return None

    def _arn_of(self, resource_type: str, name: str) -> str:
        if resource_type == "AWS::StepFunctions::StateMachine":
            return f"arn:aws:states:{self.region}:{self.account}:stateMachine:{name}"
        if resource_type == "AWS::KinesisFirehose::DeliveryStream":
            return f"arn:aws:firehose:{self.region}:{self.account}:deliverystream/{name}"
        if resource_type == "AWS::Scheduler::ScheduleGroup":
            return f"arn:aws:scheduler:{self.region}:{self.account}:schedule-group/{name}"
        service = resource_type.split("::")[1].lower()
        return f"arn:aws:{service}:{self.region}:{self.account}:{name}"

    @staticmethod
    def _with_known(value: Any, names: dict[str, str], arns: dict[str, str]) -> Any:
        """`value` with every Ref and Fn::GetAtt (…Arn) of the resources in `names` replaced by a literal."""
        if isinstance(value, dict):
            if set(value) == {"Ref"} and value["Ref"] in names:
                target = value["Ref"]
                # Ref of a state machine is its ARN; of the other types here, its name
                return arns[target] if ":stateMachine:" in arns[target] else names[target]
            if set(value) == {"Fn::GetAtt"}:
                target, attribute = (
                    value["Fn::GetAtt"] if isinstance(value["Fn::GetAtt"], list) else value["Fn::GetAtt"].split(".", 1)
                )
                if target in arns:
                    return arns[target] if attribute == "Arn" else names[target]
            if set(value) == {"Fn::Sub"}:
                sub = value["Fn::Sub"]
                text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, None)

                def literal(match: re.Match[str]) -> str:
                    target, _, attribute = match.group(1).partition(".")
                    if target not in names:
                        return match.group(0)
                    if attribute == "Arn" or (not attribute and ":stateMachine:" in arns[target]):
                        return arns[target]
                    return names[target]

                text = _PLACEHOLDER_WITH_ATTRIBUTE.sub(literal, text)
                known = Deployer._with_known(variables, names, arns)
                return {"Fn::Sub": [text, known] if variables is not None else text}
            return {k: Deployer._with_known(v, names, arns) for k, v in value.items()}
        if isinstance(value, list):
            return [Deployer._with_known(v, names, arns) for v in value]
        return value

    def _create_stack(
        self, template: dict[str, Any], parameters: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, str]]:
        cfn = self.client("cloudformation")
        cfn_parameters = [
            {"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
            for k, v in parameters.items()
            if k in template.get("Parameters", {})
        ]
        cfn.create_stack(
            StackName=self.stack_name,
            TemplateBody=json.dumps(template),
            Parameters=cfn_parameters,
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        deadline = time.monotonic() + 120
        while True:
            stack = cfn.describe_stacks(StackName=self.stack_name)["Stacks"][0]
            if stack["StackStatus"].endswith("_COMPLETE") or stack["StackStatus"].endswith("_FAILED"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack {self.stack_name} is still {stack['StackStatus']}")
            time.sleep(0.1)
        if stack["StackStatus"] != "CREATE_COMPLETE":
            raise RuntimeError(
                f"stack {self.stack_name} ended {stack['StackStatus']}: {stack.get('StackStatusReason')}"
            )
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        resources = cfn.describe_stack_resources(StackName=self.stack_name)["StackResources"]
        # moto also lists, as entries without ids, the resources whose Condition was false (it created none)
        return outputs, {
            r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources if "LogicalResourceId" in r
        }

    def _definition(self, logical_id: str, substitutions: dict[str, str]) -> str:
        source = self.app.resources[logical_id]["Properties"]
        text = (
            (self.app.root / source["DefinitionUri"]).read_text()
            if "DefinitionUri" in source
            else json.dumps(source["Definition"])
        )

        return render_definition(text, substitutions)

    def _create_deferred(
        self, logical_id: str, resource_type: str, name: str, props: dict[str, Any], deployment: Deployment
    ) -> None:
        create = self._CREATORS[resource_type]
        deployment.physical_ids[logical_id] = create(self, logical_id, name, props, deployment)

    # Each creator makes one deferred resource through its service's API and returns its physical name.

    def _create_state_machine(self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment) -> str:
        name = props.get("StateMachineName", name)
        deployment.state_machine_arn = self.client("stepfunctions").create_state_machine(
            name=name,
            definition=self._definition(logical_id, props.get("DefinitionSubstitutions", {})),
            roleArn=props["RoleArn"],
            type=props.get("StateMachineType", "STANDARD"),
        )["stateMachineArn"]
        return str(name)

    def _create_log_stream(self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment) -> str:
        name = props.get("LogStreamName", name)
        self.client("logs").create_log_stream(logGroupName=props["LogGroupName"], logStreamName=name)
        return str(name)

    def _create_delivery_stream(self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment) -> str:
        name = props.get("DeliveryStreamName", name)
        config = props["ExtendedS3DestinationConfiguration"]
        self.client("firehose").create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType=props.get("DeliveryStreamType", "DirectPut"),
            ExtendedS3DestinationConfiguration={k: v for k, v in config.items() if k in FIREHOSE_S3_PROPERTIES},
        )
        deployment.delivery_stream = name
        return str(name)

    def _create_subscription_filter(
        self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment
    ) -> str:
        request = {
            "logGroupName": props["LogGroupName"],
            "filterName": props.get("FilterName", name),
            "filterPattern": props.get("FilterPattern", ""),
            "destinationArn": props["DestinationArn"],
        }
        if "RoleArn" in props:
            request["roleArn"] = props["RoleArn"]
        self.client("logs").put_subscription_filter(**request)
        return name

    def _create_capacity_providers(
        self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment
    ) -> str:
        strategy = [
            {
                "capacityProvider": s["CapacityProvider"],
                "weight": int(s.get("Weight", 0)),
                "base": int(s.get("Base", 0)),
            }
            for s in props.get("DefaultCapacityProviderStrategy", [])
        ]
        self.client("ecs").put_cluster_capacity_providers(
            cluster=props["Cluster"],
            capacityProviders=props.get("CapacityProviders", []),
            defaultCapacityProviderStrategy=strategy,
        )
        return name

    def _create_schedule_group(self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment) -> str:
        name = props.get("Name", name)
        self.client("scheduler").create_schedule_group(Name=name)
        return str(name)

    def _create_schedule(self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment) -> str:
        target = {k: v for k, v in props["Target"].items() if v is not None}
        request = {
            "Name": props.get("Name", name),
            "GroupName": props.get("GroupName", "default"),
            "ScheduleExpression": props["ScheduleExpression"],
            "FlexibleTimeWindow": props.get("FlexibleTimeWindow", {"Mode": "OFF"}),
            "Target": target,
            "State": props.get("State", "ENABLED"),
        }
        for key in ("ScheduleExpressionTimezone", "Description", "StartDate", "EndDate"):
            if key in props:
                request[key] = props[key]
        deployment.schedule_arns[logical_id] = self.client("scheduler").create_schedule(**request)["ScheduleArn"]
        return str(request["Name"])

    def _create_event_invoke_config(
        self, logical_id: str, name: str, props: dict[str, Any], deployment: Deployment
    ) -> str:
        request = {k: v for k, v in props.items() if k in EVENT_INVOKE_CONFIG_PROPERTIES}
        self.client("lambda").put_function_event_invoke_config(**request)
        return name

    _CREATORS: dict[str, Callable[[Deployer, str, str, dict[str, Any], Deployment], str]] = {
        "AWS::StepFunctions::StateMachine": _create_state_machine,
        "AWS::Logs::LogStream": _create_log_stream,
        "AWS::KinesisFirehose::DeliveryStream": _create_delivery_stream,
        "AWS::Logs::SubscriptionFilter": _create_subscription_filter,
        "AWS::ECS::ClusterCapacityProviderAssociations": _create_capacity_providers,
        "AWS::Scheduler::ScheduleGroup": _create_schedule_group,
        "AWS::Scheduler::Schedule": _create_schedule,
        "AWS::Lambda::EventInvokeConfig": _create_event_invoke_config,
    }
