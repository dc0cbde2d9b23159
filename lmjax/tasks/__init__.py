"""Objectives by name: a task builds its model and its data, defines loss and eval sums on a batch."""

from lmjax.tasks.registry import get_task, TASK_REGISTRY

__all__ = ["get_task", "TASK_REGISTRY"]
