"""The config of a run: the shared sections, the sections other modules contribute, and the checks they share.

A config file under configs/ starts from `base_config()` and overrides fields; every field can also be set on the
command line (`--config.model.num_layers=6`). `lmjax.config_validation.validate` checks the whole tree before
anything is compiled and raises `ConfigError` with one line: the field, the bad value, what is valid.

What lives where:
  * here: the sections every run reads (top level, data, tokenizer, mesh, optim, train), their valid values, and
    the checks validators share; their validators are in lmjax/config_validation.py, data.mixture's syntax in
    lmjax/config_mixture.py;
  * `model`: composed from the registered architectures (lmjax/models/: each family's config dataclass lists its
    fields and defaults, and validates them) and position encodings (lmjax/models/positions/);
  * task sections (mlm, finetune, seq2seq, distill, ...): registered by the task module that reads them.
Valid names (tasks, models, positions, tokenizer kinds) come from the registries in lmjax/registry.py, never from
a list kept here.
"""

from __future__ import annotations

import dataclasses
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
