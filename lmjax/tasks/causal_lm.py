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
from lmjax.data import pipeline
from lmjax.data.tokenizers import Tokenizer
from lmjax.metrics import language_model_summary
from lmjax.models import model_config
from lmjax.models.base import FitResult, ModelConfig
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


@TASKS.register("causal_lm")
@dataclasses.dataclass(frozen=True)
class CausalLmTask(Task):
  """Batches are dicts of [B, L] arrays: inputs, targets, segment_ids, positions, loss_mask."""
  model: Any
  seq_len: int
  token_bytes_V: jax.Array | None = None  # UTF-8 bytes per token id, for bits per byte
  token_chars_V: jax.Array | None = None  # characters per token id, for bits per character
  fits: bool = False  # the model is fitted in one pass (model.fit) instead of trained
  family_config: ModelConfig | None = None  # the model's frozen config, which counts its training FLOPs

  model_interface: ClassVar[str] = "next_token"
  accepts_fit_only: ClassVar[bool] = True
  generates_text: ClassVar[bool] = True
  evaluates_other_lengths: ClassVar[bool] = True
  scores_test_split: ClassVar[bool] = True

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> LmData:
    d = config.data
    test = pipeline.tokenize_split(d, d.test_split, tokenizer, data_dir) if d.test_split else None
    return LmData(config, pipeline.tokenize_split(d, d.train_split, tokenizer, data_dir),
                  pipeline.tokenize_split(d, d.eval_split, tokenizer, data_dir), test)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: TaskData | None = None) -> "CausalLmTask":
    cfg = model_config(config, vocab.size)
    as_array = lambda x: None if x is None else jnp.asarray(x)
    return cls(cfg.build(), config.data.seq_len, as_array(vocab.token_bytes_V), as_array(vocab.token_chars_V),
               fits=cfg.fit_only, family_config=cfg)

  def fit(self, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data: LmData) -> FitResult | None:
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

  def logits(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None) -> jax.Array:
    rngs = {"dropout": rng} if rng is not None else None
    return self.model.apply({"params": params}, batch["inputs"], positions_BL=batch["positions"],
                            segment_ids_BL=batch["segment_ids"], deterministic=deterministic, rngs=rngs)

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits_BLV = self.logits(params, batch, deterministic=False, rng=rng)
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
    mask_BL = batch["loss_mask"]
    tokens = jnp.maximum(mask_BL.sum(), 1.0)
    loss = (nll_BL * mask_BL).sum() / tokens
    return loss, {"loss": loss, "tokens": mask_BL.sum()}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    logits_BLV = self.logits(params, batch, deterministic=True)
    targets_BL, mask_BL = batch["targets"], batch["loss_mask"]
    nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
    sums = {"nll": (nll_BL * mask_BL).sum(), "tokens": mask_BL.sum(),
            "correct": ((logits_BLV.argmax(-1) == targets_BL) * mask_BL).sum()}
    if self.token_bytes_V is not None:
      sums["bytes"] = (self.token_bytes_V[targets_BL] * mask_BL).sum()
    if self.token_chars_V is not None:
      sums["chars"] = (self.token_chars_V[targets_BL] * mask_BL).sum()
    return sums

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    return language_model_summary(sums)
