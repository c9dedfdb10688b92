"""The public data model (DESIGN §4): what clients send and what they get back."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from taskrunner.fargate import MAX_OVERRIDES_JSON_CHARS, VALID_CPU, VALID_MEMORY_BY_CPU

#: The one container in every task definition this system registers.
CONTAINER_NAME = "main"
DEFAULT_TENANT = "default"
#: the longest a task may run, and the longest it may wait in the queue (14 days)
MAX_TIMEOUT_SECONDS = 1_209_600


class Architecture(StrEnum):
    X86_64 = "X86_64"
    ARM64 = "ARM64"


class Capacity(StrEnum):
    ON_DEMAND = "ON_DEMAND"
    SPOT = "SPOT"


class TaskStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    #: waiting for its tenant's quota (taskrunner.fair_queue): after SUBMITTED, before PROVISIONING
    QUEUED = "QUEUED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    def can_become(self, new: TaskStatus) -> bool:
        """Status only moves forward; a terminal status never changes."""
        return not self.terminal and _RANK[new] > _RANK[self]


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED})
_RANK = {
    TaskStatus.SUBMITTED: 0,
    TaskStatus.QUEUED: 1,
    TaskStatus.PROVISIONING: 2,
    TaskStatus.RUNNING: 3,
    TaskStatus.SUCCEEDED: 4,
    TaskStatus.FAILED: 4,
    TaskStatus.TIMED_OUT: 4,
    TaskStatus.CANCELLED: 4,
}

# A container image reference: [registry[:port]/]path[:tag][@digest], lower-case path components. As in
# Docker, the first component is a registry only when it has a dot or a port, or is `localhost`. The digest
# algorithm's separators are Docker's `[-_+.]`: written `[+.-_]` the class was the range `.`..`_` (digits,
# capitals, `:`, `@`, ...), which let a separator also be a letter: an ambiguity that backtracking engines
# (Python's `re`, and so every client generating or checking values from the OpenAPI pattern) explore in
# exponential time.
IMAGE_PATTERN = (
    r"^(?:(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+)(?::[0-9]+)?/|[a-zA-Z0-9-]+:[0-9]+/)?"
    r"[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]{1,2}[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)

ImageRef = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=IMAGE_PATTERN),
    Field(description="A container image reference, for example `python:3.12-slim`.", examples=["python:3.12-slim"]),
]
#: Tag key prefixes the system keeps for itself: ECS rejects `aws:`, and `taskrunner:` tags identify tasks.
RESERVED_TAG_PREFIXES = ("aws:", "taskrunner:")

# A process cannot receive a NUL in its argv or environment, and control characters in names and tags are
# never meant. Tab, newline and carriage return stay allowed where scripts live (command, env values).
_SCRIPT_WHITESPACE = frozenset("\t\n\r")


def _control_characters_rejected(allowed: frozenset[str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        for position, char in enumerate(text):
            if (char < " " or char == "\x7f") and char not in allowed:
                raise PydanticCustomError(
                    "control_character",
                    "must not contain NUL or control characters (found {character} at position {position})",
                    {"character": f"U+{ord(char):04X}", "position": position},
                )
        return text

    return check


ScriptText = Annotated[
    str,
    AfterValidator(_control_characters_rejected(_SCRIPT_WHITESPACE)),
    Field(json_schema_extra={"pattern": r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"}),
]
PlainText = Annotated[
    str,
    AfterValidator(_control_characters_rejected(frozenset())),
    Field(json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]*$"}),
]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]


def _tag_key_not_reserved(key: str) -> str:
    if key.lower().startswith(RESERVED_TAG_PREFIXES):
        raise PydanticCustomError(
            "reserved_tag",
            "tag key {key} starts with a reserved prefix ({prefixes})",
            {"key": json.dumps(key), "prefixes": ", ".join(RESERVED_TAG_PREFIXES)},
        )
    return key


TagKey = Annotated[
    PlainText,
    StringConstraints(min_length=1, max_length=128),
    AfterValidator(_tag_key_not_reserved),
    Field(
        json_schema_extra={"pattern": r"^(?![aA][wW][sS]:|[tT][aA][sS][kK][rR][uU][nN][nN][eE][rR]:)[^\x00-\x1f\x7f]+$"}
    ),
]
TagValue = Annotated[PlainText, StringConstraints(max_length=256)]


def _key_pattern_applies_to_every_key(schema: dict[str, Any]) -> None:
    """pydantic states a key pattern as `patternProperties`, which leaves other keys unchecked in the schema;
    as `propertyNames` it says what the validator does: every key must match."""
    for variant in schema.get("anyOf", [schema]):
        patterns = variant.pop("patternProperties", None)
        if patterns:
            (pattern, values), *_ = patterns.items()
            variant.setdefault("propertyNames", {})["pattern"] = pattern
            variant["additionalProperties"] = values


class TaskSpec(BaseModel):
    """What to run. Sizes follow Fargate's table; the RunTask overrides must fit in 8,192 characters."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    image: ImageRef
    command: Annotated[
        list[Annotated[ScriptText, StringConstraints(max_length=8192)]] | None,
        Field(
            min_length=1,
            description="Overrides the image's command: the program, then its arguments. Omit it to run the "
            "image's own command. No NUL or control characters other than tab and newline.",
            examples=[["sh", "-c", "echo hi"]],
        ),
    ] = None
    environment: Annotated[
        dict[EnvName, ScriptText] | None,
        Field(
            description="Environment variables; names match `[A-Za-z_][A-Za-z0-9_]*`.",
            json_schema_extra=_key_pattern_applies_to_every_key,
        ),
    ] = None
    cpu: Annotated[int, Field(description=f"CPU units, one of {', '.join(map(str, VALID_CPU))}.")] = 256
    memory: Annotated[int, Field(description="Memory in MiB; must fit `cpu` (Fargate's size table).")] = 512
    architecture: Architecture = Architecture.X86_64
    capacity: Annotated[Capacity, Field(description="`SPOT` runs on Fargate Spot (cheaper, may be interrupted).")] = (
        Capacity.ON_DEMAND
    )
    ephemeral_storage_gib: Annotated[int, Field(ge=20, le=200)] = 20
    timeout_seconds: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_SECONDS)] = 3600
    queue_timeout_seconds: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_TIMEOUT_SECONDS,
            description="How long the task may wait in QUEUED for its tenant's quota before it ends TIMED_OUT "
            "(billed 0).",
        ),
    ] = 86_400
    name: Annotated[PlainText | None, StringConstraints(max_length=128)] = None
    tags: Annotated[
        dict[TagKey, TagValue] | None,
        Field(
            max_length=20,
            description="Up to 20 tags; keys may not start with `aws:` or `taskrunner:`.",
            json_schema_extra=_key_pattern_applies_to_every_key,
        ),
    ] = None

    @field_validator("command")
    @classmethod
    def _command_names_a_program(cls, command: list[str] | None) -> list[str] | None:
        if command is not None and not command[0].strip():
            raise PydanticCustomError(
                "command_program", "the first element of command is the program to run and cannot be blank"
            )
        return command

    @field_validator("cpu")
    @classmethod
    def _cpu_is_a_fargate_size(cls, cpu: int) -> int:
        if cpu not in VALID_MEMORY_BY_CPU:
            raise PydanticCustomError(
                "fargate_cpu",
                "cpu must be one of {valid_values}",
                {"valid_values": list(VALID_CPU)},
            )
        return cpu

    @field_validator("memory")
    @classmethod
    def _memory_fits_cpu(cls, memory: int, info: ValidationInfo) -> int:
        cpu = info.data.get("cpu")
        if cpu is None:  # cpu itself was invalid and is reported on its own
            return memory
        valid = VALID_MEMORY_BY_CPU[cpu]
        if memory not in valid:
            raise PydanticCustomError(
                "fargate_memory",
                "memory {memory} MiB does not fit cpu {cpu}; valid memory values for cpu {cpu}: {valid_list}",
                {
                    "memory": memory,
                    "cpu": cpu,
                    "valid_values": list(valid),
                    "valid_list": ", ".join(map(str, valid)),
                },
            )
        return memory

    @model_validator(mode="after")
    def _overrides_fit_runtask_limit(self) -> TaskSpec:
        size = len(json.dumps(run_task_overrides(self), separators=(",", ":")))
        if size > MAX_OVERRIDES_JSON_CHARS:
            raise PydanticCustomError(
                "overrides_too_large",
                "command and environment make the RunTask overrides {size} characters of JSON; "
                "ECS accepts at most {limit}",
                {"size": size, "limit": MAX_OVERRIDES_JSON_CHARS, "field": "environment"},
            )
        return self


def run_task_overrides(spec: TaskSpec) -> dict[str, Any]:
    """The `overrides` of ECS RunTask for `spec`, in the PascalCase that Step Functions passes on.

    The JSON that ECS measures against its 8,192-character limit is the same object in camelCase, which
    has exactly the same length."""
    container: dict[str, Any] = {"Name": CONTAINER_NAME, "Cpu": spec.cpu, "Memory": spec.memory}
    if spec.command is not None:
        container["Command"] = spec.command
    if spec.environment:
        container["Environment"] = [{"Name": k, "Value": v} for k, v in spec.environment.items()]
    overrides: dict[str, Any] = {
        "ContainerOverrides": [container],
        "Cpu": str(spec.cpu),
        "Memory": str(spec.memory),
    }
    if spec.ephemeral_storage_gib > 20:
        overrides["EphemeralStorage"] = {"SizeInGiB": spec.ephemeral_storage_gib}
    return overrides


class Metering(BaseModel):
    """One task's bill, computed the way Fargate bills (DESIGN §5)."""

    billed_seconds: int
    vcpu: float
    memory_gib: float
    vcpu_seconds: float
    gib_seconds: float
    ephemeral_storage_gib_seconds: float
    architecture: Architecture
    capacity: Capacity
    cost_usd: float
    window_start: datetime | None
    window_end: datetime | None
    ecs_task_arn: str | None = None
    region: str | None = None
    #: where the rates the cost was computed with come from, and the day they were read (the region's price table
    #: entry; for Spot, AWS's published Spot rates or the deployment's Spot discount)
    price_source: str | None = None
    price_as_of: date | None = None


class Slot(BaseModel):
    """What a task takes of its tenant's quota while it holds a slot (from admission until it is metered)."""

    model_config = ConfigDict(frozen=True)

    cpu: int  # CPU units
    memory: int  # MiB

    @classmethod
    def of(cls, spec: TaskSpec) -> Slot:
        return cls(cpu=spec.cpu, memory=spec.memory)


class Task(BaseModel):
    task_id: str
    tenant: str
    name: str | None = None
    status: TaskStatus
    spec: TaskSpec
    created_at: datetime
    updated_at: datetime
    provisioning_at: Annotated[
        datetime | None,
        Field(description="When the workflow asked ECS to run the task (it entered PROVISIONING)"),
    ] = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_code: int | None = None
    stop_code: str | None = None
    status_reason: str | None = None
    ecs_task_arn: str | None = None
    execution_arn: str | None = None
    metering: Metering | None = None
    schedule: Annotated[str | None, Field(description="The schedule that started this task, if any")] = None
    scheduled_time: datetime | None = None
    # Bookkeeping of the fair queue (taskrunner.fair_queue), never part of a response: the slot the task holds
    # (counted in its tenant's counters until it is metered), and the task token its waiting workflow gave.
    slot_held: SkipJsonSchema[Slot | None] = Field(default=None, exclude=True)
    queue_token: SkipJsonSchema[str | None] = Field(default=None, exclude=True)


class TaskPage(BaseModel):
    items: list[Task]
    next_token: str | None = None


class LogEvent(BaseModel):
    timestamp: datetime
    message: str


class LogPage(BaseModel):
    events: list[LogEvent]
    next_token: str | None = None


class UsageRow(BaseModel):
    tasks: int = 0
    billed_seconds: int = 0
    vcpu_seconds: float = 0.0
    gib_seconds: float = 0.0
    ephemeral_storage_gib_seconds: float = 0.0
    cost_usd: float = 0.0


class UsageDay(UsageRow):
    date: date


class Usage(BaseModel):
    tenant: str
    from_date: Annotated[date, Field(serialization_alias="from")]
    to_date: Annotated[date, Field(serialization_alias="to")]
    totals: UsageRow
    days: list[UsageDay]


class ErrorDetail(BaseModel):
    field: str | None = None
    rule: str
    valid_values: list[Any] | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
