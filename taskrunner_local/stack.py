"""The whole task runner on one machine: moto, the deployed template, the Lambda runtime, the HTTP gateway
and the Fargate agent, started and stopped together."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskrunner_local import moto_patches
from taskrunner_local.admin_key import ADMIN_KEY_PARAMETER, AdminKey, ensure_admin_key
from taskrunner_local.agent import FargateAgent, Launcher
from taskrunner_local.aws_inside import AwsInside
from taskrunner_local.aws_server import AwsServer, EndpointSession
from taskrunner_local.config import LocalConfig
from taskrunner_local.containers import ContainerLauncher
from taskrunner_local.deploy import Deployer, Deployment
from taskrunner_local.engine import Engine
from taskrunner_local.gateway import Gateway
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from taskrunner_local.persistence.durability import Durability
from taskrunner_local.persistence.executions import ExecutionsPart
from taskrunner_local.persistence.folder import StateFolder, StateUnusable
from taskrunner_local.persistence.lambda_async import DurableAsyncQueue
from taskrunner_local.persistence.logs import LogsPart
from taskrunner_local.persistence.s3 import S3Part
from taskrunner_local.persistence.snapshots import Part
from taskrunner_local.persistence.store import DATABASE, StateStore
from taskrunner_local.registry import LocalEcr, RegistryUnavailable
from taskrunner_local.runtime import FunctionSpec, LambdaRuntime
from taskrunner_local.sam import SamApp, http_routes
from taskrunner_local.scheduler import SchedulerTicker  # (puts the layer's package on the path)

from taskrunner.service import ECS_GROUP_PREFIX  # isort: skip


class EngineUnavailable(RuntimeError):
    """Container mode was asked for and no container engine works: the stack does not start."""


#: how to get container mode on a machine without it
HOW_TO_GET_CONTAINERS = "`make engine images` (as root, on Debian) installs Podman and builds the task images"


@dataclass(frozen=True)
class AgentChoice:
    """The agent mode that runs (`container` or `process`), what was asked for and why it is this one."""

    #: what runs: `container` or `process`
    mode: str
    #: what was asked for: `auto`, `container` or `process`
    requested: str
    #: why this mode runs, in a few words (`auto: podman 4.3.1 works`)
    reason: str
    #: the engine container mode runs with
    engine: Engine | None = None
    #: offline task images container mode finds missing from the engine's store
    missing_images: tuple[str, ...] = ()

    @property
    def fallback(self) -> bool:
        """Process mode because no engine works, not because it was asked for: announced loudly."""
        return self.mode == "process" and self.requested == "auto"

    def headline(self) -> str:
        """`container (auto: podman 4.3.1 works)`: the mode that runs and why."""
        if self.mode == "process":
            return f"process ({self.reason}) — tasks are host processes, not isolated"
        return f"container ({self.reason})"

    def warnings(self) -> list[str]:
        """What the user must read before trusting the stack: a fallback to host processes, missing images."""
        lines = []
        if self.fallback:
            lines += [
                "WARNING: no container engine works, so tasks run as HOST PROCESSES (process mode): no isolation,",
                "  they see this machine's files, processes and 127.0.0.1, and their image is only recorded.",
                f"  why: {self.reason.removeprefix('auto: no container engine works: ')}",
                f"  for container mode: {HOW_TO_GET_CONTAINERS}, then start again",
                "  (TASKRUNNER_AGENT_MODE=process or --agent-mode process chooses process mode on purpose).",
            ]
        if self.missing_images:
            lines.append(
                f"WARNING: images {', '.join(self.missing_images)} are not built: `make images` builds "
                f"{PYTHON_IMAGE} and busybox (offline, from Debian packages)"
            )
        return lines


def choose_agent_mode(requested: str) -> AgentChoice:
    """The agent mode to run for `requested` (`auto`, `container` or `process`): container mode when asked for
    (EngineUnavailable without a working engine) or, in `auto`, when an engine works; process mode otherwise."""
    if requested == "process":
        return AgentChoice("process", requested, "chosen explicitly")
    if requested not in ("auto", "container"):
        raise ValueError(f"agent mode {requested!r} is none of auto, container, process")
    engine = Engine.detect()
    if engine is None:
        why = Engine.why_not() or "no engine was found"
        if requested == "container":
            raise EngineUnavailable(f"container mode needs a container engine and none works: {why}")
        return AgentChoice("process", requested, f"auto: no container engine works: {why}")
    try:
        works = f"{engine.name} {engine.version()} works"
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        if requested == "container":
            raise EngineUnavailable(f"container mode needs a container engine and none works: {error}") from error
        return AgentChoice("process", requested, f"auto: no container engine works: {error}")
    reason = f"auto: {works}" if requested == "auto" else f"chosen explicitly, {works}"
    missing = tuple(image for image in (PYTHON_IMAGE, BUSYBOX_IMAGE) if not engine.image_exists(image))
    return AgentChoice("container", requested, reason, engine, missing)


#: the state store's record of the deployed stack, and of the template it was deployed from
DEPLOYMENT_META = "deployment"
TEMPLATE_DIGEST_META = "template-digest"
#: a file beside the database, written once a stack was deployed in the folder
DEPLOYED_MARKER = "deployed"


def _agent_log(line: str) -> None:
    print(f"[agent] {line}", flush=True)


def _ecr_log(line: str) -> None:
    print(f"[ecr] {line}", flush=True)


class LocalStack:
    def __init__(self, config: LocalConfig | None = None, choice: AgentChoice | None = None) -> None:
        """`choice`: the agent mode already chosen (by `choose_agent_mode`); chosen at start from
        `config.agent_mode` when None."""
        self.config = config or LocalConfig()
        self.choice = choice
        self.aws = AwsServer(self.config)
        self.session: EndpointSession | None = None
        self.deployment: Deployment | None = None
        self.runtime: LambdaRuntime | None = None
        self.agent: FargateAgent | None = None
        self.gateway: Gateway | None = None
        self.ticker: SchedulerTicker | None = None
        #: the local ECR's registry; None when it cannot run (`ecr_unavailable` says why)
        self.ecr: LocalEcr | None = None
        self.ecr_unavailable: str | None = None
        #: where the stack's state lives, the store in it, and what writes moto's state through to it
        self.folder: StateFolder | None = None
        self.store: StateStore | None = None
        self.durability: Durability | None = None
        #: what the start found in the state folder and did with it, for the banner
        self.state_lines: list[str] = []
        #: the admin API key, kept in the state folder's admin.key
        self.admin: AdminKey | None = None
        # what the stop left: the state folder (None when ephemeral) and the tasks still running
        self._stopped_folder: Path | None = None
        self._stopped_ephemeral = True
        self._kept_running = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalStack:
        config = self.config
        try:
            self.folder = StateFolder.open(None if config.ephemeral else config.state_dir, ephemeral=config.ephemeral)
            try:
                self.store = StateStore(self.folder.path, durable=not self.folder.ephemeral)
            except sqlite3.DatabaseError as error:
                raise self._damaged(error) from error
            parts: list[Part] = [
                LogsPart(self.store),
                S3Part(self.store, self.folder.sub("s3")),
                ExecutionsPart(self.store),
            ]
            self.durability = Durability(self.store, parts=parts)
            if self.choice is None:
                self.choice = choose_agent_mode(config.agent_mode)
            self.aws.start(before_serving=self._restore)
            moto_patches.HOOKS.on_state_changed = self.durability.changed
            self.session = EndpointSession(config)
            self._start_registry()
            self.admin = self._admin_key()
            app = SamApp(config.root / "template.yaml")
            self.deployment = self._deploy(app)
            self.runtime = LambdaRuntime(
                self._function_specs(app),
                base_env=self._function_base_env(),
                concurrency=config.lambda_concurrency,
                echo_logs=config.echo_function_logs,
                send_to_destination=self._send_to_destination,
                journal=DurableAsyncQueue(self.store),
            )
            moto_patches.HOOKS.invoke_lambda = self.runtime.invoke_payload
            self._start_agent()
            self.runtime.warm()
            if self.durability.restored:
                self._settle_interrupted()
                redelivered = self.runtime.redeliver()
                if redelivered:
                    self.state_lines.append(
                        f"{redelivered} asynchronous invocation(s) accepted before the stop redelivered"
                    )
            self.gateway = Gateway(
                http_routes(self.deployment.template, self.deployment.parameters),
                self.runtime,
                host=config.host,
                port=config.api_port,
                max_request_bytes=config.max_request_bytes,
                account=config.account,
                region=config.region,
                on_request=(lambda line: print(f"[api] {line}", flush=True)) if config.echo_function_logs else None,
            )
            self.gateway.start()
            self.ticker = SchedulerTicker(
                config.account,
                config.region,
                self.runtime.invoke_async,
                on_log=lambda line: print(f"[scheduler] {line}", flush=True),
            )
            self.ticker.speed_up(self.deployment.schedule_arns.values(), config.template_schedule_interval_seconds)
            self.ticker.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _restore(self) -> None:
        """Between patching moto and serving: write moto's state through from now on, and read back what the
        state folder holds (a first start finds nothing, and begins from an empty account)."""
        from moto.core.base_backend import BackendDict

        assert self.durability is not None and self.store is not None and self.folder is not None
        BackendDict.reset()  # this process may have run a stack before: start from what the folder says, only
        self.durability.install()
        try:
            restored = self.durability.restore()
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from error
        marker = self.folder.path / DEPLOYED_MARKER
        if restored:
            saved = self.store.meta(DEPLOYMENT_META)
            held = Deployment.from_json(saved).stack_name if saved is not None else None
            if held is not None and held != self.config.stack_name:
                raise StateUnusable(
                    f"the state folder {self.folder.path} holds the stack {held!r}, not {self.config.stack_name!r}: "
                    f"start it with TASKRUNNER_STACK_NAME={held}, or give this stack its own folder"
                )
            return
        if marker.exists():
            raise StateUnusable(
                f"the state folder {self.folder.path} had a deployed stack ({marker.name}), but its database "
                f"({DATABASE}) holds none: was it deleted or replaced? Nothing was started, so that nothing more is "
                "lost; `taskrunner local reset` forgets the folder's state and starts anew"
            )
        self.store.wipe()  # what a first start that died before its deployment was complete left

    def _damaged(self, error: Exception) -> StateUnusable:
        assert self.folder is not None
        return StateUnusable(
            f"the state folder's database {self.folder.path / DATABASE} cannot be read ({error}): nothing was started. "
            "`taskrunner local reset` forgets the folder's state (or move the folder away to keep it)"
        )

    def _admin_key(self) -> AdminKey:
        """The state folder's admin key (a new one when it has none), and what the banner says of it."""
        assert self.folder is not None and self.durability is not None
        admin = ensure_admin_key(self.folder)
        if admin.origin == "made" and self.durability.restored:
            self.state_lines.append(
                f"{admin.shown_path()} was missing: a new admin key was made, and the previous one no longer works"
            )
        elif admin.origin == "malformed":
            self.state_lines.append(
                f"{admin.shown_path()} did not hold a key this stack makes (trk_…): a new admin key replaced it"
            )
        elif admin.origin == "exposed":
            self.state_lines.append(
                f"{admin.shown_path()} could be read by other users: a new admin key replaced it (0600), and the "
                "previous one no longer works"
            )
        return admin

    def deployment_parameters(self) -> dict[str, str]:
        """What the local deployment sets of the template's parameters: the admin key's digest, and no cache of
        the authorizer's answers, so that a revoked key or a disabled tenant is refused from the next request (on
        AWS, API Gateway keeps an answer for AuthorizerCacheSeconds)."""
        assert self.admin is not None
        return {ADMIN_KEY_PARAMETER: self.admin.sha256, "AuthorizerCacheSeconds": "0"}

    def _deploy(self, app: SamApp) -> Deployment:
        """The deployed stack: restored as it was when the template and the parameters are unchanged, updated
        when they changed, deployed when the state folder has none."""
        assert self.durability is not None and self.store is not None and self.folder is not None
        config = self.config
        deployer = Deployer(
            app,
            self.session,
            config.stack_name,
            config.region,
            config.account,
            parameters=self.deployment_parameters(),
        )
        digest = deployer.template_digest()
        saved = self.store.meta(DEPLOYMENT_META)
        if self.durability.restored and saved is not None:
            deployment = Deployment.from_json(saved)
            if self.store.meta(TEMPLATE_DIGEST_META) == digest:
                self.state_lines.append(f"stack {deployment.stack_name} restored (template unchanged)")
                return deployment
            with self.durability.deferred():
                deployment, changes = deployer.update(deployment)
                self._remember(deployment, digest)
            self.state_lines.append(
                f"stack {deployment.stack_name} updated: the template or its parameters changed ({changes})"
            )
            return deployment
        with self.durability.deferred():
            deployment = deployer.deploy()
            self._remember(deployment, digest)
        self.state_lines.append(f"stack {deployment.stack_name} deployed")
        return deployment

    def _settle_interrupted(self) -> None:
        """After a restore: the workflows the dead stack was running cannot go on in the middle of a state; their
        executions were settled ABORTED (LocalStackStopped) when the state was read back. A task whose workflow had
        launched its ECS task is the agent's: re-adopted, or settled, and its STOPPED event finalizes and meters
        it. The others (their workflow had not launched a task), and whatever else a crash left unfinished (a
        STOPPED event lost on its way), are the reconciler's: it runs once, at once, and settles them through the
        one finalize path: a task whose execution ended without an ECS task ends FAILED, metered 0."""
        assert self.durability is not None and self.runtime is not None and self.deployment is not None
        interrupted = self.durability.interrupted_executions()
        # the group names the task (`.sync` may set startedBy itself): `taskrunner:<task id>`
        launched = {
            str(task.group).removeprefix(ECS_GROUP_PREFIX)
            for cluster_tasks in self.ecs_backend().tasks.values()
            for task in cluster_tasks.values()
        }
        not_launched = [execution for execution in interrupted if execution["name"] not in launched]
        report = self.runtime.invoke(
            self.deployment.function_names["ReconcilerFunction"],
            # nothing is launching (the API does not serve yet) and the agent has settled every ECS task it could
            {"source": "taskrunner.local-restart", "grace_seconds": 0, "launch_grace_seconds": 0},
        )
        if report.error is not None:  # its schedule runs it again within TASKRUNNER_TEMPLATE_SCHEDULE_INTERVAL
            print(f"[state] the reconciler could not run after the restart: {report.error}", flush=True)
        result = report.result if isinstance(report.result, dict) else {}
        if interrupted:
            self.state_lines.append(
                f"{len(interrupted)} workflow(s) were cut short by the stop: {len(interrupted) - len(not_launched)} "
                f"had launched their task (the agent re-adopted or settled it), {len(not_launched)} had not"
            )
        if result.get("settled"):
            self.state_lines.append(f"the reconciler settled {result['settled']} task(s) left unfinished")

    def _remember(self, deployment: Deployment, digest: str) -> None:
        assert self.store is not None and self.folder is not None
        self.store.set_meta(DEPLOYMENT_META, deployment.to_json())
        self.store.set_meta(TEMPLATE_DIGEST_META, digest)
        # outside the database: a folder whose database lost its stack is told apart from a new one
        (self.folder.path / DEPLOYED_MARKER).write_text(f"{deployment.stack_name}\n")

    def _start_registry(self) -> None:
        """The local ECR's registry, after the AWS endpoint (it answers from moto's ECR); without
        docker-registry the stack runs on, and says that the local ECR is unavailable and how to get it."""
        assert self.folder is not None
        config = self.config
        ecr = LocalEcr(
            account=config.account,
            region=config.region,
            host=config.host,
            port=config.registry_port,
            work_dir=self.folder.sub("registry"),
            on_log=_ecr_log,
        )
        try:
            self.ecr = ecr.start()
        except RegistryUnavailable as error:
            self.ecr_unavailable = str(error)
        else:
            moto_patches.HOOKS.on_ecr_images_deleted = ecr.on_images_deleted

    def ecr_lines(self) -> list[str]:
        """What the banner says of the local ECR: where to push, or why it is unavailable."""
        config = self.config
        if self.ecr is None:
            return [f"local ECR unavailable: {self.ecr_unavailable or 'not started'}"]
        endpoint = self.ecr.endpoint
        return [
            f"local ECR {self.ecr.host} is served at {endpoint} (the engine pushes to this alias):",
            f"  aws ecr create-repository --repository-name demo --endpoint-url {config.aws_endpoint}",
            f"  aws ecr get-login-password --endpoint-url {config.aws_endpoint} | podman login --tls-verify=false "
            f"-u AWS --password-stdin {endpoint}",
            f"  podman push --tls-verify=false <image> {endpoint}/demo:latest",
            f'  tasks run it as "image":"{self.ecr.host}/demo:latest" (or by @sha256: digest)',
        ]

    def _start_agent(self) -> None:
        assert self.session is not None and self.folder is not None and self.durability is not None
        config = self.config
        launcher: Launcher | None = None
        assert self.choice is not None
        if self.choice.engine is not None:
            launcher = ContainerLauncher(
                self.choice.engine,
                stack_name=config.stack_name,
                region=config.region,
                work_dir=self.folder.sub("containers"),
                on_log=_agent_log,
                registry=self.ecr,
                state_dir=self.folder.path,
            )
        self.agent = FargateAgent(
            AwsInside(config.account, config.region),
            work_dir=self.folder.sub("tasks"),
            stop_timeout_seconds=config.stop_timeout_seconds,
            max_running_tasks=config.max_running_tasks,
            region=config.region,
            on_log=_agent_log,
            launcher=launcher,
            store=self.store,
            on_task_changed=self.durability.ecs.task_changed,
        )
        moto_patches.HOOKS.on_run_task = self.agent.on_run_task
        moto_patches.HOOKS.on_stop_task = self.agent.on_stop_task
        recovery = self.agent.recover(self.ecs_backend())
        done = [
            (len(recovery.adopted), "re-adopted (still running or exited meanwhile)"),
            (len(recovery.restarted), "started (they had not started)"),
            (len(recovery.settled), "settled as stopped with the stack"),
        ]
        if any(count for count, _ in done):
            self.state_lines.append(
                "tasks left by the previous run: " + ", ".join(f"{count} {what}" for count, what in done if count)
            )

    def restart_agent(self) -> None:
        """Replace the Fargate agent as if it had crashed and restarted: the new one re-adopts what still runs and
        settles the rest."""
        assert self.agent is not None
        self.agent.detach()
        self._start_agent()

    def stop(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.agent is not None:
            # a durable stack's tasks keep running in their containers, for the next start to re-adopt
            self._kept_running = self.agent.shutdown(keep_running=self.folder is not None and not self.folder.ephemeral)
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
        moto_patches.HOOKS.invoke_lambda = None
        moto_patches.HOOKS.on_run_task = None
        moto_patches.HOOKS.on_stop_task = None
        moto_patches.HOOKS.on_ecr_images_deleted = None
        moto_patches.HOOKS.on_state_changed = None
        if self.ecr is not None:
            self.ecr.stop()
            self.ecr = None
        self.aws.stop()
        if self.durability is not None:
            self.durability.revert()
            self.durability = None
        moto_patches.revert_all()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.folder is not None:
            self._stopped_folder, self._stopped_ephemeral = self.folder.path, self.folder.ephemeral
            self.folder.close()
            self.folder = None

    def stopped_line(self) -> str:
        """What the command line says once the stack stopped: where its state is, and what is still running."""
        if self._stopped_folder is None or self._stopped_ephemeral:
            return "stopped; no task process is left running."
        kept = (
            f"; {self._kept_running} task(s) keep running in their containers and the next start re-adopts them"
            if self._kept_running
            else ""
        )
        return f"stopped; its state is kept in {self._stopped_folder}{kept}."

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ parts

    def _function_specs(self, app: SamApp) -> list[FunctionSpec]:
        assert self.session is not None and self.deployment is not None
        lambda_client = self.session.client("lambda")
        specs = []
        layers = app.layer_dirs()
        for source in app.functions():
            name = self.deployment.function_names[source.logical_id]
            configuration = lambda_client.get_function_configuration(FunctionName=name)
            try:  # retries and on-failure destination of asynchronous invocations, as deployed
                invoke_config = lambda_client.get_function_event_invoke_config(FunctionName=name, Qualifier="$LATEST")
            except lambda_client.exceptions.ResourceNotFoundException:
                invoke_config = {}
            specs.append(
                FunctionSpec(
                    logical_id=source.logical_id,
                    name=name,
                    arn=configuration["FunctionArn"],
                    code_dir=source.code_dir,
                    handler=source.handler,
                    layer_dirs=layers,
                    environment=configuration.get("Environment", {}).get("Variables", {}),
                    timeout_seconds=int(configuration.get("Timeout", 3)),
                    memory_mb=int(configuration.get("MemorySize", 128)),
                    max_retry_attempts=int(invoke_config.get("MaximumRetryAttempts", 2)),
                    max_event_age_seconds=int(invoke_config.get("MaximumEventAgeInSeconds", 21_600)),
                    on_failure_destination=invoke_config.get("DestinationConfig", {})
                    .get("OnFailure", {})
                    .get("Destination"),
                )
            )
        return specs

    def _send_to_destination(self, destination_arn: str, record: dict[str, Any]) -> None:
        """Lambda's delivery of an invocation record to a destination: an SQS queue or an SNS topic."""
        assert self.session is not None
        service, _region, account, resource = destination_arn.split(":", 5)[2:6]
        body = json.dumps(record, default=str)
        if service == "sqs":
            sqs = self.session.client("sqs")
            url = sqs.get_queue_url(QueueName=resource, QueueOwnerAWSAccountId=account)["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody=body)
        elif service == "sns":
            self.session.client("sns").publish(TopicArn=destination_arn, Message=body)
        else:
            raise ValueError(f"destinations of type {service} are not delivered locally ({destination_arn})")

    def _function_base_env(self) -> dict[str, str]:
        config = self.config
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")}
        env.update(
            AWS_ENDPOINT_URL=config.aws_endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_SESSION_TOKEN="test",
            AWS_REGION=config.region,
            AWS_DEFAULT_REGION=config.region,
            AWS_EXECUTION_ENV="AWS_Lambda_python3.13",
            # No X-Ray daemon and no CloudWatch metrics ingestion locally.
            POWERTOOLS_TRACE_DISABLED="true",
            POWERTOOLS_METRICS_DISABLED="true",
        )
        return env

    def ecs_backend(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[self.config.account][self.config.region]

    @property
    def api_url(self) -> str:
        assert self.gateway is not None
        return f"http://{self.config.host}:{self.gateway.port}"

    @property
    def admin_key(self) -> str:
        """The admin API key (`Authorization: Bearer <it>`), as the state folder's admin.key holds it."""
        assert self.admin is not None
        return self.admin.key

    @property
    def aws_endpoint(self) -> str:
        return self.config.aws_endpoint

    def client(self, service: str) -> Any:
        assert self.session is not None
        return self.session.client(service)
