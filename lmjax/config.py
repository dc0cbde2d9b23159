"""The config of a run: the shared sections, the sections other modules contribute, and their validation.

A config file under configs/ starts from `base_config()` and overrides fields; every field can also be set on the
command line (`--config.model.num_layers=6`). `validate` checks the whole tree before anything is compiled and
raises `ConfigError` with one line: the field, the bad value, what is valid.

What lives where:
  * here: the sections every run reads (top level, data, tokenizer, mesh, optim, train) and the machinery;
  * `model`: composed from the registered architectures (lmjax/models/: each family's config dataclass lists its
    fields and defaults, and validates them) and position encodings (lmjax/models/positions/);
  * task sections (mlm, finetune, seq2seq, distill, ...): registered by the task module that reads them.
Valid names (tasks, models, positions, tokenizer kinds) come from the registries in lmjax/registry.py, never from
a list kept here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import shlex
from typing import Any, Callable, Mapping

import ml_collections

from lmjax import registry

DOCUMENT_SPLITS = ("file", "paragraph", "line", "marker", "regex")
SAMPLING_KINDS = ("epochs", "random")
INVALID_UTF8_POLICIES = ("replace", "fail")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "linear", "constant")
DECAY_MASKS = ("matrices", "all", "none")
MESH_AXES = ("data", "fsdp", "sequence", "tensor")
TRACKERS = ("tensorboard", "wandb")  # lmjax.writers.TRACKERS implements them


class ConfigError(ValueError):
  """A bad config field; the message is one line naming the field and the fix."""


# --- checks that validators share ---------------------------------------------------------------------------------

def fail(field: str, value: Any, expected: str) -> None:
  raise ConfigError(f"config.{field}={value!r} is invalid: {expected}.")


def get(cfg: ml_collections.ConfigDict, field: str) -> Any:
  value = cfg
  for part in field.split("."):
    value = value[part]
  return value


def one_of(cfg: ml_collections.ConfigDict, field: str, choices) -> None:
  value = get(cfg, field)
  if value not in choices:
    fail(field, value, f"choose one of {', '.join(map(str, choices))}")


def at_least(cfg: ml_collections.ConfigDict, field: str, low, *, strict: bool = False) -> None:
  value = get(cfg, field)
  if value < low or (strict and value == low):
    fail(field, value, f"must be {'>' if strict else '>='} {low}")


def in_unit_interval(cfg: ml_collections.ConfigDict, field: str, *, closed: bool = False, why: str = "") -> None:
  """value in [0, 1) (or [0, 1] when closed)."""
  value = get(cfg, field)
  if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
    fail(field, value, f"must be in [0, 1{']' if closed else ')'}{' ' + why if why else ''}")


def unused_with(cfg: ml_collections.ConfigDict, field: str, empty: Any, why: str) -> None:
  """A field that only some choice reads must keep its empty value otherwise, so a setting never silently does
  nothing."""
  value = get(cfg, field)
  if value != empty:
    fail(field, value, f"{why}; set it to {empty!r}")


# --- sections other modules contribute ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Section:
  """A config section owned by the module that reads it (register it there with `register_section`).

  `fields` is {name: default} (a comment beside each says what it means); `validate(cfg)` checks them and runs on
  every config, so it can also refuse settings that only make sense for another task.
  """
  name: str
  fields: Mapping[str, Any]
  validate: Callable[[ml_collections.ConfigDict], None] = lambda cfg: None


def register_section(name: str, fields: Mapping[str, Any],
                     validate: Callable[[ml_collections.ConfigDict], None] | None = None) -> Section:
  section = Section(name, dict(fields), validate or (lambda cfg: None))
  registry.SECTIONS.register(name)(section)
  return section


def reads(cfg: ml_collections.ConfigDict, section: str) -> bool:
  """Whether the configured task reads a registered section (its class lists it in `sections`)."""
  return cfg.task in registry.TASKS and section in registry.TASKS.get(cfg.task).sections


def model_fields() -> dict[str, Any]:
  """The `model` section: `name`, then every field a registered architecture or position encoding declares.

  Fields that several architectures share (num_layers, d_model, ...) are declared by each with the same default;
  a conflicting default is a programming error, reported at once."""
  fields: dict[str, Any] = {"name": "gpt"}
  owners: dict[str, str] = {}
  contributions = [(f"model {n}", e.section_fields()) for n, e in registry.MODELS.items()]
  contributions += [(f"position {n}", e.section_fields()) for n, e in registry.POSITIONS.items()]
  for owner, declared in contributions:
    for key, default in declared.items():
      if key in fields and key != "name" and fields[key] != default:
        raise ValueError(f"model.{key} has default {fields[key]!r} in {owners[key]} but {default!r} in {owner}")
      fields.setdefault(key, default)
      owners.setdefault(key, owner)
  return fields


def _section(fields: Mapping[str, Any]) -> ml_collections.ConfigDict:
  section = ml_collections.ConfigDict()
  for key, value in fields.items():
    section[key] = _section(value) if isinstance(value, Mapping) else value
  return section


def base_config() -> ml_collections.ConfigDict:
  """Every field lmjax knows, with defaults. Config files override; unknown keys are rejected."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "causal_lm"

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"
  c.data.paths = ""
  c.data.tfds_name = ""
  c.data.text_key = "text"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.test_split = ""  # causal_lm: also score this split as 'test', e.g. 'validation[50%:]'; '' for none
  c.data.data_dir = ""
  c.data.document_split = "paragraph"
  c.data.document_separator = ""  # document_split='marker': the line between documents ('%'); 'regex': a pattern
  c.data.validation_fraction = 0.1
  c.data.invalid_utf8 = "replace"
  c.data.allow_binary = False  # accept files that look binary (NUL bytes, or mostly undecodable bytes) as text
  c.data.seq_len = 256
  c.data.shuffle_seed = 0
  c.data.sampling = "epochs"  # 'epochs': every window once per epoch; 'random': uniform random offsets (nanoGPT)
  c.data.num_workers = 0  # tokenizing worker processes; 0: tokenize in this process
  # data.source='hf' (Hugging Face datasets): a hub name, a local directory, or 'json'/'parquet'/'text' with files.
  c.data.hf_name = ""
  c.data.hf_config = ""  # the dataset's configuration (subset), e.g. 'wikitext-103-raw-v1'
  c.data.hf_data_files = ""  # 'glob' (the train split) or 'train=glob,validation=glob'
  c.data.hf_streaming = False  # iterate without downloading the whole set; the checkpoint records the position
  # Weighted sources: 'name:weight [field=value ...]; ...', each entry a data.source with its own fields (docs/data.md)
  c.data.mixture = ""

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.kind = "byte"
  c.tokenizer.vocab_size = 0  # sentencepiece only; char/byte vocabularies follow from the data
  c.tokenizer.max_training_chars = 20_000_000

  c.model = _section(model_fields())

  for name, section in registry.SECTIONS.items():
    c[name] = _section(section.fields)

  # Devices form a mesh with axes (data, fsdp, sequence, tensor); -1 takes the devices the other axes leave.
  # Parameters and activations name logical axes; `rules` maps each logical axis to mesh axes ("" replicates, "a,b"
  # splits over both), so a new sharding layout is a config change, not a code change. mesh.sequence > 1 splits the
  # length axis of activations (context parallelism, with ring attention: model.attention_impl 'ring' or 'auto').
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.sequence = 1
  c.mesh.tensor = 1
  c.mesh.rules = ml_collections.ConfigDict()
  c.mesh.rules.batch = "data,fsdp"
  c.mesh.rules.activation_tokens = "data,fsdp,sequence"
  c.mesh.rules.length = "sequence"
  c.mesh.rules.embed = "fsdp"
  c.mesh.rules.vocab = "tensor"
  c.mesh.rules.mlp = "tensor"
  c.mesh.rules.heads = "tensor"
  c.mesh.rules.kv = ""

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.min_learning_rate = 1e-4  # where cosine/linear decay ends
  c.optim.decay_steps = 0  # 0 -> train.num_steps
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.decay_mask = "matrices"  # decay only kernels/embeddings of rank >= 2, not biases or norm scales
  c.optim.grad_clip_norm = 1.0  # 0 disables clipping

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 12  # global, in sequences
  c.train.num_steps = 2000
  c.train.microbatches = 1  # gradient accumulation: each step sums gradients over this many slices of the batch
  c.train.steps_per_call = 1  # train steps fused into one jitted call (a lax.scan): fewer dispatches for tiny models
  # 0: the loss reads the whole [tokens, V] float32 logits, as always; N: the vocabulary projection and the loss run
  # N tokens at a time and are recomputed in the backward pass (lmjax/models/vocab_head.py): memory for compute.
  c.train.loss_chunk_tokens = 0
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_batches = 20  # 0 -> the whole validation split
  c.train.eval_batch_size = 0  # 0 -> train.batch_size
  c.train.extra_eval_seq_lens = ""  # e.g. "512,1024": also evaluate at these context lengths (length extrapolation)
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.async_checkpoints = True
  c.train.sample_prompt = "\n"
  c.train.sample_length = 200
  c.train.sample_temperature = 0.8
  c.train.sample_top_k = 0
  c.train.num_samples = 2
  c.train.plot = True
  c.train.tensorboard = True  # False turns TensorBoard off whatever train.trackers says (older configs set it)
  c.train.trackers = "tensorboard"  # where scalars go besides metrics.jsonl: 'tensorboard', 'wandb', both, or ''
  c.train.wandb_project = "lmjax"  # the W&B project of train.trackers='wandb'
  c.train.max_nonfinite_steps = 10  # stop after this many consecutive steps with non-finite loss or gradients
  c.train.allow_config_change = False  # resume a workdir whose saved model/tokenizer/seq_len config differs
  # lm-evaluation-harness tasks run during training (lmjax[eval]), logged as eval splits 'harness/<task>'.
  c.train.eval_tasks = ""  # e.g. "lambada_openai,hellaswag"; "" runs none
  c.train.eval_tasks_every = 0  # steps between them, a multiple of train.eval_every; 0: at every evaluation
  c.train.eval_tasks_limit = 0  # examples per task; 0: all
  c.train.eval_tasks_include_path = ""  # a directory of your own task YAMLs (the harness's --include_path)
  c.train.profile_steps = ""  # 'START:END': a jax.profiler trace of those train steps in workdir/profile
  c.train.compile_cache = "auto"  # compiled programs kept for reruns: 'auto' (the user cache dir), a path, or ''
  return c


# --- validation -----------------------------------------------------------------------------------------------------

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


# --- small parsers and helpers --------------------------------------------------------------------------------------

def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{'model': {'d_model': 64}} -> {'model.d_model': 64}: how fields are named in flags, errors and reports."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def parse_step_range(text: str) -> tuple[int, int] | None:
  """'100:110' -> (100, 110); '' -> None; a ValueError otherwise."""
  if not text.strip():
    return None
  start, end = (int(part) for part in text.split(":"))
  if not 0 <= start < end:
    raise ValueError(text)
  return start, end


def parse_lengths(text: str) -> list[int]:
  """'512, 1024' -> [512, 1024]; '' -> []."""
  return [int(part) for part in text.split(",") if part.strip()]


# --- data.mixture -----------------------------------------------------------------------------------------------------

# The data fields a mixture entry may set: what a source is and how it splits. The rest (seq_len, sampling, ...) are
# the run's, shared by every entry.
MIXTURE_FIELDS = ("source", "paths", "tfds_name", "text_key", "train_split", "eval_split", "document_split",
                  "document_separator", "validation_fraction", "invalid_utf8", "hf_name", "hf_config",
                  "hf_data_files", "hf_streaming")
_MIXTURE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
  name: str  # names the source in metrics (eval/<name>) and caches
  weight: float  # relative; the weights are normalized to sum to 1
  overrides: Mapping[str, Any]  # data fields of this source


def parse_mixture(text: str) -> list[MixtureEntry]:
  """'web:3 source=hf hf_name=json hf_data_files=web/*.jsonl; books:1 paths=books/*.txt' -> entries. Entries are
  separated by ';', values may be quoted as in a shell; fields not given are the data section's. ValueError with
  what is wrong (one line) otherwise."""
  lexer = shlex.shlex(text, posix=True, punctuation_chars=";")
  lexer.whitespace_split = True
  try:
    tokens = list(lexer)
  except ValueError as e:
    raise ValueError(f"cannot be read ({e}); give 'name:weight field=value ...; name:weight ...'") from None
  groups, current = [], []
  for token in tokens:
    if set(token) == {";"}:
      groups.append(current)
      current = []
    else:
      current.append(token)
  groups.append(current)
  entries, defaults = [], base_config().data
  for group in (g for g in groups if g):
    head, *fields = group
    name, sep, weight_text = head.partition(":")
    if not sep or not _MIXTURE_NAME.fullmatch(name):
      raise ValueError(f"entry {' '.join(group)!r} must start with name:weight, the name of letters, digits, '_', "
                       f"'.' or '-' (e.g. 'web:0.7')")
    try:
      weight = float(weight_text)
    except ValueError:
      weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
      raise ValueError(f"entry {name!r} has weight {weight_text!r}; a weight is a positive number")
    overrides: dict[str, Any] = {}
    for item in fields:
      field, eq, value = item.partition("=")
      if not eq or field not in MIXTURE_FIELDS:
        raise ValueError(f"entry {name!r}: {item!r} is not field=value with a field of {', '.join(MIXTURE_FIELDS)}")
      want = type(defaults[field])
      if want is bool:
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(f"entry {name!r}: {field}={value!r} must be true or false")
        overrides[field] = value.lower() in ("true", "1")
      else:
        try:
          overrides[field] = want(value)
        except ValueError:
          raise ValueError(f"entry {name!r}: {field}={value!r} must be a {want.__name__}") from None
    entries.append(MixtureEntry(name, weight, overrides))
  if not entries:
    raise ValueError("names no source; give 'name:weight field=value ...; name:weight ...'")
  names = [e.name for e in entries]
  if len(set(names)) != len(names):
    raise ValueError(f"names a source twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); give "
                     f"each entry its own name")
  return entries


def mixture_entry_data(data: ml_collections.ConfigDict, entry: MixtureEntry) -> ml_collections.ConfigDict:
  """The data section of one entry: the run's, with the entry's fields and no mixture."""
  section = ml_collections.ConfigDict(data.to_dict())
  section.mixture = ""
  for field, value in entry.overrides.items():
    section[field] = value
  return section
