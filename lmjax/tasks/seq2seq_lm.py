"""Sequence to sequence with a decoder-only model (task='seq2seq_lm'): the source, a separator, then the target.

The same pairs, splits, metrics and predictions as task='seq2seq' (its config section: seq2seq.*), for a GPT
instead of the encoder-decoder, so the two can be compared on one data set (experiments/summarization). Each pair
is one row, `<bos> source <sep> target <eos>`, trained as a causal LM whose loss counts only the target tokens
and the closing <eos>: the model reads the source as a prompt and learns to continue it with the target. The
source is cut to seq2seq.source_max_len - 1 tokens (the separator makes it source_max_len) and the target to
seq2seq.target_max_len - 1 (plus <eos>), so a row holds at most source_max_len + target_max_len tokens. Eval
decodes `<bos> source <sep>` with beam search (seq2seq.beam_size, length_penalty, max_decode_len) and scores the
text up to <eos> like task='seq2seq' does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmjax import config as config_lib
from lmjax import decode
from lmjax.data import parallel
from lmjax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, SEP_ID, Tokenizer
from lmjax.models import family, model_config
from lmjax.models.base import ModelConfig
from lmjax.registry import MODELS, TASKS
from lmjax.tasks.base import Task, TaskData, VocabInfo
from lmjax.tasks.seq2seq import Seq2seqData, pair_texts, prepare_pairs

TRAIN_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def encode_rows(pairs: Sequence[parallel.Pair], tokenizer: Tokenizer, source_len: int,
                target_len: int) -> dict[str, np.ndarray]:
  """One row per pair, [N, S + T] (S = source_len, T = target_len), and its prompt [N, S + 1]:

    inputs, targets   <bos> source <sep> target and, shifted by one, source <sep> target <eos>
    loss_mask         1 on the targets that are the target's tokens or its <eos>
    segment_ids       1 on real tokens, 0 on padding; positions count from 0
    prompt            <bos> source <sep>, right-padded, and prompt_length its length
  """
  n, width = len(pairs), source_len + target_len
  out = {k: np.zeros((n, width), np.float32 if k == "loss_mask" else np.int32) for k in TRAIN_KEYS}
  out["prompt"] = np.full((n, source_len + 1), PAD_ID, np.int32)
  out["prompt_length"] = np.zeros((n,), np.int32)
  for i, (source, target) in enumerate(pairs):
    prompt = [BOS_ID, *tokenizer.encode(source)[: source_len - 1].tolist(), SEP_ID]
    sequence = prompt + [*tokenizer.encode(target)[: target_len - 1].tolist(), EOS_ID]
    inputs, targets = sequence[:-1], sequence[1:]
    out["inputs"][i, :len(inputs)], out["targets"][i, :len(targets)] = inputs, targets
    out["segment_ids"][i, :len(inputs)] = 1
    out["positions"][i, :len(inputs)] = np.arange(len(inputs))
    out["loss_mask"][i, len(prompt) - 1:len(targets)] = 1.0  # the token after <sep> onwards
    out["prompt"][i, :len(prompt)], out["prompt_length"][i] = prompt, len(prompt)
  return out


@TASKS.register("seq2seq_lm")
@dataclasses.dataclass(frozen=True)
class Seq2seqLmTask(Task):
  """Train batches: TRAIN_KEYS [B, S + T]; eval batches also prompt [B, S + 1], prompt_length [B], index [B]."""
  model: Any
  source_len: int
  target_len: int
  label_smoothing: float
  beam_size: int
  length_penalty: float
  max_decode_len: int
  eval_decode_examples: int
  family_config: ModelConfig | None = None  # the model's frozen config, which counts its training FLOPs

  model_interface: ClassVar[str] = "next_token"
  predicts: ClassVar[bool] = True
  sections: ClassVar[tuple[str, ...]] = ("seq2seq",)
  loss_unit: ClassVar[str] = "nats per target token, label-smoothed"

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    s, m = config.seq2seq, config.model
    chosen = family(m.name)
    if not chosen.decodes:
      decoding = [n for n, f in MODELS.items() if cls.trains(f) and f.decodes]
      config_lib.fail("model.name", m.name, f"task='seq2seq_lm' decodes its targets over a key/value cache; "
                      f"choose a model that does: {', '.join(decoding)}")
    if s.pack:
      config_lib.fail("seq2seq.pack", s.pack, "task='seq2seq_lm' holds one pair per row; set it to False")
    context = chosen.max_context(m)
    longest = s.source_max_len + 1 + (s.max_decode_len or s.target_max_len)
    if context is not None and longest > context:
      config_lib.fail("model.max_len", m.max_len, f"a decoded row holds up to seq2seq.source_max_len + 1 + "
                      f"{s.max_decode_len or s.target_max_len} new tokens = {longest} positions; raise "
                      f"model.max_len or lower the seq2seq lengths")

  @classmethod
  def tokenizer_texts(cls, config: ml_collections.ConfigDict, data_dir: Path) -> Iterator[str]:
    return pair_texts(config, data_dir)

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> Seq2seqData:
    return prepare_pairs(config, tokenizer, data_dir, encode_rows, TRAIN_KEYS)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, vocab: VocabInfo,
             data: TaskData | None = None) -> "Seq2seqLmTask":
    s = config.seq2seq
    family_config = model_config(config, vocab.size)
    return cls(family_config.build(), s.source_max_len, s.target_max_len, s.label_smoothing, s.beam_size,
               s.length_penalty, s.max_decode_len or s.target_max_len, s.eval_decode_examples,
               family_config=family_config)

  @property
  def width(self) -> int:
    return self.source_len + self.target_len

  def init_args(self) -> tuple[jax.Array, ...]:
    return (jnp.zeros((1, self.width), jnp.int32),)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size, self.width), jnp.float32 if k == "loss_mask" else jnp.int32)
            for k in TRAIN_KEYS}

  def train_flops(self, params: Any, batch_size: int) -> float | None:
    if self.family_config is None:
      return None
    per_token = self.family_config.flops_per_token(params, self.width)
    return None if per_token is None else per_token * batch_size * self.width

  def _losses(self, params, batch, *, deterministic: bool,
              rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (smoothed, plain) cross-entropies and top-1 hits [B, L]."""
    rngs = {"dropout": rng} if rng is not None else None
    logits_BLV = self.model.apply({"params": params}, batch["inputs"], positions_BL=batch["positions"],
                                  segment_ids_BL=batch["segment_ids"], deterministic=deterministic, rngs=rngs)
    logp_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
    nll_BL = -jnp.take_along_axis(logp_BLV, batch["targets"][..., None], axis=-1)[..., 0]
    eps = self.label_smoothing
    smoothed_BL = (1.0 - eps) * nll_BL - eps * logp_BLV.mean(-1) if eps else nll_BL
    return smoothed_BL, nll_BL, (logits_BLV.argmax(-1) == batch["targets"]).astype(jnp.float32)

  def loss(self, params, batch, rng: jax.Array, frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    smoothed_BL, nll_BL, _ = self._losses(params, batch, deterministic=False, rng=rng)
    mask_BL = batch["loss_mask"]
    tokens = mask_BL.sum()
    loss = (smoothed_BL * mask_BL).sum() / jnp.maximum(tokens, 1.0)
    return loss, {"loss": loss, "nll": (nll_BL * mask_BL).sum() / jnp.maximum(tokens, 1.0), "tokens": tokens}

  def eval_sums(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    smoothed_BL, nll_BL, correct_BL = self._losses(params, batch, deterministic=True)
    mask_BL = batch["loss_mask"] * (batch["index"][:, None] >= 0)
    return {"smoothed": (smoothed_BL * mask_BL).sum(), "nll": (nll_BL * mask_BL).sum(), "tokens": mask_BL.sum(),
            "correct": (correct_BL * mask_BL).sum()}

  def summarize(self, sums: dict[str, float]) -> dict[str, float]:
    tokens = max(sums["tokens"], 1.0)
    nll = sums["nll"] / tokens
    return {"loss": sums["smoothed"] / tokens, "nll": nll, "perplexity": float(np.exp(min(nll, 80.0))),
            "accuracy": sums["correct"] / tokens, "tokens": tokens}

  def predict(self, params, batch, frozen: Any = None) -> dict[str, jax.Array]:
    """Beam search after each prompt, on batches holding one of the first eval_decode_examples pairs; the new
    tokens of row b start after its prompt_length[b] prompt tokens."""
    B, N = batch["prompt"].shape[0], self.max_decode_len
    lengths_B = batch["prompt_length"]

    def search():
      tokens_BWT, _ = decode.beam_search(decode.step_decoder(self.model), params, batch["prompt"],
                                         jnp.maximum(lengths_B, 1), beam_size=self.beam_size, max_new_tokens=N,
                                         alpha=self.length_penalty)
      return jnp.take_along_axis(tokens_BWT[:, 0], jnp.maximum(lengths_B, 1)[:, None] + jnp.arange(N), axis=1)

    wanted = jnp.any((batch["index"] >= 0) & (batch["index"] < self.eval_decode_examples))
    return {"tokens": jax.lax.cond(wanted, search, lambda: jnp.zeros((B, N), jnp.int32))}
