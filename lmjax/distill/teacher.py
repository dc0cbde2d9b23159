"""The teacher: a finished (or running) lmjax run, opened read-only. Everything about it is checked before the
student compiles, each problem one line naming the field to fix.

Its parameters are restored straight into the shardings the student's logical-axis rules give them (every device
reads only its own shards) and are never part of the student's train state: they are reloaded from the teacher's
workdir each time the student's run starts or resumes.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import jax
import ml_collections
from absl import logging

from lmjax.config import ConfigError
from lmjax.distill.heads import HEADS
from lmjax.models import family
from lmjax.registry import ATTENTION, TASKS
from lmjax.saved_run import RunError, SavedRun, open_run, quiet_orbax
from lmjax.state import abstract_params
from lmjax.tasks.base import VocabInfo


@dataclasses.dataclass(frozen=True)
class Teacher:
  run: SavedRun
  step: int
  model: Any  # the teacher's Flax module
  abstract: Any  # its parameters' ShapeDtypeStructs
  axes: Any  # and logical PartitionSpecs
  heads: Any  # how its outputs are read (lmjax/distill/heads.py), from its own config

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config


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
  try:
    run = open_run(k.teacher_workdir)
  except RunError as e:
    raise ConfigError(f"config.distill.teacher_workdir: {e}") from None
  t = run.config
  base = base_class.registered_name
  if TASKS.get(t.task).objective() != base:
    _fail("teacher_workdir", k.teacher_workdir, f"the teacher trained task={t.task!r}, but task={config.task!r} "
          f"distils a {base!r} model; give a {base!r} run")
  steps = run.steps
  if not steps:
    _fail("teacher_workdir", k.teacher_workdir, "has no checkpoint; train the teacher first")
  if k.teacher_step and k.teacher_step not in steps:
    _fail("teacher_step", k.teacher_step, f"the teacher has no checkpoint there (steps: {', '.join(map(str, steps))});"
          f" use 0 for its latest")
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
  step = k.teacher_step or steps[-1]
  data = {}
  if base == "classification":
    if t.finetune.regression:
      _fail("teacher_workdir", k.teacher_workdir, "the teacher is a regression model (finetune.regression=True) with "
            "no class distribution to distil; give a classification run")
    # Its class count is in its checkpoint: a run that read its labels from the data has no finetune.labels.
    data["data"] = types.SimpleNamespace(num_outputs=_saved_shapes(run, step)["['classifier']['kernel']"][-1])
  if k.attention_weight > 0 and not ATTENTION.get(t.model.attention_impl).probs:
    # The teacher's attention maps are matched: it runs the reference, which returns them (same function).
    logging.info("Teacher: model.attention_impl=%r returns no attention maps; the teacher runs 'xla'.",
                 t.model.attention_impl)
    t = ml_collections.ConfigDict(t.to_dict())
    t.model.attention_impl = "xla"
  task = base_class.create(t, VocabInfo(run.tokenizer.vocab_size), **data)
  abstract, axes = abstract_params(task.model, task.init_args())
  # The teacher's logits come as the student's do (whole, or as hidden states for a chunked loss).
  heads = HEADS[base].from_config(t, config.train.loss_chunk_tokens)
  return Teacher(run, step, task.model, abstract, axes, heads)


def check_tokenizer(config: ml_collections.ConfigDict, teacher: Teacher, tokenizer: Any) -> None:
  """Token ids must mean the same in both models, or matching their distributions means nothing."""
  theirs = teacher.run.tokenizer
  if theirs.vocab_size != tokenizer.vocab_size or theirs.fingerprint() != tokenizer.fingerprint():
    raise ConfigError(
        f"config.distill.teacher_workdir={config.distill.teacher_workdir!r}: the teacher's tokenizer ({theirs.kind}, "
        f"{theirs.vocab_size} tokens, fingerprint {theirs.fingerprint()[:12]}) differs from this run's "
        f"({tokenizer.kind}, {tokenizer.vocab_size} tokens, {tokenizer.fingerprint()[:12]}); use the teacher's "
        f"tokenizer settings and training data (or copy its tokenizer/ directory into this workdir)")


def _state_path(run: SavedRun, step: int) -> Any:
  return (run.workdir / "checkpoints" / str(step) / "state").absolute()  # Orbax wants absolute paths


def _saved_shapes(run: SavedRun, step: int) -> dict[str, tuple[int, ...]]:
  """{keystr path: shape} of the parameters in a checkpoint, read from its metadata (no array is loaded)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with quiet_orbax(), ocp.StandardCheckpointer() as reader:
    saved = reader.metadata(_state_path(run, step)).item_metadata["params"]
  return {jax.tree_util.keystr(p): m.shape for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}


def restore_params(teacher: Teacher, shardings: Any) -> Any:
  """The teacher's parameters at its step, each array restored directly into its sharding."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = _state_path(teacher.run, teacher.step)
  flat_saved = _saved_shapes(teacher.run, teacher.step)
  for p, want in jax.tree_util.tree_flatten_with_path(teacher.abstract)[0]:
    name = jax.tree_util.keystr(p)
    if flat_saved.get(name) != want.shape:
      raise ConfigError(f"config.distill.teacher_workdir={str(teacher.run.workdir)!r}: parameter {name} is "
                        f"{flat_saved.get(name, 'missing')} in checkpoint {teacher.step} but {want.shape} in the model "
                        f"its config.json describes; the run's config and checkpoints disagree")
  target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), teacher.abstract,
                                  shardings)
  restore_args = jax.tree_util.tree_map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
  with quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(path, args=ocp.args.PyTreeRestore(item={"params": target},
                                                                  restore_args={"params": restore_args},
                                                                  partial_restore=True))
  return restored["params"]
