"""Causal language modelling: predict token t+1 from tokens <= t, within each packed document."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmjax.config import parse_lengths
from lmjax.data import mixture, pipeline, sources, streaming
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import Tokenizer
from lmjax.metrics import language_model_summary
from lmjax.models import lora, model_config
from lmjax.models.base import FitResult, ModelConfig
from lmjax.models.vocab_head import token_stats
from lmjax.registry import TASKS
from lmjax.tasks.base import Batch, Task, TaskData, VocabInfo

BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "segment_ids": jnp.int32, "positions": jnp.int32,
                "loss_mask": jnp.float32}


@dataclasses.dataclass(frozen=True)
class LmData(TaskData):
  """The tokenized train and eval splits: windows of data.seq_len tokens (lmjax.data.pipeline); with
  data.test_split, a test split too."""
  config: ml_collections.ConfigDict
  train_tokens: pipeline.TokenizedSplit
  eval_tokens: pipeline.TokenizedSplit
  test_tokens: pipeline.TokenizedSplit | None = None

  @property
  def summary(self) -> str:
    return f"{self.train_tokens.num_tokens} train tokens, {self.eval_tokens.num_tokens} eval tokens"

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    d, t = self.config.data, self.config.train
    return pipeline.make_train_dataset(self.train_tokens, d.seq_len, t.batch_size, seed=d.shuffle_seed,
                                       process_index=process_index, process_count=process_count,
                                       sampling=d.sampling)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    """'eval' at data.seq_len, plus 'eval_lenN' for each train.extra_eval_seq_lens (length extrapolation), and
    'test' (at data.seq_len) with data.test_split."""
    t = self.config.train
    def at(seq_len: int, tokens: pipeline.TokenizedSplit | None = None) -> list[Batch]:
      return pipeline.make_eval_batches(tokens or self.eval_tokens, seq_len, t.eval_batch_size or t.batch_size,
                                        max_batches=t.eval_batches or None, process_index=process_index,
                                        process_count=process_count)
    sets = {"eval": at(self.config.data.seq_len)}
    for length in parse_lengths(t.extra_eval_seq_lens):
      sets[f"eval_len{length}"] = at(length)
    if self.test_tokens is not None:
      sets["test"] = at(self.config.data.seq_len, self.test_tokens)
    return sets


@dataclasses.dataclass(frozen=True)
class SourcePart:
  """One source of a mixture (or the one streamed source): its train tokens or stream, and its eval tokens."""
  name: str
  weight: float
  section: ml_collections.ConfigDict  # its data section
  train: Any  # pipeline.TokenizedSplit, or a streamed sources.Split
  eval_tokens: pipeline.TokenizedSplit


@dataclasses.dataclass(frozen=True)
class MixedLmData(TaskData):
  """Windows from several weighted sources (data.mixture) or from a stream (lmjax.data.mixture, .streaming).
  Eval: 'eval' over every source's validation windows together, and with a mixture 'eval/<source>' for each."""
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  parts: tuple[SourcePart, ...]
  per_source: bool  # a mixture: report each source's eval split as well

  @property
  def summary(self) -> str:
    describe = lambda t: "streamed" if isinstance(t, sources.Split) else f"{t.num_tokens} train tokens"
    return "; ".join(f"{p.name} (weight {p.weight:.3g}): {describe(p.train)}, {p.eval_tokens.num_tokens} eval "
                     f"tokens" for p in self.parts)

  def _row_sources(self, process_index: int, process_count: int) -> list[Any]:
    d = self.config.data
    out = []
    for part in self.parts:
      if isinstance(part.train, sources.Split):
        out.append(streaming.StreamWindows(part.train.dataset(process_index, process_count), part.section.text_key,
                                           self.tokenizer, d.seq_len, f"{part.name} ({part.train})"))
      else:
        out.append(mixture.IndexedRows(pipeline.window_rows(part.train, d.seq_len, d.shuffle_seed, d.sampling).rows))
    return out

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    t = self.config.train
    pipeline._check_sharding(t.batch_size, process_index, process_count, "train.batch_size")  # pylint: disable=protected-access
    self._row_sources(process_index, process_count)  # a source too short for one window fails now, not later
    plan = mixture.Plan([p.weight for p in self.parts], t.batch_size, self.config.data.shuffle_seed)
    return mixture.MixtureDataset(plan, lambda: self._row_sources(process_index, process_count), process_index,
                                  process_count)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    t = self.config.train
    sets: dict[str, list[Batch]] = {}
    for length in [self.config.data.seq_len, *parse_lengths(t.extra_eval_seq_lens)]:
      name = "eval" if length == self.config.data.seq_len else f"eval_len{length}"
      sets[name] = []
      for part in self.parts:
        batches = pipeline.make_eval_batches(part.eval_tokens, length, t.eval_batch_size or t.batch_size,
                                             max_batches=t.eval_batches or None, process_index=process_index,
                                             process_count=process_count)
        sets[name] += batches
        if self.per_source and name == "eval":
          sets[f"eval/{part.name}"] = batches
    return sets


def _eval_tokens(config: ml_collections.ConfigDict, section: ml_collections.ConfigDict, tokenizer: Tokenizer,
                 data_dir: Path, name: str) -> pipeline.TokenizedSplit:
  if not sources.streams(section):
    return pipeline.tokenize_split(section, section.eval_split, tokenizer, data_dir)
  t = config.train
  longest = max([config.data.seq_len, *parse_lengths(t.extra_eval_seq_lens)])
  wanted = t.eval_batches * (t.eval_batch_size or t.batch_size) * longest + 1 if t.eval_batches else None
  split = sources.open_split(section, section.eval_split, data_dir)
  return streaming.head_tokens(split.records(), section.text_key, tokenizer, wanted, f"{name} ({split})")


def prepare_mixed(config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> MixedLmData:
  """Each source's train tokens (or stream) and eval tokens, each with its own cache."""
  parts = []
  named = sources.named_sources(config.data)
  for name, weight, section in named:
    if sources.streams(section):
      train = sources.open_split(section, section.train_split, data_dir)
    else:
      train = pipeline.tokenize_split(section, section.train_split, tokenizer, data_dir)
    parts.append(SourcePart(name, weight, section, train, _eval_tokens(config, section, tokenizer, data_dir, name)))
  return MixedLmData(config, tokenizer, tuple(parts), per_source=bool(config.data.mixture.strip()))


@TASKS.register("causal_lm")
@dataclasses.dataclass(frozen=True)
class CausalLmTask(Task):
  """Batches are dicts of [B, L] arrays: inputs, targets, segment_ids, positions, loss_mask."""
  model: Any
  seq_len: int
  token_bytes_V: jax.Array | None = None  # UTF-8 bytes per token id, for bits per byte
  token_chars_V: jax.Array | None = None  # characters per token id, for bits per character
  fits: bool = False  # the model is fitted in one pass (model.fit) instead of trained
  loss_chunk: int = 0  # train.loss_chunk_tokens: 0, the whole logits at once (lmjax/models/vocab_head.py)
  family_config: ModelConfig | None = None  # the model's frozen config, which counts its training FLOPs

  model_interface: ClassVar[str] = "next_token"
  accepts_fit_only: ClassVar[bool] = True
  generates_text: ClassVar[bool] = True
  evaluates_other_lengths: ClassVar[bool] = True
  chunked_loss: ClassVar[bool] = True
  mixes_sources: ClassVar[bool] = True
  supports_lora: ClassVar[bool] = True
  sections: ClassVar[tuple[str, ...]] = ("finetune",)  # init_from (a decoder run to continue) and lora
  scores_test_split: ClassVar[bool] = True

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                   data_dir: Path) -> LmData | MixedLmData:
    d = config.data
    if d.mixture.strip() or sources.streams(d):
      return prepare_mixed(config, tokenizer, data_dir)
    test = pipeline.tokenize_split(d, d.test_split, tokenizer, data_dir) if d.test_split else None
    return LmData(config, pipeline.tokenize_split(d, d.train_split, tokenizer, data_dir),
                  pipeline.tokenize_split(d, d.eval_split, tokenizer, data_dir), test)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: TaskData | None = None) -> "CausalLmTask":
    cfg = model_config(config, vocab.size)
    as_array = lambda x: None if x is None else jnp.asarray(x)
    model = cfg.build()
    if not cfg.fit_only:  # adapters on its dense layers when finetune.lora.rank > 0
      tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
      model = lora.adapt(model, lora.LoraSettings.from_config(config), (tokens,))
    return cls(model, config.data.seq_len, as_array(vocab.token_bytes_V), as_array(vocab.token_chars_V),
               fits=cfg.fit_only, loss_chunk=config.train.loss_chunk_tokens, family_config=cfg)

  def fit(self, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data: LmData) -> FitResult | None:
    if self.fits and not isinstance(data, LmData):
      raise DataError(f"model.name={config.model.name!r} is fitted on one cached source: set data.mixture='' and "
                      f"data.hf_streaming=False")
    if not self.fits:
      return None
    return self.model.fit(config, tokenizer, data.train_tokens, data.eval_tokens, test_tokens=data.test_tokens)

  def train_flops(self, params: Any, batch_size: int) -> float | None:
    if self.family_config is None:
      return None
    per_token = self.family_config.flops_per_token(params, self.seq_len)
    return None if per_token is None else per_token * batch_size * self.seq_len

  def init_args(self) -> tuple[jax.Array, ...]:
    return (jnp.zeros((1, self.seq_len), jnp.int32),)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size, self.seq_len), dt) for k, dt in BATCH_DTYPES.items()}

  def param_groups(self, params: Any) -> Any:
    """With LoRA (finetune.lora.rank > 0) only the adapters train; otherwise one group."""
    return lora.param_groups(params) if lora.settings_of(self.model) is not None else None

  def logits(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None) -> jax.Array:
    """Logits [B, L, V]; with train.loss_chunk_tokens, a Hidden that `token_stats` projects chunk by chunk."""
    rngs = {"dropout": rng} if rng is not None else None
    hidden = {"return_hidden": True} if self.loss_chunk else {}
    return self.model.apply({"params": params}, batch["inputs"], positions_BL=batch["positions"],
                            segment_ids_BL=batch["segment_ids"], deterministic=deterministic, rngs=rngs, **hidden)

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits_BLV = self.logits(params, batch, deterministic=False, rng=rng)
    nll_BL = token_stats(optax.softmax_cross_entropy_with_integer_labels, [logits_BLV], [batch["targets"]],
                         chunk=self.loss_chunk)
    mask_BL = batch["loss_mask"]
    tokens = jnp.maximum(mask_BL.sum(), 1.0)
    loss = (nll_BL * mask_BL).sum() / tokens
    return loss, {"loss": loss, "tokens": mask_BL.sum()}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    logits_BLV = self.logits(params, batch, deterministic=True)
    targets_BL, mask_BL = batch["targets"], batch["loss_mask"]
    nll_BL, hit_BL = token_stats(lambda logits, targets: (optax.softmax_cross_entropy_with_integer_labels(
        logits, targets), logits.argmax(-1) == targets), [logits_BLV], [targets_BL], chunk=self.loss_chunk)
    sums = {"nll": (nll_BL * mask_BL).sum(), "tokens": mask_BL.sum(), "correct": (hit_BL * mask_BL).sum()}
    if self.token_bytes_V is not None:
      sums["bytes"] = (self.token_bytes_V[targets_BL] * mask_BL).sum()
    if self.token_chars_V is not None:
      sums["chars"] = (self.token_chars_V[targets_BL] * mask_BL).sum()
    return sums

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    return language_model_summary(sums)
