"""`validate`: the whole config checked before anything is compiled or written, one bad field per error.

The shared sections' validators live here; a model, position encoding, task or data source validates its own
fields where it is defined (lmjax/registry.py finds them), and a task's section validator is registered with the
section (`config.register_section`).
"""

from __future__ import annotations

import importlib.util
import math
import re

import ml_collections

from lmjax import registry
from lmjax.config import (DECAY_MASKS, DOCUMENT_SPLITS, INVALID_UTF8_POLICIES, MESH_AXES, OPTIMIZERS, SAMPLING_KINDS,
                          SCHEDULES, TRACKERS, ConfigError, at_least, base_config, fail, one_of, parse_lengths,
                          parse_step_range, unused_with)
from lmjax.config_mixture import mixture_entry_data, parse_mixture

def _check_keys(cfg: ml_collections.ConfigDict, ref: ml_collections.ConfigDict, prefix: str = "") -> None:
  for key in cfg.keys():
    field = f"{prefix}{key}"
    if key not in ref:
      section = f"config.{prefix[:-1]}" if prefix else "config"
      raise ConfigError(f"config.{field} is not a known field (a typo?); {section} has: "
                        f"{', '.join(sorted(ref.keys()))}.")
    if isinstance(ref[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], (ml_collections.ConfigDict, dict)):
        fail(field, cfg[key], "expected a section (ConfigDict)")
      _check_keys(cfg[key], ref[key], f"{field}.")


def _check_types(cfg: ml_collections.ConfigDict, ref: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Every field has its default's type (an int where a float is expected is fine), and numbers are finite: a NaN
  or infinite hyperparameter would only fail later, after compiling and writing."""
  for key in ref.keys():
    field = f"{prefix}{key}"
    if isinstance(ref[key], ml_collections.ConfigDict):
      _check_types(cfg[key], ref[key], f"{field}.")
      continue
    want, value = type(ref[key]), cfg[key]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
      continue
    if want is int and isinstance(value, bool) or not isinstance(value, want):
      fail(field, value, f"expected {want.__name__}")
    if want is float and not math.isfinite(value):
      fail(field, value, "must be a finite number, not NaN or inf")


def _validate_data(cfg: ml_collections.ConfigDict) -> None:
  d = cfg.data
  if d.source not in registry.SOURCES:
    raise ConfigError(registry.SOURCES.unknown_message(d.source) + ".")
  for field, choices in (("data.document_split", DOCUMENT_SPLITS), ("data.sampling", SAMPLING_KINDS),
                         ("data.invalid_utf8", INVALID_UTF8_POLICIES)):
    one_of(cfg, field, choices)
  defaults = base_config().data
  for name, kind in registry.SOURCES.items():  # a field only another kind reads must keep its default
    for field in kind.owned_fields:
      if name != d.source and field not in registry.SOURCES.get(d.source).owned_fields:
        unused_with(cfg, f"data.{field}", defaults[field], f"only data.source={name!r} reads it")
  registry.SOURCES.get(d.source).validate(cfg)
  if d.document_split in ("marker", "regex"):
    if not d.document_separator:
      fail("data.document_separator", d.document_separator, f"data.document_split={d.document_split!r} needs the "
           f"{'marker line' if d.document_split == 'marker' else 'regular expression'} between documents")
    if d.document_split == "regex":
      try:
        re.compile(d.document_separator)
      except re.error as e:
        fail("data.document_separator", d.document_separator, f"not a regular expression ({e})")
  else:
    unused_with(cfg, "data.document_separator", "", "only data.document_split='marker' or 'regex' reads it")
  if not 0.0 < d.validation_fraction < 1.0:
    fail("data.validation_fraction", d.validation_fraction, "must be strictly between 0 and 1")
  at_least(cfg, "data.seq_len", 1)
  at_least(cfg, "data.num_workers", 0)
  task = registry.TASKS.get(cfg.task)
  if d.test_split.strip() and not task.scores_test_split:
    fail("data.test_split", d.test_split, f"task={cfg.task!r} does not read it (tasks that do: "
         f"{', '.join(n for n, c in registry.TASKS.items() if c.scores_test_split)}); set it to ''")
  if d.test_split.strip() and (d.get("mixture", "").strip() or d.get("hf_streaming", False)):
    fail("data.test_split", d.test_split, "is read from one cached source; with data.mixture or data.hf_streaming "
         "set it to '' (a mixture scores each source's eval split as eval/<source>)")
  if d.test_split.strip() and d.test_split.strip() == d.eval_split.strip():
    fail("data.test_split", d.test_split, "is data.eval_split; a test split must hold other text, e.g. "
         "data.eval_split='validation[:50%]' and data.test_split='validation[50%:]'")
  if d.mixture.strip():
    _validate_mixture(cfg)


def _validate_mixture(cfg: ml_collections.ConfigDict) -> None:
  """Each entry is validated as the data section it makes (the parent's fields with the entry's on top)."""
  try:
    entries = parse_mixture(cfg.data.mixture)
  except ValueError as e:
    fail("data.mixture", cfg.data.mixture, str(e))
  task = registry.TASKS.get(cfg.task)
  if not task.mixes_sources:
    mixing = ", ".join(n for n, t in registry.TASKS.items() if t.mixes_sources)
    fail("data.mixture", cfg.data.mixture, f"task={cfg.task!r} reads one source; mixtures are for {mixing}")
  for entry in entries:
    entry_cfg = ml_collections.ConfigDict(cfg.to_dict())
    entry_cfg.data = mixture_entry_data(cfg.data, entry)
    try:
      _validate_data(entry_cfg)
    except ConfigError as e:
      raise ConfigError(f"config.data.mixture entry {entry.name!r}: {e}") from None


def _validate_tokenizer(cfg: ml_collections.ConfigDict) -> None:
  tok = cfg.tokenizer
  if tok.kind not in registry.TOKENIZERS:
    raise ConfigError(registry.TOKENIZERS.unknown_message(tok.kind) + ".")
  registry.TOKENIZERS.get(tok.kind).validate(cfg)
  at_least(cfg, "tokenizer.max_training_chars", 1000)


def _validate_model(cfg: ml_collections.ConfigDict) -> None:
  """The architecture's own checks, then whether the task can train it."""
  m = cfg.model
  if m.name not in registry.MODELS:
    raise ConfigError(registry.MODELS.unknown_message(m.name) + ".")
  for _, entry in (*registry.MODELS.items(), *registry.POSITIONS.items()):
    entry.validate_fields(cfg)
  family = registry.MODELS.get(m.name)
  family.validate(cfg)
  task = registry.TASKS.get(cfg.task)
  if not task.trains(family):
    trainable = [n for n, f in registry.MODELS.items() if task.trains(f)]
    fail("model.name", m.name, f"task={cfg.task!r} trains one of: {', '.join(trainable)}; set model.name to one of "
         f"them, or choose the task that trains it")
  context = family.max_context(m)
  if context is not None and cfg.data.seq_len > context:
    fail("data.seq_len", cfg.data.seq_len, f"exceeds model.max_len={context}, the longest input model.position="
         f"{m.position!r} allows; raise model.max_len or lower data.seq_len")


def _validate_mesh(cfg: ml_collections.ConfigDict) -> None:
  sizes = {axis: cfg.mesh[axis] for axis in MESH_AXES}
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      fail(f"mesh.{axis}", size, "must be a positive device count, or -1 to take the devices left over")
  if list(sizes.values()).count(-1) > 1:
    fail("mesh", sizes, f"at most one of {', '.join('mesh.' + a for a in MESH_AXES)} may be -1")
  for logical, mesh_axes in cfg.mesh.rules.items():
    named = [a.strip() for a in mesh_axes.split(",") if a.strip()]
    unknown = [a for a in named if a not in MESH_AXES]
    if unknown or len(set(named)) != len(named):
      fail(f"mesh.rules.{logical}", mesh_axes,
           f"give mesh axes from {', '.join(MESH_AXES)} separated by commas, each at most once, or '' to replicate")


def _validate_optim(cfg: ml_collections.ConfigDict) -> None:
  o = cfg.optim
  for field, choices in (("optim.name", OPTIMIZERS), ("optim.schedule", SCHEDULES),
                         ("optim.decay_mask", DECAY_MASKS)):
    one_of(cfg, field, choices)
  at_least(cfg, "optim.learning_rate", 0.0, strict=True)
  at_least(cfg, "optim.min_learning_rate", 0.0)
  at_least(cfg, "optim.warmup_steps", 0)
  at_least(cfg, "optim.decay_steps", 0)
  at_least(cfg, "optim.weight_decay", 0.0)
  at_least(cfg, "optim.grad_clip_norm", 0.0)
  at_least(cfg, "optim.eps", 0.0, strict=True)
  for field in ("b1", "b2"):
    if not 0.0 <= o[field] < 1.0:
      fail(f"optim.{field}", o[field], "must be in [0, 1)")


def _validate_train(cfg: ml_collections.ConfigDict) -> None:
  t = cfg.train
  for field in ("batch_size", "num_steps", "microbatches", "steps_per_call", "log_every", "eval_every",
                "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
    at_least(cfg, f"train.{field}", 1)
  for field in ("num_samples", "eval_batches", "eval_batch_size", "sample_length", "sample_top_k",
                "loss_chunk_tokens"):
    at_least(cfg, f"train.{field}", 0)
  at_least(cfg, "train.sample_temperature", 0.0)
  if t.batch_size % t.microbatches:
    fail("train.microbatches", t.microbatches, f"must divide train.batch_size={t.batch_size}")
  for field in ("log_every", "eval_every", "checkpoint_every"):
    if t[field] % t.steps_per_call:
      fail(f"train.{field}", t[field], f"must be a multiple of train.steps_per_call={t.steps_per_call}")
  trackers = [n.strip() for n in t.trackers.split(",") if n.strip()]
  if any(n not in TRACKERS for n in trackers) or len(set(trackers)) != len(trackers):
    fail("train.trackers", t.trackers, f"give a comma-separated subset of {', '.join(TRACKERS)}, or ''")
  if "wandb" in trackers and importlib.util.find_spec("wandb") is None:
    fail("train.trackers", t.trackers, "'wandb' needs the wandb package: pip install 'lmjax[wandb]'")
  try:
    extra_lens = parse_lengths(t.extra_eval_seq_lens)
  except ValueError:
    extra_lens = [0]
  if any(n < 1 for n in extra_lens):
    fail("train.extra_eval_seq_lens", t.extra_eval_seq_lens, "give positive integers separated by commas, e.g. "
         "'512,1024'")
  task = registry.TASKS.get(cfg.task)
  family = registry.MODELS.get(cfg.model.name)
  if t.loss_chunk_tokens and not (task.chunked_loss and family.returns_hidden):
    what = (f"model.name={cfg.model.name!r} computes its logits whole" if task.chunked_loss
            else f"task={cfg.task!r} has no vocabulary head")
    fail("train.loss_chunk_tokens", t.loss_chunk_tokens, f"{what}; set it to 0")
  if extra_lens and not task.evaluates_other_lengths:
    fail("train.extra_eval_seq_lens", t.extra_eval_seq_lens, f"evaluating at other lengths is for tasks that read "
         f"token windows ({', '.join(n for n, c in registry.TASKS.items() if c.evaluates_other_lengths)}), not "
         f"task={cfg.task!r}; set it to ''")
  _validate_eval_tasks(cfg)
  try:
    parse_step_range(t.profile_steps)
  except ValueError:
    fail("train.profile_steps", t.profile_steps, "give START:END with 0 <= START < END, e.g. '100:110', or '' for "
         "no profile")
  context = registry.MODELS.get(cfg.model.name).max_context(cfg.model)
  for n in extra_lens:
    if context is not None and n > context:
      fail("train.extra_eval_seq_lens", t.extra_eval_seq_lens, f"{n} exceeds model.max_len={context}, the longest "
           f"input model.position={cfg.model.position!r} allows; raise model.max_len")


def _validate_eval_tasks(cfg: ml_collections.ConfigDict) -> None:
  """The harness tasks' names and data are checked when training starts (that needs lm_eval); here, the rest."""
  t = cfg.train
  at_least(cfg, "train.eval_tasks_every", 0)
  at_least(cfg, "train.eval_tasks_limit", 0)
  if not t.eval_tasks.strip():
    for field, empty in (("eval_tasks_every", 0), ("eval_tasks_limit", 0), ("eval_tasks_include_path", "")):
      unused_with(cfg, f"train.{field}", empty, "train.eval_tasks is empty, so no harness task runs")
    return
  if t.eval_tasks_every % t.eval_every:
    fail("train.eval_tasks_every", t.eval_tasks_every, f"must be a multiple of train.eval_every={t.eval_every}")
  task = registry.TASKS.get(cfg.task)
  if not task.generates_text:
    fail("train.eval_tasks", t.eval_tasks, f"harness tasks score a language model's next tokens, not task="
         f"{cfg.task!r}; set it to ''")
  if registry.MODELS.get(cfg.model.name).fit_only:
    fail("train.eval_tasks", t.eval_tasks, f"model.name={cfg.model.name!r} is fitted in one pass, without the "
         f"evaluations these run at; set it to ''")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field. Cheap: touches no data, builds no model."""
  ref = base_config()
  _check_keys(cfg, ref)
  _check_types(cfg, ref)
  if cfg.task not in registry.TASKS:
    raise ConfigError(registry.TASKS.unknown_message(cfg.task) + ".")
  _validate_data(cfg)
  _validate_tokenizer(cfg)
  _validate_model(cfg)
  registry.TASKS.get(cfg.task).validate(cfg)
  for _, section in registry.SECTIONS.items():
    section.validate(cfg)
  _validate_mesh(cfg)
  _validate_optim(cfg)
  _validate_train(cfg)
