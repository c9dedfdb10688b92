"""A deploy that works out of the box: the tasks' network, the parameters a fresh account can accept as they are,
samconfig.toml without placeholders, and the optional endpoints and pull-through cache."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.support.template import ACCOUNT, REGION, SAMCONFIG, Evaluation, actions, of_type, statements, transformed

#: the state machine's substitutions that say where tasks run
NETWORK_SUBSTITUTIONS = ("SubnetIds", "SecurityGroupIds", "AssignPublicIp")
OWN_NETWORK = {"SubnetIds": "subnet-0aaa,subnet-0bbb", "SecurityGroupIds": "sg-0ccc"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return transformed()


def _network(evaluation: Evaluation) -> dict[str, Any]:
    substitutions = evaluation.template["Resources"]["RunTaskStateMachine"]["Properties"]["DefinitionSubstitutions"]
    return {name: evaluation.evaluate(substitutions[name]) for name in NETWORK_SUBSTITUTIONS}


def _created(evaluation: Evaluation, resource_type: str) -> dict[str, dict[str, Any]]:
    """The resources of `resource_type` that these parameter values create (their Condition holds)."""
    return {
        k: v
        for k, v in of_type(evaluation.template, resource_type).items()
        if "Condition" not in v or evaluation.condition(v["Condition"])
    }


def _one(evaluation: Evaluation, resource_type: str) -> tuple[str, dict[str, Any]]:
    [(logical_id, resource)] = _created(evaluation, resource_type).items()
    return logical_id, evaluation.evaluate(resource.get("Properties", {}))


# ------------------------------------------------------------------------------------------------ out of the box


def test_every_parameter_has_a_default_so_a_fresh_account_deploys_as_it_is(template: dict[str, Any]) -> None:
    # Given the template's parameters
    parameters = template["Parameters"]
    # Then `sam deploy --guided` can accept every one of them as offered
    without_default = [name for name, declared in parameters.items() if "Default" not in declared]
    assert not without_default, f"parameters a fresh account must invent a value for: {without_default}"
    for name in ("SubnetIds", "SecurityGroupIds"):
        assert parameters[name]["Type"] == "CommaDelimitedList", name
        assert parameters[name]["Default"] == "", name
    assert set(parameters["AssignPublicIp"]["AllowedValues"]) == {"AUTO", "ENABLED", "DISABLED"}
    assert parameters["AssignPublicIp"]["Default"] == "AUTO"


@pytest.mark.parametrize("environment", ["default", "prod"])
def test_samconfig_sets_only_real_parameters_to_values_they_accept(template: dict[str, Any], environment: str) -> None:
    # Given the parameter overrides of one samconfig.toml environment
    config = tomllib.loads(SAMCONFIG.read_text())
    overrides = dict(item.split("=", 1) for item in config[environment]["global"]["parameters"]["parameter_overrides"])
    parameters = template["Parameters"]
    # Then each names a parameter, with a value it allows, and none is an example id to replace
    for name, value in overrides.items():
        assert name in parameters, f"{environment}: {name} is not a parameter of template.yaml"
        assert value in [str(v) for v in parameters[name].get("AllowedValues", [value])], (name, value)
        assert "example" not in value.lower(), f"{environment}: {name}={value} is a placeholder"
    assert not {"SubnetIds", "SecurityGroupIds"} & overrides.keys(), "the template creates the network by default"


# ------------------------------------------------------------------------------------------------ the tasks' network


def test_by_default_tasks_run_in_a_network_the_stack_creates(template: dict[str, Any]) -> None:
    # Given no network parameters
    evaluation = Evaluation(template)
    # When the stack is created
    vpc_id, vpc = _one(evaluation, "AWS::EC2::VPC")
    subnets = _created(evaluation, "AWS::EC2::Subnet")
    # Then tasks run in its two public subnets, in two zones, behind its security group, with public IPs
    network = _network(evaluation)
    assert sorted(network["SubnetIds"].split(",")) == sorted(f"<{s}>" for s in subnets)
    assert len(subnets) == 2
    zones = {str(s["Properties"]["AvailabilityZone"]) for s in subnets.values()}
    assert zones == {str({"Fn::Select": [i, {"Fn::GetAZs": ""}]}) for i in (0, 1)}
    for subnet in subnets.values():
        assert subnet["Properties"]["VpcId"] == {"Ref": vpc_id}
    group_id, _ = _one(evaluation, "AWS::EC2::SecurityGroup")
    assert network["SecurityGroupIds"] == f"<{group_id}>"
    assert network["AssignPublicIp"] == "ENABLED"
    assert vpc["EnableDnsSupport"] is True and vpc["EnableDnsHostnames"] is True


def test_the_created_network_reaches_the_internet_and_admits_nothing(template: dict[str, Any]) -> None:
    evaluation = Evaluation(template)
    gateway_id, _ = _one(evaluation, "AWS::EC2::InternetGateway")
    _, attachment = _one(evaluation, "AWS::EC2::VPCGatewayAttachment")
    assert attachment["InternetGatewayId"] == f"<{gateway_id}>"
    route_table_id, _ = _one(evaluation, "AWS::EC2::RouteTable")
    _, route = _one(evaluation, "AWS::EC2::Route")
    assert route["DestinationCidrBlock"] == "0.0.0.0/0"
    assert route["GatewayId"] == f"<{gateway_id}>"
    assert route["RouteTableId"] == f"<{route_table_id}>"
    associations = _created(evaluation, "AWS::EC2::SubnetRouteTableAssociation").values()
    assert {str(a["Properties"]["SubnetId"]) for a in associations} == {
        str({"Ref": s}) for s in _created(evaluation, "AWS::EC2::Subnet")
    }
    _, group = _one(evaluation, "AWS::EC2::SecurityGroup")
    assert not group.get("SecurityGroupIngress")
    [egress] = group["SecurityGroupEgress"]
    assert (egress["IpProtocol"], egress["CidrIp"]) == ("-1", "0.0.0.0/0")


def test_given_subnets_and_security_groups_tasks_use_them_and_no_network_is_created(template: dict[str, Any]) -> None:
    # Given the user's own private subnets and security group
    evaluation = Evaluation(template, OWN_NETWORK)
    # Then the tasks use exactly them, without public IPs, and the stack creates no network
    assert _network(evaluation) == {
        "SubnetIds": "subnet-0aaa,subnet-0bbb",
        "SecurityGroupIds": "sg-0ccc",
        "AssignPublicIp": "DISABLED",
    }
    for resource_type in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::InternetGateway", "AWS::EC2::SecurityGroup"):
        assert not _created(evaluation, resource_type), resource_type


@pytest.mark.parametrize("given", [{}, OWN_NETWORK])
@pytest.mark.parametrize("assign", ["ENABLED", "DISABLED"])
def test_an_explicit_assign_public_ip_is_kept(template: dict[str, Any], given: dict[str, str], assign: str) -> None:
    evaluation = Evaluation(template, {**given, "AssignPublicIp": assign})
    assert _network(evaluation)["AssignPublicIp"] == assign


# ------------------------------------------------------------------------------------------------ optional parts


def test_vpc_endpoints_are_off_by_default_and_serve_the_tasks_when_on(template: dict[str, Any]) -> None:
    # Given the defaults, no endpoint exists
    assert not _created(Evaluation(template), "AWS::EC2::VPCEndpoint")
    # When endpoints are asked for, with the user's own private network
    own = {**OWN_NETWORK, "VpcEndpoints": "ENABLED", "VpcId": "vpc-0ddd", "RouteTableIds": "rtb-0eee,rtb-0fff"}
    for given, vpc, subnets, route_tables in [
        ({"VpcEndpoints": "ENABLED"}, None, None, None),
        (own, "vpc-0ddd", ["subnet-0aaa", "subnet-0bbb"], ["rtb-0eee", "rtb-0fff"]),
    ]:
        evaluation = Evaluation(template, given)
        endpoints = [
            evaluation.evaluate(e["Properties"]) for e in _created(evaluation, "AWS::EC2::VPCEndpoint").values()
        ]
        # Then ECR (API and registry) and CloudWatch Logs have interface endpoints in the tasks' subnets,
        # and S3 (image layers) a gateway endpoint in their route tables
        services = {e["ServiceName"] for e in endpoints}
        assert services == {f"com.amazonaws.{REGION}.{s}" for s in ("ecr.api", "ecr.dkr", "logs", "s3")}
        network = _network(evaluation)
        for endpoint in endpoints:
            if vpc is not None:
                assert endpoint["VpcId"] == vpc
            if endpoint["ServiceName"].endswith(".s3"):
                assert endpoint["VpcEndpointType"] == "Gateway"
                if route_tables is not None:
                    assert endpoint["RouteTableIds"] == route_tables
            else:
                assert endpoint["VpcEndpointType"] == "Interface"
                assert endpoint["PrivateDnsEnabled"] is True
                assert endpoint["SubnetIds"] == (subnets or network["SubnetIds"].split(","))


def test_the_pull_through_cache_is_off_by_default(template: dict[str, Any]) -> None:
    evaluation = Evaluation(template)
    assert not _created(evaluation, "AWS::ECR::PullThroughCacheRule")
    assert _pull_through_actions(evaluation) == set()
    for function in of_type(template, "AWS::Lambda::Function").values():
        assert (
            evaluation.evaluate(function["Properties"]["Environment"]["Variables"]["PULL_THROUGH_CACHE_PREFIX"]) == ""
        )


def _execution_role_statements(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The statements of the task execution role's inline policies and of the policies attached to it."""
    role = evaluation.evaluate(evaluation.template["Resources"]["TaskExecutionRole"]["Properties"])
    attached = [
        evaluation.evaluate(p["Properties"])
        for p in _created(evaluation, "AWS::IAM::Policy").values()
        if {"Ref": "TaskExecutionRole"} in p["Properties"].get("Roles", [])
    ]
    return [s for _, s in statements([role.get("Policies") or [], attached])]


def _pull_through_actions(evaluation: Evaluation) -> set[str]:
    return {a for s in _execution_role_statements(evaluation) for a in actions(s) if a.startswith("ecr:")}


@pytest.mark.parametrize("docker_hub", [False, True])
def test_the_pull_through_cache_caches_ecr_public_and_docker_hub_given_credentials(
    template: dict[str, Any], docker_hub: bool
) -> None:
    # Given the cache turned on (and, for Docker Hub, a Secrets Manager secret with its credentials)
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    given = {"PullThroughCache": "ENABLED", "PullThroughCachePrefix": "tr"}
    evaluation = Evaluation(template, {**given, "DockerHubCredentialArn": secret} if docker_hub else given)
    # Then a rule caches ECR Public without credentials, and one Docker Hub with them
    rules = {
        r["UpstreamRegistryUrl"]: r
        for r in (
            evaluation.evaluate(v["Properties"])
            for v in _created(evaluation, "AWS::ECR::PullThroughCacheRule").values()
        )
    }
    expected = {"public.ecr.aws"} | ({"registry-1.docker.io"} if docker_hub else set())
    assert set(rules) == expected
    assert "CredentialArn" not in rules["public.ecr.aws"]
    if docker_hub:
        assert rules["registry-1.docker.io"]["CredentialArn"] == secret
    for rule in rules.values():
        assert rule["EcrRepositoryPrefix"].startswith("tr/")
    # And the execution role may create the cache's repositories and import images into them, and nothing else
    [pull_through] = [s for s in _execution_role_statements(evaluation) if "ecr:BatchImportUpstreamImage" in actions(s)]
    assert set(actions(pull_through)) == {"ecr:CreateRepository", "ecr:BatchImportUpstreamImage"}
    assert pull_through["Resource"] == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/tr/*"
    # And the functions know the cache's registry prefix
    prefix = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/tr"
    for function in of_type(template, "AWS::Lambda::Function").values():
        assert (
            evaluation.evaluate(function["Properties"]["Environment"]["Variables"]["PULL_THROUGH_CACHE_PREFIX"])
            == prefix
        )
