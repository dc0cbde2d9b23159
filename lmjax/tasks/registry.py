"""Tasks by name: `config.task` picks one (the interface they share: lmjax/tasks/base.py)."""

from __future__ import annotations

from lmjax.registry import TASKS
from lmjax.tasks.base import Task


def get_task(name: str) -> type[Task]:
  return TASKS.get(name)
