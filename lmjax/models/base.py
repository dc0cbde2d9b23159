"""What every architecture declares: its config dataclass, registered under `model.name`.

A family is one frozen dataclass, subclassing `ModelConfig`, registered with `@MODELS.register(name)` next to its
Flax module. Its dataclass fields are the `model.*` config fields it reads (their defaults are the config's
defaults), `validate` checks them, and `build()` returns the module. Class attributes say what the architecture can
do, so that tasks, decoding and validation ask the family instead of testing names:

  interface    what it computes: 'next_token' (logits for the token after each position), 'encoder'
               (contextual vectors of a whole sequence, plus pretraining heads), 'seq2seq' (target logits
               given a source). Tasks declare which interface they train.
  attention    a Transformer with heads and positions (the model.position / heads checks apply).
  decodes      extends a sequence over a key/value cache (lmjax.decode drives `init_cache` / `extend`).
  sows_layers  records per-layer hidden states and attention maps when asked (distillation).
  fit_only     has no gradient training: fitted in one pass over the data (the n-gram model).
  classifies   has a sequence classifier on its pretrained body (`sequence_classifier`, `pretrained_subtrees`).
  returns_hidden  can return its final hidden states and output weights instead of logits (`return_hidden=True`),
               so losses over the vocabulary run a chunk of tokens at a time (train.loss_chunk_tokens).

Each family also counts its own training compute (`flops_per_token`, `flops_per_pair`): FLOPs of one forward and
backward pass, 6 per parameter that multiplies a token (2 forward, 4 backward) plus what attention adds, the
convention of nanoGPT and PaLM (appendix B). lmjax.report puts runs on a compute axis with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Iterable, Mapping

import ml_collections

from lmjax import config as config_lib

DTYPES = ("float32", "bfloat16", "float16")


def multiplying_params(params: Mapping[str, Any], lookups: Iterable[tuple[str, ...]] = ()) -> int:
  """Parameters that multiply the tokens: every leaf of `params` (arrays or ShapeDtypeStructs) except the lookup
  tables at the paths in `lookups` (an embedding row is read, not multiplied); paths the tree lacks are skipped."""
  def size(tree: Any) -> int:
    if isinstance(tree, Mapping):
      return sum(size(v) for v in tree.values())
    return math.prod(tree.shape)
  total = size(params)
  for path in lookups:
    node: Any = params
    for key in path:
      node = node.get(key) if isinstance(node, Mapping) else None
    if node is not None:
      total -= size(node)
  return total


@dataclasses.dataclass(frozen=True)
class FitResult:
  """What a fit-only model reports instead of training: metrics by split (at step 1) and generated samples."""
  metrics: dict[str, dict[str, float]]
  samples: list[str]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The fields every architecture has. `vocab_size` comes from the tokenizer, not from the config."""
  vocab_size: int = 0
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  init_std: float = 0.02
  dropout: float = 0.0

  module: ClassVar[Any] = None  # the Flax module class (or fitted model class) this config builds
  interface: ClassVar[str] = "next_token"
  attention: ClassVar[bool] = False
  decodes: ClassVar[bool] = False
  sows_layers: ClassVar[bool] = False
  fit_only: ClassVar[bool] = False
  classifies: ClassVar[bool] = False  # has a sequence_classifier (task='classification' fine-tunes it)
  returns_hidden: ClassVar[bool] = False
  registered_name: ClassVar[str] = ""

  # --- the config section ---------------------------------------------------------------------------------------

  @classmethod
  def section_fields(cls) -> dict[str, Any]:
    """{field: default} of the `model` section this family reads."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "vocab_size"}

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict, vocab_size: int) -> "ModelConfig":
    """The frozen config from `config.model` (fields of other families are ignored)."""
    return cls.from_fields(vocab_size=vocab_size, **{k: section[k] for k in cls.section_fields() if k in section})

  @classmethod
  def from_fields(cls, **fields: Any) -> "ModelConfig":
    """From flat fields named as in the config section (what tests and converters write)."""
    return cls(**fields)

  def flat_fields(self) -> dict[str, Any]:
    """The inverse of from_fields."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def replace(self, **fields: Any) -> "ModelConfig":
    return type(self).from_fields(**{**self.flat_fields(), **fields})

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    """Range checks of the fields only this family declares; run on every config, chosen or not, so a bad value
    never waits for the day it is used."""
    del cfg

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    """Checks config.model for this family (called only when model.name picks it)."""
    config_lib.one_of(cfg, "model.dtype", DTYPES)
    config_lib.one_of(cfg, "model.param_dtype", DTYPES)
    config_lib.at_least(cfg, "model.init_std", 0.0, strict=True)
    config_lib.in_unit_interval(cfg, "model.dropout")

  @classmethod
  def max_context(cls, section: ml_collections.ConfigDict) -> int | None:
    """The longest sequence the model can place (a learned position table), or None when nothing limits it."""
    del section
    return None

  # --- the model ----------------------------------------------------------------------------------------------------

  @property
  def name(self) -> str:
    return self.registered_name

  def build(self) -> Any:
    return self.module(self)

  def context_limit(self) -> int | None:
    """max_context of this frozen config."""
    return None

  # --- fine-tuning (task='classification', lmjax.init_from) ----------------------------------------------------

  def sequence_classifier(self, num_outputs: int) -> Any:
    """A module (tokens_BL, token_types_BL, segment_ids_BL, deterministic) -> [B, num_outputs] float32 logits
    over whole sequences, built on this family's pretrained body; None: the family classifies nothing."""
    del num_outputs
    return None

  @classmethod
  def pretrained_subtrees(cls, params: dict[str, Any]) -> dict[str, Any]:
    """A pretraining run's parameters as the subtrees of this family's fine-tuning models that start from them
    (the rest, a task head, starts fresh)."""
    del params
    return {}
  # --- training compute -------------------------------------------------------------------------------------------

  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """Training FLOPs (forward and backward) per token, trained in windows of seq_len tokens; `params` is the
    parameter tree (arrays or shapes). None: this family does not count them (the default), and reports leave its
    compute columns empty."""
    del params, seq_len
    return None

  def flops_per_pair(self, params: Any, source_len: int, target_len: int) -> float | None:
    """Training FLOPs of one (source, target) pair padded to these lengths, for sequence-to-sequence families;
    None (the default) for the others."""
    del params, source_len, target_len
    return None
