"""Objectives by name: a task builds its model and its data, defines loss and eval sums on a batch.

Every module of this package is imported here, so each task (registered with `@TASKS.register` next to its class,
with its config section beside it) is available by `config.task` as soon as lmjax is imported; adding one is adding
one file (docs/extending.md).
"""

import importlib
import pkgutil

from lmjax.tasks.registry import get_task

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["get_task"]
