"""Tasks by name: `config.task` picks one (the interface they share: lmjax/tasks/base.py)."""

from __future__ import annotations

from lmjax.tasks.causal_lm import CausalLmTask
from lmjax.tasks.classification import ClassificationTask
from lmjax.tasks.distill import DISTILL_TASK_CLASSES
from lmjax.tasks.mlm import MlmTask
from lmjax.tasks.qa import QaTask
from lmjax.tasks.seq2seq import Seq2seqTask
from lmjax.tasks.tagging import TaggingTask

TASK_REGISTRY = {
    "causal_lm": CausalLmTask,
    "mlm": MlmTask,
    "classification": ClassificationTask,
    "tagging": TaggingTask,
    "qa": QaTask,
    "seq2seq": Seq2seqTask,
    **DISTILL_TASK_CLASSES,
}


def get_task(name: str):
  if name not in TASK_REGISTRY:
    raise ValueError(f"config.task={name!r} is unknown; choose one of {', '.join(TASK_REGISTRY)}.")
  return TASK_REGISTRY[name]
