"""Inputs the state machine and EventBridge hand to the orchestration functions, parsed with pydantic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskrunner.models import CONTAINER_NAME
from taskrunner.observation import TaskObservation
from taskrunner.service import Outcome


class WorkflowError(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    error: str | None = Field(None, alias="Error")
    cause: str | None = Field(None, alias="Cause")


class FinalizeInput(BaseModel):
    """What the state machine's Finalize* states pass to the finalize function."""

    task_id: str
    outcome: Outcome
    ecs_task: dict[str, Any] | None = None
    error: WorkflowError | None = None

    def observation(self) -> TaskObservation | None:
        if self.ecs_task:
            return TaskObservation.from_description(self.ecs_task, CONTAINER_NAME)
        if self.error is not None:
            return TaskObservation.from_error_cause(self.error.cause, CONTAINER_NAME)
        return None

    def reason(self) -> str | None:
        """A readable reason for errors that carry no ECS task description."""
        if self.error is None or self.observation() is not None:
            return None
        text = f"{self.error.error or 'Error'}: {self.error.cause or ''}".strip().rstrip(":")
        return text[:1000]


class StopTaskInput(BaseModel):
    task_id: str


class QueueInput(BaseModel):
    """What the state machine's WaitForSlot state passes to the queue function: the queued task, and the task token
    a dispatch completes once the task holds a slot."""

    action: Literal["wait"]
    task_id: str
    token: str = Field(min_length=1, max_length=2048)
