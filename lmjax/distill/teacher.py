"""The teacher: a finished (or running) lmjax run, opened read-only. Everything about it is checked before the
student compiles, each problem one line naming the field to fix.

It is a frozen run (lmjax/frozen_run.py, shared with DPO's reference model): its parameters are restored straight
into the shardings the student's logical-axis rules give them (every device reads only its own shards) and are
never part of the student's train state: they are reloaded from the teacher's workdir each time the student's run
starts or resumes.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import ml_collections
from absl import logging

from lmjax import frozen_run
from lmjax.config import ConfigError
from lmjax.distill.heads import HEADS
from lmjax.frozen_run import FrozenRun
from lmjax.models import family
from lmjax.registry import ATTENTION, TASKS
from lmjax.tasks.base import VocabInfo


@dataclasses.dataclass(frozen=True)
class Teacher(FrozenRun):
  """The frozen teacher run (its model, step, parameter shapes and axes) and how its outputs are read."""
  heads: Any = None  # lmjax/distill/heads.py, from the teacher's own config


def _fail(field: str, value: Any, why: str) -> None:
  raise ConfigError(f"config.distill.{field}={value!r}: {why}")


def parse_layer_pairs(text: str) -> list[tuple[int, int]]:
  """distill.layer_pairs: '1:0, 3:1' -> [(1, 0), (3, 1)], (teacher block, student block); '' -> []."""
  pairs = []
  for part in (p.strip() for p in text.split(",")):
    if part:
      teacher, student = (int(x) for x in part.split(":"))
      if teacher < 0 or student < 0:
        raise ValueError(part)
      pairs.append((teacher, student))
  return pairs


def open_teacher(config: ml_collections.ConfigDict, base_class: Any) -> Teacher:
  """The run at distill.teacher_workdir as a teacher for this config's student; `base_class` is the task class of
  the objective being distilled (its `create` builds the teacher's model from the teacher's own config)."""
  k = config.distill
  run = frozen_run.open_saved("distill.teacher_workdir", k.teacher_workdir)
  t = run.config
  base = base_class.registered_name
  if TASKS.get(t.task).objective() != base:
    _fail("teacher_workdir", k.teacher_workdir, f"the teacher trained task={t.task!r}, but task={config.task!r} "
          f"distils a {base!r} model; give a {base!r} run")
  if not run.steps:
    _fail("teacher_workdir", k.teacher_workdir, "has no checkpoint; train the teacher first")
  step = frozen_run.pick_step(run, "distill.teacher_workdir", "distill.teacher_step", k.teacher_step)
  teacher_family = family(t.model.name)
  context = teacher_family.max_context(t.model)
  if context is not None and config.data.seq_len > context:
    _fail("teacher_workdir", k.teacher_workdir, f"the teacher's positions (model.position={t.model.position!r}) stop "
          f"at model.max_len={context} but the student reads data.seq_len={config.data.seq_len}; lower "
          f"data.seq_len")
  for teacher_layer, _ in parse_layer_pairs(k.layer_pairs):
    if not teacher_family.sows_layers or teacher_layer >= t.model.num_layers:
      _fail("layer_pairs", k.layer_pairs, f"teacher block {teacher_layer} does not exist: the teacher is a "
            f"{t.model.num_layers}-layer {t.model.name!r} model")
  data = {}
  if base == "classification":
    if t.finetune.regression:
      _fail("teacher_workdir", k.teacher_workdir, "the teacher is a regression model (finetune.regression=True) with "
            "no class distribution to distil; give a classification run")
    # Its class count is in its checkpoint: a run that read its labels from the data has no finetune.labels.
    shapes = frozen_run.saved_shapes(run, step)
    data["data"] = types.SimpleNamespace(num_outputs=shapes["['classifier']['kernel']"][-1])
  if k.attention_weight > 0 and not ATTENTION.get(t.model.attention_impl).probs:
    # The teacher's attention maps are matched: it runs the reference, which returns them (same function).
    logging.info("Teacher: model.attention_impl=%r returns no attention maps; the teacher runs 'xla'.",
                 t.model.attention_impl)
    t = ml_collections.ConfigDict(t.to_dict())
    t.model.attention_impl = "xla"
  task = base_class.create(t, VocabInfo(run.tokenizer.vocab_size), **data)
  frozen = frozen_run.open_frozen(run, step, task.model, task.init_args())
  # The teacher's logits come as the student's do (whole, or as hidden states for a chunked loss).
  return Teacher(**{f.name: getattr(frozen, f.name) for f in dataclasses.fields(frozen)},
                 heads=HEADS[base].from_config(t, config.train.loss_chunk_tokens))


def check_tokenizer(config: ml_collections.ConfigDict, teacher: Teacher, tokenizer: Any) -> None:
  """Token ids must mean the same in both models, or matching their distributions means nothing."""
  del config
  frozen_run.check_tokenizer("distill.teacher_workdir", teacher.run, tokenizer, "the teacher")


def restore_params(teacher: Teacher, shardings: Any) -> Any:
  """The teacher's parameters at its step, each array restored directly into its sharding."""
  return frozen_run.restore(teacher, shardings, "distill.teacher_workdir")
