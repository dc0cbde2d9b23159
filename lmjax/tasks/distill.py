"""Knowledge distillation: a student (this config's model) learns a frozen teacher run's distribution.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * base loss on the labels
           + distill.hidden_weight * MSE(student hidden @ W, teacher hidden)   (at distill.layer_pairs)
           + distill.attention_weight * KL(teacher attention || student attention)

The task wraps a base objective (task='distill_lm': causal_lm; 'distill_mlm': mlm; 'distill_classification':
classification) and distils every logits head its model produces (lmjax/distill/heads.py): next-token logits,
masked-LM plus next-sentence logits, or class logits. Each term is
a mean over the positions the base loss averages over, so gradient accumulation behaves as for the base task.
Data, batches and eval metrics are the base task's; eval adds `teacher_kl`, KL(teacher || student) at T = 1.

The teacher (distill.teacher_workdir, any config of the same objective and tokenizer) runs inside the same jitted
step, deterministic and without gradients. Its parameters reach the step as a jit argument (the trainer's
`frozen` argument: see tasks/base.py), sharded by the same logical-axis rules, outside the optimizer and outside
the student's checkpoints. With distill.offline_logits_dir the teacher does not run at all: batches carry its
precomputed top-k logits (lmjax/distill/offline.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from lmjax import sharding
from lmjax.config import DISTILL_TASKS, ConfigError, parse_layer_pairs, parse_student_layers
from lmjax.distill import layers as layer_init
from lmjax.distill import losses, offline
from lmjax.distill.heads import HEADS
from lmjax.distill.student import PROJECTION, StudentWithProjections, layer_intermediates
from lmjax.distill.teacher import Teacher, check_tokenizer, open_teacher, restore_params
from lmjax.tasks.base import Batch
from lmjax.tasks.causal_lm import CausalLmTask
from lmjax.tasks.classification import ClassificationTask
from lmjax.tasks.mlm import MlmTask

BASE_TASKS = {"causal_lm": CausalLmTask, "mlm": MlmTask, "classification": ClassificationTask}
_EVAL_KEYS = ("teacher_kl_sum", "teacher_kl_weight")


@dataclasses.dataclass(frozen=True)
class DistillData:
  """The base task's data; in offline mode its train batches also carry the stored teacher logits."""
  config: ml_collections.ConfigDict
  base: Any  # the base task's TaskData
  store: offline.TopKStore | None

  @property
  def summary(self) -> str:
    return self.base.summary

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    dataset = self.base.train_dataset(process_index, process_count)
    if self.store is None:
      return dataset
    return offline.with_top_k(dataset, self.store, self.config.train.batch_size, process_index, process_count)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    return self.base.eval_sets(process_index, process_count)

  @property
  def score(self):
    """The base data's metrics from predictions (a classifier's F1, MCC); AttributeError where it has none, so the
    trainer then scores nothing, as for the base task."""
    return self.base.score


@dataclasses.dataclass(frozen=True)
class DistillTask:
  """A base task (its student model, batches, metrics) plus the teacher and the distillation settings."""
  base: Any  # the base task instance: the student model, eval statistics, summaries
  model: Any  # what the trainer initializes: the student, or the student with hidden-state projections
  config: ml_collections.ConfigDict
  teacher: Teacher | None
  base_name: ClassVar[str]
  generates_text: ClassVar[bool]

  # --- building -------------------------------------------------------------------------------------------------

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Any, data_dir: Path) -> DistillData:
    """The tokenizer checks happen here, before the trainer builds or compiles anything."""
    base_class = BASE_TASKS[cls.base_name]
    k = config.distill
    if k.teacher_workdir:
      check_tokenizer(config, open_teacher(config, base_class), tokenizer)
    store = None
    if k.offline_logits_dir:
      store = offline.open_store(k.offline_logits_dir)
      store.check(config, tokenizer)
    return DistillData(config, base_class.prepare_data(config, tokenizer, data_dir), store)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab_size: int, *, data: DistillData | None = None,
             **vocab_stats: Any) -> "DistillTask":
    """`data` (None when compiling without data) is unwrapped for base tasks that size their model from it."""
    base = BASE_TASKS[cls.base_name].create(config, vocab_size, data=None if data is None else data.base,
                                            **vocab_stats)
    teacher = open_teacher(config, BASE_TASKS[cls.base_name]) if config.distill.teacher_workdir else None
    if teacher is not None and teacher.run.tokenizer.vocab_size != vocab_size:
      raise ConfigError(f"config.distill.teacher_workdir={config.distill.teacher_workdir!r}: the teacher has "
                        f"{teacher.run.tokenizer.vocab_size} tokens, the student {vocab_size}; they must share one "
                        f"tokenizer")
    classes = getattr(base.model, "num_outputs", None)
    if teacher is not None and classes is not None and teacher.model.num_outputs != classes:
      raise ConfigError(f"config.distill.teacher_workdir={config.distill.teacher_workdir!r}: the teacher has "
                        f"{teacher.model.num_outputs} classes, the student {classes}; give a teacher trained on the "
                        f"same label set (finetune.labels)")
    model = base.model
    widths = tuple((config.model.d_model, teacher.config.model.d_model)
                   for _ in parse_layer_pairs(config.distill.layer_pairs)) if teacher is not None else ()
    if config.distill.hidden_weight > 0 and any(a != b for a, b in widths):
      model = StudentWithProjections(base.model, widths, config.model.init_std, config.model.param_dtype)
    return cls(base, model, config, teacher)

  def init_args(self, config: ml_collections.ConfigDict) -> tuple[jax.Array, ...]:
    return self.base.init_args(config)

  def abstract_batch(self, config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = self.base.abstract_batch(config, batch_size)
    if config.distill.offline_logits_dir:
      store = offline.open_store(config.distill.offline_logits_dir)
      for head, info in store.heads.items():
        shape = (batch_size, *info["shape"][1:])
        shapes[offline.batch_key(head, "values")] = jax.ShapeDtypeStruct(shape, jnp.float16)
        shapes[offline.batch_key(head, "indices")] = jax.ShapeDtypeStruct(shape, jnp.dtype(info["index_dtype"]))
    return shapes

  @property
  def param_groups(self):
    """The base task's groups (finetune.freeze_layers, head_lr_multiplier); AttributeError where it has none."""
    return self.base.param_groups

  # --- the trainer's frozen-parameter hooks (tasks/base.py) -------------------------------------------------------

  @property
  def online(self) -> bool:
    return self.teacher is not None and not self.config.distill.offline_logits_dir

  def frozen_spec(self) -> tuple[Any, Any] | None:
    """The teacher's parameter shapes and logical axes when it runs inside the step; None in offline mode."""
    return (self.teacher.abstract, self.teacher.axes) if self.online else None

  def load_frozen(self, shardings: Any) -> Any:
    logging.info("Teacher: %s at step %d (%s, %d layers, width %d).", self.teacher.run.workdir, self.teacher.step,
                 self.teacher.config.model.name, self.teacher.config.model.num_layers,
                 self.teacher.config.model.d_model)
    return restore_params(self.teacher, shardings)

  def initial_params(self, params: Any, frozen: Any = None) -> Any:
    """A fresh student's parameters: with distill.init_student_layers, its blocks copied from the teacher's."""
    spec = self.config.distill.init_student_layers
    if not spec:
      return params
    layers = parse_student_layers(spec, self.config.model.num_layers)
    if max(layers) >= self.teacher.config.model.num_layers:
      raise ConfigError(f"config.distill.init_student_layers={spec!r}: the teacher has only "
                        f"{self.teacher.config.model.num_layers} layers")
    layer_init.check_shapes(params, self.teacher.abstract, layers)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    if frozen is None:  # offline: the teacher is read only for this
      mesh = jax.tree_util.tree_leaves(shardings)[0].mesh
      frozen = restore_params(self.teacher, sharding.tree_shardings(
          self.teacher.abstract, self.teacher.axes, mesh, sharding.logical_rules(self.config.mesh)))
    logging.info("Student layers start from teacher layers %s.", layers)
    copy = lambda student, teacher: layer_init.from_teacher(student, teacher, layers)
    return jax.jit(copy, out_shardings=shardings)(params, frozen)

  # --- the loss -----------------------------------------------------------------------------------------------------

  @property
  def _heads(self):
    return HEADS[self.base_name]

  @property
  def _records(self) -> bool:
    k = self.config.distill
    return self.online and (k.hidden_weight > 0 or k.attention_weight > 0)

  def _teacher(self, frozen: Any, batch) -> tuple[Any, Any]:
    out, inter = self._heads.run(self.teacher.model, frozen, batch, deterministic=True, record=self._records)
    return jax.lax.stop_gradient(out), jax.lax.stop_gradient(inter)

  def _kd(self, student_heads, batch, frozen, teacher_heads) -> jax.Array:
    """sum over heads of the mean KL at temperature T (unscaled)."""
    T = self.config.distill.temperature
    total = jnp.zeros((), jnp.float32)
    for name, (logits, weights) in student_heads.items():
      if frozen is not None and name in teacher_heads:
        kl = losses.soft_kl(logits, teacher_heads[name][0], T)
      elif frozen is None and offline.batch_key(name, "values") in batch:
        kl = losses.top_k_kl(logits, batch[offline.batch_key(name, "values")],
                             batch[offline.batch_key(name, "indices")], T)
      else:
        continue
      total = total + losses.weighted_mean(kl, weights)
    return total

  def _layer_terms(self, params, batch, student_inter, teacher_inter) -> dict[str, jax.Array]:
    k = self.config.distill
    weights_BL = (batch["segment_ids"] > 0).astype(jnp.float32)
    hidden, attention = [], []
    for j, (t_layer, s_layer) in enumerate(parse_layer_pairs(k.layer_pairs)):
      s, t = layer_intermediates(student_inter, s_layer), layer_intermediates(teacher_inter, t_layer)
      if k.hidden_weight > 0:
        h_BLD = s["hidden"][0]
        if PROJECTION.format(j) in params:
          h_BLD = h_BLD @ params[PROJECTION.format(j)].astype(h_BLD.dtype)
        hidden.append(losses.weighted_mean(losses.hidden_mse(h_BLD, t["hidden"][0]), weights_BL))
      if k.attention_weight > 0:
        attention.append(losses.weighted_mean(losses.attention_kl(s["attn"]["probs"][0], t["attn"]["probs"][0]),
                                              weights_BL))
    out = {}
    if hidden:
      out["hidden_loss"] = sum(hidden) / len(hidden)
    if attention:
      out["attention_loss"] = sum(attention) / len(attention)
    return out

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    k, H = self.config.distill, self._heads
    out, student_inter = H.run(self.base.model, params, batch, deterministic=False, rng=rng, record=self._records)
    hard, aux, tokens = H.hard_loss(out, batch, self.config)
    teacher_heads, teacher_inter = {}, None
    if frozen is not None:
      teacher_out, teacher_inter = self._teacher(frozen, batch)
      teacher_heads = H.heads(teacher_out, batch, self.teacher.config)
    kd = self._kd(H.heads(out, batch, self.config), batch, frozen, teacher_heads)
    loss = k.alpha * k.temperature ** 2 * kd + (1.0 - k.alpha) * hard
    aux = {**aux, "kd_loss": kd, "ce_loss": hard}
    if self._records:
      terms = self._layer_terms(params, batch, student_inter, teacher_inter)
      loss = loss + k.hidden_weight * terms.get("hidden_loss", 0.0) + k.attention_weight * terms.get(
          "attention_loss", 0.0)
      aux |= terms
    return loss, {**aux, "loss": loss, "tokens": tokens}

  # --- evaluation ---------------------------------------------------------------------------------------------------

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    """The base task's statistics, plus the KL from the teacher at T = 1 on the first head (next token, or masked
    token) when the teacher runs in the step."""
    sums = self.base.eval_sums(params, batch)
    if frozen is not None:
      H = self._heads
      name, (logits, weights) = next(iter(H.heads(H.run(self.base.model, params, batch, deterministic=True)[0],
                                                  batch, self.config).items()))
      teacher_logits = H.heads(self._teacher(frozen, batch)[0], batch, self.teacher.config)[name][0]
      sums["teacher_kl_sum"] = (losses.soft_kl(logits, teacher_logits, 1.0) * weights).sum()
      sums["teacher_kl_weight"] = weights.sum().astype(jnp.float32)
    return sums

  @property
  def predict(self):
    """The base task's per-example predictions (params, batch, frozen=None), so `data.score` reports its metrics
    (accuracy, F1, MCC) for the student; AttributeError where the base task has no `predict`, so the trainer then
    builds no predict step. The teacher's parameters, which the step passes on, play no part in them."""
    base_predict = self.base.predict
    return lambda params, batch, frozen=None: base_predict(params, batch)

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    out = self.base.summarize({key: v for key, v in sums.items() if key not in _EVAL_KEYS})
    if "teacher_kl_weight" in sums:
      out["teacher_kl"] = sums["teacher_kl_sum"] / max(sums["teacher_kl_weight"], 1.0)
    return out


class DistillLmTask(DistillTask):
  base_name: ClassVar[str] = "causal_lm"
  generates_text: ClassVar[bool] = True


class DistillMlmTask(DistillTask):
  base_name: ClassVar[str] = "mlm"
  generates_text: ClassVar[bool] = False


class DistillClassificationTask(DistillTask):
  base_name: ClassVar[str] = "classification"
  generates_text: ClassVar[bool] = False


DISTILL_TASK_CLASSES = {"distill_lm": DistillLmTask, "distill_mlm": DistillMlmTask,
                        "distill_classification": DistillClassificationTask}
assert set(DISTILL_TASK_CLASSES) == set(DISTILL_TASKS)
