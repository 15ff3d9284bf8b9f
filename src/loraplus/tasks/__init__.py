"""Tasks as plug-ins: one module per task implementing ``loraplus.tasks.base.Task``, one line each in ``TASKS``."""

from __future__ import annotations

from .base import Task, TrainerParts, limit_samples
from .causal_lm import CausalLMTask
from .classification import ClassificationTask
from .sft import SFTTask

__all__ = ["TASKS", "Task", "TrainerParts", "get_task", "limit_samples", "task_for_peft_type"]

TASKS: dict[str, Task] = {task.name: task for task in (ClassificationTask(), CausalLMTask(), SFTTask())}


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_for_peft_type(task_type: str | None) -> Task | None:
    """The first task whose PEFT ``task_type`` is ``task_type`` (``SEQ_CLS``, ``CAUSAL_LM``), or None (loading a
    plain adapter only needs the model class, which the tasks of one ``task_type`` share)."""
    return next((task for task in TASKS.values() if task.peft_task_type == task_type), None)
