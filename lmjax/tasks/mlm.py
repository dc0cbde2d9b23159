"""BERT pretraining: masked-LM plus next-sentence prediction on the bidirectional encoder (model.name='bert').

The loss is BERT's: the mean cross-entropy over the masked positions of the batch plus the mean NSP
cross-entropy over its examples (without mlm.nsp, the MLM term alone). Its weight for gradient accumulation
(aux["tokens"]) is the number of masked positions, so with train.microbatches > 1 the MLM term is exactly the
large batch's mean over masked positions, while each slice's NSP mean is weighted by its share of the masked
positions rather than of the examples: the same when every example has as many predictions (long text, or a
mlm.max_predictions cap that binds), close otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lmjax import config as config_lib
from lmjax import config_mixture
from lmjax.data import mixture, mlm_pairs, sources
from lmjax.data.tokenizers import Tokenizer
from lmjax.models import model_config
from lmjax.models.vocab_head import token_stats
from lmjax.registry import TASKS
from lmjax.tasks.base import Batch, Task, TaskData, VocabInfo


def _validate(cfg: ml_collections.ConfigDict) -> None:
  if not config_lib.reads(cfg, "mlm"):
    return
  k = cfg.mlm
  if not 0.0 < k.mask_prob < 1.0:
    config_lib.fail("mlm.mask_prob", k.mask_prob, "must be strictly between 0 and 1 (BERT: 0.15)")
  for field in ("mask_token_prob", "random_token_prob", "short_seq_prob"):
    config_lib.in_unit_interval(cfg, f"mlm.{field}", closed=True)
  if k.mask_token_prob + k.random_token_prob > 1.0:
    config_lib.fail("mlm.random_token_prob", k.random_token_prob, f"plus mlm.mask_token_prob={k.mask_token_prob} "
                    f"exceeds 1; the rest of the predicted tokens are kept, so the two must sum to at most 1 (BERT: "
                    f"0.8 and 0.1)")
  config_lib.at_least(cfg, "mlm.max_predictions", 0)
  entries = config_mixture.parse_mixture(cfg.data.mixture) if cfg.data.mixture.strip() else []
  if cfg.data.hf_streaming or any(e.overrides.get("hf_streaming", False) for e in entries):
    config_lib.fail("data.hf_streaming", True, "task='mlm' draws sentence pairs from anywhere in the split, so it "
                    "reads a prepared split: set data.hf_streaming=False (the split is then downloaded and cached)")
  specials = 3 if k.nsp else 2  # [CLS] A [SEP] B [SEP], or [CLS] A [SEP]
  if cfg.data.seq_len < specials + 2:
    config_lib.fail("data.seq_len", cfg.data.seq_len, f"task={cfg.task!r} needs room for {specials} special tokens "
                    f"and some text: use at least {specials + 2}, e.g. 128")
  if k.nsp and cfg.model.type_vocab_size < 2:
    config_lib.fail("model.type_vocab_size", cfg.model.type_vocab_size, "mlm.nsp=True gives segments A and B two "
                    "token types: set it to 2, or mlm.nsp=False")


# BERT pretraining examples, [CLS] A [SEP] B [SEP] (see lmjax/data/mlm_pairs.py).
config_lib.register_section("mlm", {
    "mask_prob": 0.15,  # fraction of the text tokens of an example that the loss predicts
    "mask_token_prob": 0.8,  # of those, replaced by <mask>; random_token_prob by a random token; the rest kept
    "random_token_prob": 0.1,
    "max_predictions": 0,  # cap on predicted tokens per example; 0: no cap
    "nsp": True,  # next-sentence prediction: B follows A half of the time; False: single segments, no NSP loss
    "short_seq_prob": 0.1,  # examples given a random shorter target length, so short inputs are seen too
}, _validate)


@dataclasses.dataclass(frozen=True)
class MlmData(TaskData):
  """Sentence-split train and eval splits and how examples are cut from them (lmjax.data.mlm_pairs)."""
  config: ml_collections.ConfigDict
  settings: mlm_pairs.MlmSettings
  train_split: mlm_pairs.SentenceSplit
  eval_split: mlm_pairs.SentenceSplit

  @property
  def summary(self) -> str:
    describe = lambda s: f"{s.num_tokens} tokens in {s.num_sentences} sentences of {s.num_documents} documents"
    return f"train {describe(self.train_split)}, eval {describe(self.eval_split)}"

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    return mlm_pairs.make_train_dataset(self.train_split, self.settings, self.config.train.batch_size,
                                        seed=self.config.data.shuffle_seed, process_index=process_index,
                                        process_count=process_count)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    """train.eval_batches fixed batches; 0: one example per sentence of the eval split."""
    t = self.config.train
    batch_size = t.eval_batch_size or t.batch_size
    num_batches = t.eval_batches or math.ceil(self.eval_split.num_sentences / batch_size)
    return {"eval": mlm_pairs.make_eval_batches(self.eval_split, self.settings, batch_size, num_batches,
                                                seed=self.config.data.shuffle_seed, process_index=process_index,
                                                process_count=process_count)}


@dataclasses.dataclass(frozen=True)
class MixedMlmData(TaskData):
  """data.mixture: each source's sentence split (own cache); rows drawn by weight (lmjax.data.mixture), source i
  with its own example stream. Eval: 'eval' over every source's eval batches, and 'eval/<source>' for each."""
  config: ml_collections.ConfigDict
  settings: mlm_pairs.MlmSettings
  parts: tuple[tuple[str, float, mlm_pairs.SentenceSplit, mlm_pairs.SentenceSplit], ...]

  @property
  def summary(self) -> str:
    return "; ".join(f"{name} (weight {w:.3g}): {tr.num_tokens} train tokens, {ev.num_tokens} eval tokens"
                     for name, w, tr, ev in self.parts)

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    t, seed = self.config.train, self.config.data.shuffle_seed
    for _, _, split, _ in self.parts:
      mlm_pairs.check_split(split, self.settings)
    def rows(i: int, split: mlm_pairs.SentenceSplit):
      return lambda index: mlm_pairs.example_batch(split, self.settings, seed, index, stream=2 * i + 2)
    make = lambda: [mixture.IndexedRows(rows(i, split)) for i, (_, _, split, _) in enumerate(self.parts)]
    plan = mixture.Plan([w for _, w, _, _ in self.parts], t.batch_size, seed)
    return mixture.MixtureDataset(plan, make, process_index, process_count)

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    t = self.config.train
    batch_size = t.eval_batch_size or t.batch_size
    sets: dict[str, list[Batch]] = {"eval": []}
    for name, _, _, split in self.parts:
      num_batches = t.eval_batches or math.ceil(split.num_sentences / batch_size)
      sets[f"eval/{name}"] = mlm_pairs.make_eval_batches(split, self.settings, batch_size, num_batches,
                                                         seed=self.config.data.shuffle_seed,
                                                         process_index=process_index, process_count=process_count)
      sets["eval"] += sets[f"eval/{name}"]
    return sets


@TASKS.register("mlm")
@dataclasses.dataclass(frozen=True)
class MlmTask(Task):
  """Batches as described in lmjax/data/mlm_pairs.py: inputs, token_types, segment_ids [B, L]; mlm_positions,
  mlm_targets, mlm_weights [B, P]; nsp_labels [B]."""
  model: Any
  settings: mlm_pairs.MlmSettings
  loss_chunk: int = 0  # train.loss_chunk_tokens (lmjax/models/vocab_head.py)

  model_interface: ClassVar[str] = "encoder"
  sections: ClassVar[tuple[str, ...]] = ("mlm",)
  chunked_loss: ClassVar[bool] = True
  mixes_sources: ClassVar[bool] = True
  loss_unit: ClassVar[str] = "nats per masked token, plus nats per pair with mlm.nsp"

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                   data_dir: Path) -> MlmData | MixedMlmData:
    d = config.data
    settings = mlm_pairs.MlmSettings.from_config(config, tokenizer.vocab_size)
    if d.mixture.strip():
      parts = tuple((name, weight, mlm_pairs.tokenize_sentences(s, s.train_split, tokenizer, data_dir),
                     mlm_pairs.tokenize_sentences(s, s.eval_split, tokenizer, data_dir))
                    for name, weight, s in sources.named_sources(d))
      return MixedMlmData(config, settings, parts)
    return MlmData(config, mlm_pairs.MlmSettings.from_config(config, tokenizer.vocab_size),
                   mlm_pairs.tokenize_sentences(d, d.train_split, tokenizer, data_dir),
                   mlm_pairs.tokenize_sentences(d, d.eval_split, tokenizer, data_dir))

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo, data: TaskData | None = None) -> "MlmTask":
    return cls(model_config(config, vocab.size).build(), mlm_pairs.MlmSettings.from_config(config, vocab.size),
               config.train.loss_chunk_tokens)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(shape, dtype)
            for k, (shape, dtype) in mlm_pairs.batch_shapes(self.settings, batch_size).items()}

  def init_args(self) -> tuple[jax.Array, ...]:
    b = self.abstract_batch(1)
    zeros = lambda key: jnp.zeros(b[key].shape, b[key].dtype)
    return zeros("inputs"), zeros("token_types"), jnp.ones(b["segment_ids"].shape, jnp.int32), zeros("mlm_positions")

  def outputs(self, params, batch, *, deterministic: bool, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    rngs = {"dropout": rng} if rng is not None else None
    hidden = {"return_hidden": True} if self.loss_chunk else {}
    return self.model.apply({"params": params}, batch["inputs"], batch["token_types"], batch["segment_ids"],
                            batch["mlm_positions"], deterministic=deterministic, rngs=rngs, **hidden)

  def _nll(self, out: dict[str, jax.Array], batch) -> tuple[jax.Array, jax.Array]:
    """Per-prediction MLM [B, P] and per-example NSP [B] cross-entropies."""
    mlm_BP = token_stats(optax.softmax_cross_entropy_with_integer_labels, [out["mlm_logits"]],
                         [batch["mlm_targets"]], chunk=self.loss_chunk)
    nsp_B = optax.softmax_cross_entropy_with_integer_labels(out["nsp_logits"], batch["nsp_labels"])
    return mlm_BP, nsp_B

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    mlm_BP, nsp_B = self._nll(self.outputs(params, batch, deterministic=False, rng=rng), batch)
    weights_BP = batch["mlm_weights"]
    masked = weights_BP.sum()
    mlm_loss = (mlm_BP * weights_BP).sum() / jnp.maximum(masked, 1.0)
    aux = {"mlm_loss": mlm_loss}
    loss = mlm_loss
    if self.settings.nsp:
      aux["nsp_loss"] = nsp_B.mean()
      loss = loss + aux["nsp_loss"]
    return loss, {**aux, "loss": loss, "tokens": masked}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    out = self.outputs(params, batch, deterministic=True)
    nsp_B = optax.softmax_cross_entropy_with_integer_labels(out["nsp_logits"], batch["nsp_labels"])
    mlm_BP, hit_BP = token_stats(lambda logits, targets: (optax.softmax_cross_entropy_with_integer_labels(
        logits, targets), logits.argmax(-1) == targets), [out["mlm_logits"]], [batch["mlm_targets"]],
        chunk=self.loss_chunk)
    weights_BP = batch["mlm_weights"]
    return {"mlm_nll": (mlm_BP * weights_BP).sum(), "mlm_tokens": weights_BP.sum(),
            "mlm_correct": (hit_BP * weights_BP).sum(),
            "nsp_nll": nsp_B.sum(), "examples": jnp.asarray(nsp_B.shape[0], jnp.float32),
            "nsp_correct": (out["nsp_logits"].argmax(-1) == batch["nsp_labels"]).sum()}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    tokens, examples = max(sums["mlm_tokens"], 1.0), max(sums["examples"], 1.0)
    mlm_loss = sums["mlm_nll"] / tokens
    out = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_perplexity": float(np.exp(min(mlm_loss, 80.0))),
           "mlm_accuracy": sums["mlm_correct"] / tokens}
    if self.settings.nsp:
      out["nsp_loss"] = sums["nsp_nll"] / examples
      out["nsp_accuracy"] = sums["nsp_correct"] / examples
      out["loss"] = mlm_loss + out["nsp_loss"]
    out["tokens"] = tokens
    return out
