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
import dataclasses
import hashlib
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
    #: the parameter values it was deployed with (the template's defaults for the others)
    parameters: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        return cls(**json.loads(text))


@dataclass
class _Plan:
    """What moto's CloudFormation is given (the template without the deferred and dropped resources) and what the
    deployer makes itself afterwards."""

    template: dict[str, Any]
    #: deferred logical id -> its type
    deferred: dict[str, str]
    #: logical id -> the name given to each deferred or dropped resource
    names: dict[str, str]
    #: deferred logical id -> its properties, with intrinsics still to be filled from the stack's outputs
    deferred_props: dict[str, Any]

    def deferred_in_order(self) -> list[str]:
        """The deferred resources in the order they are made (a subscription filter needs its delivery stream)."""
        order = list(DEFERRED_TYPES)
        return sorted(self.deferred, key=lambda logical_id: order.index(self.deferred[logical_id]))


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


#: the parameter values every local deployment has: the functions' architecture is this machine's (the template's
#: default, arm64, is for AWS); the template's defaults for the others: the stack creates the tasks' network (VPC,
#: subnets, internet gateway, security group) in moto's EC2, as it does on AWS
LOCAL_PARAMETERS = {"Architecture": "x86_64"}


class Deployer:
    def __init__(
        self,
        app: SamApp,
        session: Any,
        stack_name: str,
        region: str,
        account: str,
        *,
        parameters: dict[str, str] | None = None,
    ) -> None:
        """`parameters`: values for the template's parameters, over LOCAL_PARAMETERS."""
        self.app = app
        self.session = session
        self.stack_name = stack_name
        self.region = region
        self.account = account
        self.parameters = {**LOCAL_PARAMETERS, **(parameters or {})}

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

    # ------------------------------------------------------------------ deploy

    def template_digest(self) -> str:
        """A digest of what a deployment is made from (the template with its state machine definitions, the
        parameter values, the stack's name, account and region): a restart redeploys only when it changed (a new
        admin key is a new AdminApiKeySha256, so an update). Function code is not in it: the local Lambda runtime
        runs the code from its folder, as it is at every start."""
        packaged = self.app.packaged(lambda logical_id, key, path: f"{logical_id}/{key}", inline_definitions=True)
        basis = [packaged, self.parameters, self.stack_name, self.account, self.region]
        return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()

    def deploy(self) -> Deployment:
        parameters = self.parameters
        transformed = self.app.transform(self._upload_artifacts(), parameters, inline_definitions=True)
        plan = self._plan(transformed)
        outputs, physical_ids = self._create_stack(plan.template, parameters)
        deployment = self._deployment(transformed, outputs, physical_ids, plan)
        for logical_id in plan.deferred_in_order():
            self._create_deferred(logical_id, plan, outputs, deployment)
        return deployment

    def update(self, previous: Deployment) -> tuple[Deployment, str]:
        """Update a restored stack to the template as it is now, as a CloudFormation stack update does: moto's
        CloudFormation updates the resources it manages; the deferred ones that changed are made again (a state
        machine's definition is updated in place). Returns the deployment and what changed, in a few words."""
        parameters = self.parameters
        transformed = self.app.transform(self._upload_artifacts(), parameters, inline_definitions=True)
        before, after = previous.template["Resources"], transformed["Resources"]
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        modified = sorted(k for k in set(after) & set(before) if after[k] != before[k])
        plan = self._plan(transformed)
        outputs, physical_ids = self._update_stack(plan.template, parameters)
        deployment = self._deployment(transformed, outputs, physical_ids, plan)
        for logical_id in plan.deferred_in_order():
            if logical_id in added or logical_id in modified:
                self._replace_deferred(
                    logical_id,
                    before=before.get(logical_id),
                    plan=plan,
                    outputs=outputs,
                    deployment=deployment,
                    previous=previous,
                )
            else:
                self._keep_deferred(logical_id, deployment, previous)
        for logical_id in removed:
            if before[logical_id]["Type"] in DEFERRED_TYPES:
                self._delete_deferred(logical_id, before[logical_id]["Type"], previous)
        words = [
            f"{label} {', '.join(ids)}"
            for label, ids in (("added", added), ("updated", modified), ("removed", removed))
            if ids
        ]
        return deployment, "; ".join(words) or "no resource changed"

    def _plan(self, transformed: dict[str, Any]) -> _Plan:
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
        template["Outputs"] = {k: v for k, v in template.get("Outputs", {}).items() if not (_references(v) & removed)}
        resolver = _Resolver()
        deferred_props = {
            logical_id: resolver.defer(self._with_known(resource.get("Properties", {}), names, arns))
            for logical_id, resource in deferred.items()
        }
        template["Outputs"].update(resolver.outputs())
        return _Plan(template, {k: v["Type"] for k, v in deferred.items()}, names, deferred_props)

    def _deployment(
        self, transformed: dict[str, Any], outputs: dict[str, str], physical_ids: dict[str, str], plan: _Plan
    ) -> Deployment:
        deployment = Deployment(
            stack_name=self.stack_name,
            outputs={
                k: v for k, v in outputs.items() if not k.startswith("LocalResolve") and not v.startswith("<moto.")
            },
            physical_ids=physical_ids,
            template=transformed,
            parameters=dict(self.parameters),
        )
        deployment.function_names = {
            k: physical_ids[k] for k, v in plan.template["Resources"].items() if v["Type"] == "AWS::Lambda::Function"
        }
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
        cfn.create_stack(
            StackName=self.stack_name,
            TemplateBody=json.dumps(template),
            Parameters=self._cfn_parameters(template, parameters),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
        return self._stack_result("CREATE_COMPLETE")

    @staticmethod
    def _cfn_parameters(template: dict[str, Any], parameters: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
            for k, v in parameters.items()
            if k in template.get("Parameters", {})
        ]

    def _stack_result(self, success: str) -> tuple[dict[str, str], dict[str, str]]:
        """Wait for the stack to settle; its outputs and its resources' physical ids, or an error."""
        cfn = self.client("cloudformation")
        deadline = time.monotonic() + 120
        while True:
            stack = cfn.describe_stacks(StackName=self.stack_name)["Stacks"][0]
            if stack["StackStatus"].endswith("_COMPLETE") or stack["StackStatus"].endswith("_FAILED"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack {self.stack_name} is still {stack['StackStatus']}")
            time.sleep(0.1)
        if stack["StackStatus"] != success:
            raise RuntimeError(
                f"stack {self.stack_name} ended {stack['StackStatus']}: {stack.get('StackStatusReason')}"
            )
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        resources = cfn.describe_stack_resources(StackName=self.stack_name)["StackResources"]
        # moto also lists, as entries without ids, the resources whose Condition was false (it created none)
        return outputs, {
            r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources if "LogicalResourceId" in r
        }

    def _update_stack(
        self, template: dict[str, Any], parameters: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, str]]:
        cfn = self.client("cloudformation")
        try:
            cfn.update_stack(
                StackName=self.stack_name,
                TemplateBody=json.dumps(template),
                Parameters=self._cfn_parameters(template, parameters),
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
        except cfn.exceptions.ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
        return self._stack_result("UPDATE_COMPLETE")

    def _definition(self, logical_id: str, substitutions: dict[str, str]) -> str:
        source = self.app.resources[logical_id]["Properties"]
        text = (
            (self.app.root / source["DefinitionUri"]).read_text()
            if "DefinitionUri" in source
            else json.dumps(source["Definition"])
        )

        return render_definition(text, substitutions)

    def _create_deferred(self, logical_id: str, plan: _Plan, outputs: dict[str, str], deployment: Deployment) -> None:
        create = self._CREATORS[plan.deferred[logical_id]]
        props = _Resolver.fill(plan.deferred_props[logical_id], outputs)
        deployment.physical_ids[logical_id] = create(self, logical_id, plan.names[logical_id], props, deployment)

    def _keep_deferred(self, logical_id: str, deployment: Deployment, previous: Deployment) -> None:
        """A deferred resource the update leaves as it is: what the deployment knows of it carries over."""
        deployment.physical_ids[logical_id] = previous.physical_ids[logical_id]
        if logical_id in previous.schedule_arns:
            deployment.schedule_arns[logical_id] = previous.schedule_arns[logical_id]
        resource_type = previous.template["Resources"][logical_id]["Type"]
        if resource_type == "AWS::StepFunctions::StateMachine":
            deployment.state_machine_arn = previous.state_machine_arn
        elif resource_type == "AWS::KinesisFirehose::DeliveryStream":
            deployment.delivery_stream = previous.delivery_stream

    def _replace_deferred(
        self,
        logical_id: str,
        *,
        before: dict[str, Any] | None,
        plan: _Plan,
        outputs: dict[str, str],
        deployment: Deployment,
        previous: Deployment,
    ) -> None:
        """A deferred resource that is new or changed: a state machine is updated in place (its executions and ARN
        stay), the others are deleted (when they existed) and made again."""
        resource_type = plan.deferred[logical_id]
        props = _Resolver.fill(plan.deferred_props[logical_id], outputs)
        if before is not None and resource_type == "AWS::StepFunctions::StateMachine":
            self.client("stepfunctions").update_state_machine(
                stateMachineArn=previous.state_machine_arn,
                definition=self._definition(logical_id, props.get("DefinitionSubstitutions", {})),
                roleArn=props["RoleArn"],
            )
            self._keep_deferred(logical_id, deployment, previous)
            return
        if before is not None:
            self._delete_deferred(logical_id, before["Type"], previous)
        self._create_deferred(logical_id, plan, outputs, deployment)

    def _delete_deferred(self, logical_id: str, resource_type: str, previous: Deployment) -> None:
        """Delete a deferred resource of the previous deployment (those that only configure another resource are
        simply put again by their creator)."""
        name = previous.physical_ids.get(logical_id, "")
        props = previous.template["Resources"][logical_id].get("Properties", {})
        if resource_type == "AWS::StepFunctions::StateMachine":
            self.client("stepfunctions").delete_state_machine(stateMachineArn=previous.state_machine_arn)
        elif resource_type == "AWS::KinesisFirehose::DeliveryStream":
            self.client("firehose").delete_delivery_stream(DeliveryStreamName=name)
        elif resource_type == "AWS::Scheduler::Schedule":
            group = props.get("GroupName", "default")
            self.client("scheduler").delete_schedule(Name=name, GroupName=group if isinstance(group, str) else name)
        elif resource_type == "AWS::Scheduler::ScheduleGroup":
            self.client("scheduler").delete_schedule_group(Name=name)

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
