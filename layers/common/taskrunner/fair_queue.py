"""The fair queue's rules: what a tenant may have in flight, whether a task fits, and what a task is told when it
waits too long. No I/O here: the store applies these rules in DynamoDB transactions (taskrunner.adapters), the
service decides with them (taskrunner.service).

A task holds a slot of its tenant's quota from admission until its metering record is written: the tenant's
counters (running_tasks, running_cpu in CPU units, running_memory in MiB) count it. A task that does not fit when
it is submitted, or that arrives while others wait, waits in QUEUED (queued_tasks counts it) until a dispatch
grants it a slot: oldest first, stopping at the first task that does not fit (first in, first out, no skipping).
Each tenant's queue is dispatched against its own quota only, so one tenant's backlog never delays another's tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from taskrunner.errors import InvalidParameter
from taskrunner.models import Slot, TaskSpec
from taskrunner.tenants import Quotas

CPU_UNITS_PER_VCPU = 1024
MIB_PER_GIB = 1024
#: the counters on the tenant item, by the name of the TenantLoad field that holds each
COUNTERS = ("running_tasks", "running_cpu", "running_memory", "queued_tasks")


def cpu_limit(quotas: Quotas) -> int | None:
    """The tenant's vCPU quota in CPU units (a fraction of a unit left over counts for nothing)."""
    return None if quotas.max_vcpu is None else math.floor(quotas.max_vcpu * CPU_UNITS_PER_VCPU + 1e-6)


def memory_limit(quotas: Quotas) -> int | None:
    """The tenant's memory quota in MiB."""
    return None if quotas.max_memory_gib is None else math.floor(quotas.max_memory_gib * MIB_PER_GIB + 1e-6)


@dataclass(frozen=True)
class TenantLoad:
    """A tenant's quotas, whether it is enabled, and its counters, as read from its item.

    `quotas_as_read` is the stored quota attribute exactly as it was read (None: the item has none): admission and
    grants are conditioned on it, so that a quota changed meanwhile makes them read the tenant again rather than
    admit against a quota that no longer holds."""

    tenant: str
    enabled: bool = True
    quotas: Quotas = field(default_factory=Quotas)
    running_tasks: int = 0
    running_cpu: int = 0
    running_memory: int = 0
    queued_tasks: int = 0
    quotas_as_read: Any = None

    def fits(self, slot: Slot) -> bool:
        """Whether one more task of `slot` stays within every quota."""
        limits = (
            (self.quotas.max_running_tasks, self.running_tasks + 1),
            (cpu_limit(self.quotas), self.running_cpu + slot.cpu),
            (memory_limit(self.quotas), self.running_memory + slot.memory),
        )
        return all(limit is None or wanted <= limit for limit, wanted in limits)

    def admits(self, slot: Slot) -> bool:
        """Whether a newcomer of `slot` may start at once: it fits, and nobody waits (no newcomer jumps the queue)."""
        return self.queued_tasks <= 0 and self.fits(slot)

    def with_slot(self, slot: Slot, *, from_queue: bool) -> TenantLoad:
        """The load once `slot` is granted (to a queued task when `from_queue`)."""
        return TenantLoad(
            tenant=self.tenant,
            enabled=self.enabled,
            quotas=self.quotas,
            running_tasks=self.running_tasks + 1,
            running_cpu=self.running_cpu + slot.cpu,
            running_memory=self.running_memory + slot.memory,
            queued_tasks=self.queued_tasks - (1 if from_queue else 0),
            quotas_as_read=self.quotas_as_read,
        )

    def counters(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in COUNTERS}

    def in_flight(self) -> str:
        """What the tenant has in flight against its quotas, for reasons: `2 of max_running_tasks=2 tasks, ...`."""
        parts = [f"{self.running_tasks} task(s) holding slots"]
        if self.quotas.max_running_tasks is not None:
            parts[0] = f"{self.running_tasks} of max_running_tasks={self.quotas.max_running_tasks} tasks"
        if self.quotas.max_vcpu is not None:
            parts.append(
                f"{_number(self.running_cpu / CPU_UNITS_PER_VCPU)} of max_vcpu={_number(self.quotas.max_vcpu)}"
            )
        if self.quotas.max_memory_gib is not None:
            gib = self.running_memory / MIB_PER_GIB
            parts.append(f"{_number(gib)} of max_memory_gib={_number(self.quotas.max_memory_gib)} GiB")
        return ", ".join(parts)


def quotas_from_item(raw: Any) -> Quotas:
    """The quotas of a tenant item's `quotas` attribute (deserialized): a missing or null limit is no limit."""
    if not isinstance(raw, dict):
        return Quotas()
    known = {name: raw.get(name) for name in Quotas.model_fields}
    return Quotas.model_validate({name: value for name, value in known.items() if value is not None})


def larger_than_whole_quota(tenant: str, quotas: Quotas, spec: TaskSpec) -> InvalidParameter | None:
    """The 422 for a task that could never fit its tenant's quota, even with nothing else in flight, or None."""
    cpu, memory = cpu_limit(quotas), memory_limit(quotas)
    if cpu is not None and spec.cpu > cpu:
        return InvalidParameter(
            "cpu",
            f"{spec.cpu} CPU units ({_number(spec.cpu / CPU_UNITS_PER_VCPU)} vCPU) is more than tenant {tenant}'s "
            f"whole quota max_vcpu={_number(quotas.max_vcpu)}",
        )
    if memory is not None and spec.memory > memory:
        return InvalidParameter(
            "memory",
            f"{spec.memory} MiB ({_number(spec.memory / MIB_PER_GIB)} GiB) is more than tenant {tenant}'s whole "
            f"quota max_memory_gib={_number(quotas.max_memory_gib)}",
        )
    return None


def queue_timeout_reason(waited_seconds: int, load: TenantLoad) -> str:
    """The status reason of a task that waited in the queue until its queue_timeout_seconds ran out."""
    return (
        f"Timed out after {waited_seconds} s in the queue, waiting for tenant {load.tenant}'s quota "
        f"({load.in_flight()}; {max(load.queued_tasks - 1, 0)} other task(s) waiting)"
    )


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


__all__ = [
    "COUNTERS",
    "TenantLoad",
    "cpu_limit",
    "larger_than_whole_quota",
    "memory_limit",
    "queue_timeout_reason",
    "quotas_from_item",
]
