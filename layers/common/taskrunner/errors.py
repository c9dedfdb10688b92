"""Typed domain errors. The API maps them to HTTP once, at the edge; the state machine matches by name."""

from __future__ import annotations


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
