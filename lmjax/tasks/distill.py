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
from typing import Any, ClassVar, Iterable

import grain
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from lmjax import config as config_lib
from lmjax import sharding
from lmjax.config import ConfigError
from lmjax.distill import layers as layer_init
from lmjax.distill import losses, offline
from lmjax.distill.heads import HEADS
from lmjax.distill.student import layer_intermediates
from lmjax.models.student_projections import PROJECTION, StudentWithProjections
from lmjax.distill.teacher import Teacher, check_tokenizer, open_teacher, parse_layer_pairs, restore_params
from lmjax.models import family
from lmjax.models.base import ModelConfig
from lmjax.models.vocab_head import token_stats
from lmjax.registry import ATTENTION, MODELS, TASKS, TOKENIZERS
from lmjax.tasks.base import Batch, Task, TaskData, VocabInfo
from lmjax.tasks.causal_lm import CausalLmTask
from lmjax.tasks.classification import ClassificationTask
from lmjax.tasks.mlm import MlmTask

_EVAL_KEYS = ("teacher_kl_sum", "teacher_kl_weight")


def parse_student_layers(text: str, num_layers: int) -> list[int]:
  """distill.init_student_layers: '0,2,4' -> [0, 2, 4]; 'every_other' -> [0, 2, ..., 2 * (num_layers - 1)]."""
  if text.strip() == "every_other":
    return [2 * i for i in range(num_layers)]
  layers = config_lib.parse_lengths(text)
  if any(i < 0 for i in layers):
    raise ValueError(text)
  return layers


def _validate(cfg: ml_collections.ConfigDict) -> None:
  """Fields checkable without the teacher; the teacher run itself is checked when the task opens it."""
  k, m = cfg.distill, cfg.model
  if not config_lib.reads(cfg, "distill"):
    if k.teacher_workdir or k.offline_logits_dir:
      distilling = [n for n, c in TASKS.items() if "distill" in c.sections]
      config_lib.fail("distill.teacher_workdir" if k.teacher_workdir else "distill.offline_logits_dir",
                      k.teacher_workdir or k.offline_logits_dir,
                      f"distillation needs task={' or '.join(map(repr, distilling))}, not {cfg.task!r}; set the "
                      f"task or clear the field")
    return
  task = TASKS.get(cfg.task)
  if not k.teacher_workdir and not k.offline_logits_dir:
    config_lib.fail("distill.teacher_workdir", k.teacher_workdir, f"task={cfg.task!r} needs the teacher's run "
                    f"directory (or distill.offline_logits_dir with precomputed teacher logits)")
  if task.objective() == "classification" and cfg.finetune.regression:
    config_lib.fail("finetune.regression", cfg.finetune.regression, "a regression model has one output and no "
                    "class distribution to distil; set it to False, or train the student with task='classification'")
  if k.offline_logits_dir and task.objective() not in offline.OBJECTIVES:
    config_lib.fail("distill.offline_logits_dir", k.offline_logits_dir, f"precomputed logits are for the "
                    f"objectives {', '.join(offline.OBJECTIVES)}; a {task.objective()} teacher runs online, so set "
                    f"it to ''")
  if not 0.0 <= k.alpha <= 1.0:
    config_lib.fail("distill.alpha", k.alpha, "must be in [0, 1] (1: only the teacher's distribution, 0: only the "
                    "labels)")
  config_lib.at_least(cfg, "distill.temperature", 0.0, strict=True)
  config_lib.at_least(cfg, "distill.teacher_step", 0)
  config_lib.at_least(cfg, "distill.hidden_weight", 0.0)
  config_lib.at_least(cfg, "distill.attention_weight", 0.0)
  config_lib.at_least(cfg, "distill.top_k", 1)
  try:
    pairs = parse_layer_pairs(k.layer_pairs)
  except ValueError:
    config_lib.fail("distill.layer_pairs", k.layer_pairs, "give teacher:student block indices separated by commas, "
                    "e.g. '1:0,3:1'")
  needs_layers = k.hidden_weight > 0 or k.attention_weight > 0
  if needs_layers and not pairs:
    config_lib.fail("distill.layer_pairs", k.layer_pairs, "distill.hidden_weight or attention_weight > 0 needs "
                    "layer pairs to match, e.g. '1:0,3:1' (teacher block 1 to student block 0, ...)")
  if needs_layers and not family(m.name).sows_layers:
    layered = [n for n, f in MODELS.items() if f.sows_layers]
    config_lib.fail("model.name", m.name, f"hidden-state and attention distillation match Transformer blocks "
                    f"({', '.join(layered)}); set distill.hidden_weight=0 and distill.attention_weight=0")
  if k.attention_weight > 0 and not ATTENTION.get(m.attention_impl).probs:
    config_lib.fail("model.attention_impl", m.attention_impl, f"distill.attention_weight={k.attention_weight} "
                    f"matches attention maps, which it does not return; choose 'xla' or 'auto'")
  for _, student in pairs:
    if student >= m.num_layers:
      config_lib.fail("distill.layer_pairs", k.layer_pairs, f"student block {student} does not exist: the student "
                      f"has model.num_layers={m.num_layers} (blocks 0..{m.num_layers - 1})")
  if k.offline_logits_dir and needs_layers:
    config_lib.fail("distill.offline_logits_dir", k.offline_logits_dir, "precomputed logits carry no hidden states "
                    "or attention maps; set distill.hidden_weight=0 and distill.attention_weight=0, or train online")
  if k.init_student_layers:
    try:
      layers = parse_student_layers(k.init_student_layers, m.num_layers)
    except ValueError:
      layers = None
    if layers is None or len(layers) != m.num_layers:
      config_lib.fail("distill.init_student_layers", k.init_student_layers, f"give one teacher layer per student "
                      f"layer (model.num_layers={m.num_layers}), e.g. "
                      f"'{','.join(str(2 * i) for i in range(m.num_layers))}', or 'every_other'")
    if not k.teacher_workdir:
      config_lib.fail("distill.teacher_workdir", k.teacher_workdir, "distill.init_student_layers copies the "
                      "teacher's layers; give its run directory")


# A student (this config's model) learns from a frozen teacher run's outputs.
# loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the base task's loss.
config_lib.register_section("distill", {
    "teacher_workdir": "",  # any lmjax run of the same objective and tokenizer; reloaded on every start
    "teacher_step": 0,  # the teacher's checkpoint step; 0: its latest
    "alpha": 0.5,  # weight of the distillation term; 1 - alpha weighs the loss on the labels
    "temperature": 2.0,  # T: both distributions are softmax(logits / T) in the KL term
    "hidden_weight": 0.0,  # MSE of hidden states at distill.layer_pairs (learned projection if widths differ)
    "attention_weight": 0.0,  # KL between attention maps at distill.layer_pairs
    "layer_pairs": "",  # 'teacher:student' block indices, e.g. '1:0,3:1'
    "init_student_layers": "",  # '0,2,4' or 'every_other': student layer i starts as that teacher layer
    "offline_logits_dir": "",  # train from precomputed teacher top-k logits (python -m lmjax.distill.precompute)
    "top_k": 32,  # logits kept per position by the precompute
}, _validate)


@dataclasses.dataclass(frozen=True)
class Settings:
  """distill.* as the steps read them, fixed when the task is created."""
  alpha: float
  temperature: float
  hidden_weight: float
  attention_weight: float
  layer_pairs: tuple[tuple[int, int], ...]
  init_student_layers: tuple[int, ...]
  offline: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Settings":
    k = config.distill
    layers = tuple(parse_student_layers(k.init_student_layers, config.model.num_layers)) if k.init_student_layers \
        else ()
    return cls(k.alpha, k.temperature, k.hidden_weight, k.attention_weight, tuple(parse_layer_pairs(k.layer_pairs)),
               layers, bool(k.offline_logits_dir))


@dataclasses.dataclass(frozen=True)
class DistillData(TaskData):
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

  def score(self, split: str, index_N, predictions, *, step: int, out_dir: Path | None) -> dict[str, float]:
    """The base data's metrics from predictions (a classifier's F1, MCC)."""
    return self.base.score(split, index_N, predictions, step=step, out_dir=out_dir)


@dataclasses.dataclass(frozen=True)
class DistillTask(Task):
  """A base task (its student model, batches, metrics) plus the teacher and the distillation settings."""
  base: Task  # the base task instance: the student model, eval statistics, summaries
  model: Any  # what the trainer initializes: the student, or the student with hidden-state projections
  settings: Settings
  heads: Any  # how the student's outputs are read (lmjax/distill/heads.py)
  teacher: Teacher | None
  offline_shapes: tuple[tuple[str, tuple[int, ...], str], ...] = ()  # (batch key, shape without B, dtype)
  mesh_rules: Any = None  # the config's logical-axis rules, for restoring an offline teacher's layers
  loss_chunk: int = 0  # train.loss_chunk_tokens: the KL over the vocabulary a chunk of tokens at a time

  base_class: ClassVar[type[Task]]

  def __init_subclass__(cls, **kwargs):
    """What the trainer asks of a distillation task (its model interface, samples, predictions, sections) follows
    the base task it wraps."""
    super().__init_subclass__(**kwargs)
    base = cls.__dict__.get("base_class")
    if base is not None:
      cls.model_interface, cls.generates_text, cls.predicts = base.model_interface, base.generates_text, base.predicts
      cls.chunked_loss = base.chunked_loss
      cls.sections = (*base.sections, "distill")
      # Eval records the base task's loss; the train loss is the distillation mix (distill.alpha).
      cls.loss_unit = f"{base.loss_unit}; the train loss mixes it with the KL from the teacher"

  # --- the config -------------------------------------------------------------------------------------------------

  @classmethod
  def objective(cls) -> str:
    return cls.base_class.registered_name

  @classmethod
  def trains(cls, family_class: type[ModelConfig]) -> bool:
    return cls.base_class.trains(family_class) and not family_class.fit_only

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    cls.base_class.validate(config)

  # --- building -------------------------------------------------------------------------------------------------

  @classmethod
  def tokenizer_texts(cls, config: ml_collections.ConfigDict, data_dir: Path) -> Iterable[str]:
    return cls.base_class.tokenizer_texts(config, data_dir)

  @classmethod
  def shared_tokenizer(cls, config: ml_collections.ConfigDict) -> Path | None:
    """A kind that comes with a checkpoint (an imported teacher's hf_tokenizer, ...) cannot be trained from the
    data: the student adopts the teacher's. Kinds lmjax trains are trained on the same data, with the same ids."""
    k = config.distill
    if k.teacher_workdir and not TOKENIZERS.get(config.tokenizer.kind).trainable:
      shared = Path(k.teacher_workdir) / "tokenizer"
      if not shared.is_dir():
        raise ConfigError(f"config.distill.teacher_workdir={k.teacher_workdir!r} has no tokenizer/ for the student's "
                          f"tokenizer.kind={config.tokenizer.kind!r} to share; give the teacher's run directory")
      return shared
    return None

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Any, data_dir: Path) -> DistillData:
    """The tokenizer checks happen here, before the trainer builds or compiles anything."""
    k = config.distill
    if k.teacher_workdir:
      check_tokenizer(config, open_teacher(config, cls.base_class), tokenizer)
    store = None
    if k.offline_logits_dir:
      store = offline.open_store(k.offline_logits_dir)
      store.check(config, tokenizer)
    return DistillData(config, cls.base_class.prepare_data(config, tokenizer, data_dir), store)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: DistillData | None = None) -> "DistillTask":
    """`data` (None when compiling without data) is unwrapped for base tasks that size their model from it."""
    base = cls.base_class.create(config, vocab, None if data is None else data.base)
    teacher = open_teacher(config, cls.base_class) if config.distill.teacher_workdir else None
    if teacher is not None and teacher.run.tokenizer.vocab_size != vocab.size:
      raise ConfigError(f"config.distill.teacher_workdir={config.distill.teacher_workdir!r}: the teacher has "
                        f"{teacher.run.tokenizer.vocab_size} tokens, the student {vocab.size}; they must share one "
                        f"tokenizer")
    settings = Settings.from_config(config)
    if teacher is not None and cls.base_class.predicts and teacher.model.num_outputs != base.model.num_outputs:
      raise ConfigError(f"config.distill.teacher_workdir={config.distill.teacher_workdir!r}: the teacher has "
                        f"{teacher.model.num_outputs} classes, the student {base.model.num_outputs}; give a teacher "
                        f"trained on the same label set (finetune.labels)")
    model = base.model
    widths = tuple((config.model.d_model, teacher.config.model.d_model)
                   for _ in settings.layer_pairs) if teacher is not None else ()
    if settings.hidden_weight > 0 and any(a != b for a, b in widths):
      model = StudentWithProjections(base.model, widths, config.model.init_std, config.model.param_dtype)
    shapes = ()
    if settings.offline:
      store = offline.open_store(config.distill.offline_logits_dir)
      shapes = tuple((offline.batch_key(head, what), tuple(info["shape"][1:]), dtype)
                     for head, info in store.heads.items()
                     for what, dtype in (("values", "float16"), ("indices", info["index_dtype"])))
    heads = HEADS[cls.base_class.registered_name].from_config(config, config.train.loss_chunk_tokens)
    return cls(base, model, settings, heads, teacher, shapes, sharding.logical_rules(config.mesh),
               config.train.loss_chunk_tokens)

  def init_args(self) -> tuple[jax.Array, ...]:
    return self.base.init_args()

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = self.base.abstract_batch(batch_size)
    for key, shape, dtype in self.offline_shapes:
      shapes[key] = jax.ShapeDtypeStruct((batch_size, *shape), jnp.dtype(dtype))
    return shapes

  def param_groups(self, params: Any) -> Any:
    """The base task's groups (finetune.freeze_layers, head_lr_multiplier)."""
    return self.base.param_groups(params)

  # --- the trainer's frozen-parameter hooks (tasks/base.py) -------------------------------------------------------

  @property
  def online(self) -> bool:
    return self.teacher is not None and not self.settings.offline

  def frozen_spec(self) -> tuple[Any, Any] | None:
    """The teacher's parameter shapes and logical axes when it runs inside the step; None in offline mode."""
    return (self.teacher.abstract, self.teacher.axes) if self.online else None

  def load_frozen(self, shardings: Any) -> Any:
    if shardings is None:
      return None
    logging.info("Teacher: %s at step %d (%s, %d layers, width %d).", self.teacher.run.workdir, self.teacher.step,
                 self.teacher.config.model.name, self.teacher.config.model.num_layers,
                 self.teacher.config.model.d_model)
    return restore_params(self.teacher, shardings)

  def initial_params(self, params: Any, frozen: Any) -> Any:
    """A fresh student's parameters: with distill.init_student_layers, its blocks copied from the teacher's."""
    layers = list(self.settings.init_student_layers)
    if not layers:
      return params
    if max(layers) >= self.teacher.config.model.num_layers:
      raise ConfigError(f"config.distill.init_student_layers={layers}: the teacher has only "
                        f"{self.teacher.config.model.num_layers} layers")
    layer_init.check_shapes(params, self.teacher.abstract, layers)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    if frozen is None:  # offline: the teacher is read only for this
      mesh = jax.tree_util.tree_leaves(shardings)[0].mesh
      frozen = restore_params(self.teacher, sharding.tree_shardings(self.teacher.abstract, self.teacher.axes, mesh,
                                                                    self.mesh_rules))
    logging.info("Student layers start from teacher layers %s.", layers)
    copy = lambda student, teacher: layer_init.from_teacher(student, teacher, layers)
    return jax.jit(copy, out_shardings=shardings)(params, frozen)

  # --- the loss -----------------------------------------------------------------------------------------------------

  @property
  def _records(self) -> bool:
    s = self.settings
    return self.online and (s.hidden_weight > 0 or s.attention_weight > 0)

  def _teacher(self, frozen: Any, batch) -> tuple[Any, Any]:
    out, inter = self.teacher.heads.run(self.teacher.model, frozen, batch, deterministic=True, record=self._records)
    return jax.lax.stop_gradient(out), jax.lax.stop_gradient(inter)

  def _kd(self, student_heads, batch, frozen, teacher_heads) -> jax.Array:
    """sum over heads of the mean KL at temperature T (unscaled)."""
    T = self.settings.temperature
    total = jnp.zeros((), jnp.float32)
    for name, (logits, weights) in student_heads.items():
      if frozen is not None and name in teacher_heads:
        kl = token_stats(lambda s, t: losses.soft_kl(s, t, T), [logits, teacher_heads[name][0]],
                         chunk=self.loss_chunk)
      elif frozen is None and offline.batch_key(name, "values") in batch:
        kl = token_stats(lambda s, v, i: losses.top_k_kl(s, v, i, T), [logits],
                         [batch[offline.batch_key(name, "values")], batch[offline.batch_key(name, "indices")]],
                         chunk=self.loss_chunk)
      else:
        continue
      total = total + losses.weighted_mean(kl, weights)
    return total

  def _layer_terms(self, params, batch, student_inter, teacher_inter) -> dict[str, jax.Array]:
    s = self.settings
    weights_BL = (batch["segment_ids"] > 0).astype(jnp.float32)
    hidden, attention = [], []
    for j, (t_layer, s_layer) in enumerate(s.layer_pairs):
      student, teacher = layer_intermediates(student_inter, s_layer), layer_intermediates(teacher_inter, t_layer)
      if s.hidden_weight > 0:
        h_BLD = student["hidden"][0]
        if PROJECTION.format(j) in params:
          h_BLD = h_BLD @ params[PROJECTION.format(j)].astype(h_BLD.dtype)
        hidden.append(losses.weighted_mean(losses.hidden_mse(h_BLD, teacher["hidden"][0]), weights_BL))
      if s.attention_weight > 0:
        attention.append(losses.weighted_mean(
            losses.attention_kl(student["attn"]["probs"][0], teacher["attn"]["probs"][0]), weights_BL))
    out = {}
    if hidden:
      out["hidden_loss"] = sum(hidden) / len(hidden)
    if attention:
      out["attention_loss"] = sum(attention) / len(attention)
    return out

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    s, H = self.settings, self.heads
    out, student_inter = H.run(self.base.model, params, batch, deterministic=False, rng=rng, record=self._records)
    hard, aux, tokens = H.hard_loss(out, batch)
    teacher_heads, teacher_inter = {}, None
    if frozen is not None:
      teacher_out, teacher_inter = self._teacher(frozen, batch)
      teacher_heads = self.teacher.heads.heads(teacher_out, batch)
    kd = self._kd(H.heads(out, batch), batch, frozen, teacher_heads)
    loss = s.alpha * s.temperature ** 2 * kd + (1.0 - s.alpha) * hard
    aux = {**aux, "kd_loss": kd, "ce_loss": hard}
    if self._records:
      terms = self._layer_terms(params, batch, student_inter, teacher_inter)
      loss = loss + s.hidden_weight * terms.get("hidden_loss", 0.0) + s.attention_weight * terms.get(
          "attention_loss", 0.0)
      aux |= terms
    return loss, {**aux, "loss": loss, "tokens": tokens}

  # --- evaluation ---------------------------------------------------------------------------------------------------

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    """The base task's statistics, plus the KL from the teacher at T = 1 on the first head (next token, or masked
    token) when the teacher runs in the step."""
    sums = self.base.eval_sums(params, batch)
    if frozen is not None:
      H = self.heads
      name, (logits, weights) = next(iter(H.heads(H.run(self.base.model, params, batch, deterministic=True)[0],
                                                  batch).items()))
      teacher_logits = self.teacher.heads.heads(self._teacher(frozen, batch)[0], batch)[name][0]
      kl = token_stats(lambda s, t: losses.soft_kl(s, t, 1.0), [logits, teacher_logits], chunk=self.loss_chunk)
      sums["teacher_kl_sum"] = (kl * weights).sum()
      sums["teacher_kl_weight"] = weights.sum().astype(jnp.float32)
    return sums

  def predict(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    """The base task's per-example predictions, so `data.score` reports its metrics (accuracy, F1, MCC) for the
    student; the teacher plays no part in them."""
    return self.base.predict(params, batch)

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    out = self.base.summarize({key: v for key, v in sums.items() if key not in _EVAL_KEYS})
    if "teacher_kl_weight" in sums:
      out["teacher_kl"] = sums["teacher_kl_sum"] / max(sums["teacher_kl_weight"], 1.0)
    return out


@TASKS.register("distill_lm")
class DistillLmTask(DistillTask):
  base_class = CausalLmTask


@TASKS.register("distill_mlm")
class DistillMlmTask(DistillTask):
  base_class = MlmTask


@TASKS.register("distill_classification")
class DistillClassificationTask(DistillTask):
  base_class = ClassificationTask
