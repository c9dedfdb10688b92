"""Typed domain errors. The API maps them to HTTP once, at the edge; the state machine matches by name."""

from __future__ import annotations

from collections.abc import Iterable


class TaskRunnerError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "TASKRUNNER_ERROR"


class TaskNotFound(TaskRunnerError):
    code = "TASK_NOT_FOUND"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} does not exist")
        self.task_id = task_id


class TaskAlreadyExists(TaskRunnerError):
    code = "TASK_ALREADY_EXISTS"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} already exists")
        self.task_id = task_id


class TaskAlreadyTerminal(TaskRunnerError):
    code = "TASK_ALREADY_TERMINAL"

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id!r} is already {status} and cannot change")
        self.task_id = task_id
        self.status = status


class StaleStatus(TaskRunnerError):
    """A conditional write lost a race: the stored status was not the one the writer saw."""

    code = "STALE_STATUS"


class InvalidParameter(TaskRunnerError):
    """A query parameter or token that breaks a rule (422 at the edge)."""

    code = "VALIDATION_ERROR"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class OrchestrationUnavailable(TaskRunnerError):
    """The workflow engine refused to start an execution; the task was marked FAILED."""

    code = "ORCHESTRATION_UNAVAILABLE"


class ScheduleNotFound(TaskRunnerError):
    code = "SCHEDULE_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} does not exist")


class ScheduleAlreadyExists(TaskRunnerError):
    code = "SCHEDULE_ALREADY_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} already exists")


class Unauthenticated(TaskRunnerError):
    """The request carries no valid credentials: no API key, or one that is unknown, expired, revoked or of a
    disabled tenant. `reason` says which, never echoing the key."""

    code = "UNAUTHENTICATED"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Authentication failed: {reason}. Send `Authorization: Bearer <api key>`.")
        self.reason = reason


class Forbidden(TaskRunnerError):
    code = "FORBIDDEN"

    def __init__(self, action: str) -> None:
        super().__init__(f"Only an admin may {action}")


class TenantNotFound(TaskRunnerError):
    code = "TENANT_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"tenant {name!r} does not exist")
        self.name = name


class TenantAlreadyExists(TaskRunnerError):
    code = "TENANT_ALREADY_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(f"tenant {name!r} already exists")
        self.name = name


class TenantDisabled(TaskRunnerError):
    """Work for a disabled tenant (a scheduled run, say) that no API key brought in."""

    code = "TENANT_DISABLED"

    def __init__(self, name: str) -> None:
        super().__init__(f"tenant {name!r} is disabled")
        self.name = name


class AdminTenantCannotBeDisabled(TaskRunnerError):
    code = "ADMIN_TENANT_CANNOT_BE_DISABLED"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"tenant {name!r} is the admin tenant (the deployment's admin keys belong to it) and cannot be disabled"
        )


class ApiKeyNotFound(TaskRunnerError):
    code = "API_KEY_NOT_FOUND"

    def __init__(self, tenant: str, key_id: str) -> None:
        super().__init__(f"tenant {tenant!r} has no API key {key_id!r} that still works")


class UnknownPriceRegion(TaskRunnerError):
    """The price table has no Fargate rates for the region the function runs in. Raised when a function builds its
    TaskService (its cold start), so a deployment in a region without prices fails before it meters anything."""

    code = "UNKNOWN_PRICE_REGION"

    def __init__(self, region: str, known: Iterable[str]) -> None:
        self.region = region
        self.known = tuple(sorted(known))
        super().__init__(
            f"no Fargate prices for region {region!r}; the price table knows {', '.join(self.known) or 'none'}. "
            "Add the region's rates (Linux/x86 and Linux/ARM per vCPU-hour and per GB-hour, ephemeral storage per "
            "GB-hour, with their source and date) with the PriceTableJson template parameter (environment variable "
            'PRICE_TABLE_JSON): {"regions": {"' + region + '": {"x86_64": {"vcpu_hour": "...", "gib_hour": "..."}, '
            '"arm64": {...}, "ephemeral_storage_gib_hour": "...", "source": "...", "as_of": "YYYY-MM-DD"}}}'
        )


class InvalidPriceTable(TaskRunnerError):
    """PRICE_TABLE_JSON or FARGATE_SPOT_DISCOUNT_PERCENT is malformed; the message names the variable and the fault."""

    code = "INVALID_PRICE_TABLE"

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        parameter = {
            "PRICE_TABLE_JSON": "PriceTableJson",
            "FARGATE_SPOT_DISCOUNT_PERCENT": "FargateSpotDiscountPercent",
        }
        where = f"{variable} (template parameter {parameter[variable]})" if variable in parameter else variable
        super().__init__(f"{where} is invalid: {problem}")
