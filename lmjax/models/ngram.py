"""Count-based n-gram language model with interpolated Kneser-Ney smoothing (Chen & Goodman, 1998), in numpy.

    P_m(w | h) = max(c_m(h w) - D_m, 0) / c_m(h)  +  D_m * N1+(h .) / c_m(h) * P_{m-1}(w | h minus its first token)

for a context h of m-1 tokens, down to P_0(w) = 1 / V over the whole vocabulary. A context never seen at order m
(c_m(h) = 0) hands its mass to order m-1 unchanged. One discount per order, D_m = n1 / (n1 + 2 n2) with n_k the
number of order-m n-grams whose count is k (clipped to [0.05, 0.95]), so every distribution sums to one and gives
every token some probability.

The counts c_m: raw counts at the highest order; at lower orders the continuation count N1+(. h w), the number
of distinct tokens seen before "h w": a lower order is consulted for contexts the higher one knows little of, so
it should favour tokens that follow many contexts over tokens frequent after one. N-grams that begin with the
document's <bos> cannot be extended to the left, so they keep their raw counts (as in SRILM): a query's highest
order is the length of its available context plus one, and at the start of a document that context begins with
<bos>. Counts never cross documents.

N-grams are integer ids, order by order: the id of (h w) is the rank of id(h) * V + w among the distinct keys of
its order, so fitting is a handful of np.unique calls over the token stream and lookups are np.searchsorted.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import ml_collections
import numpy as np
from absl import logging

from lmjax import config as config_lib
from lmjax import metrics as metrics_lib
from lmjax.data import pipeline
from lmjax.data.tokenizers import BOS_ID, EOS_ID, Tokenizer
from lmjax.models.base import FitResult, ModelConfig
from lmjax.registry import MODELS

MIN_DISCOUNT, MAX_DISCOUNT = 0.05, 0.95


@dataclasses.dataclass(frozen=True)
class OrderTable:
  """The order-m counts c_m(h w) > 0, keyed by id(h) * V + w (sorted), and per-context totals."""
  keys: np.ndarray  # [E] int64, sorted; for m = 1, h is empty and id(h) = 0
  counts: np.ndarray  # [E] float64
  totals: np.ndarray  # [number of order-(m-1) ids] float64: c_m(h) = sum_w c_m(h w)
  types: np.ndarray  # [number of order-(m-1) ids] float64: N1+(h .), the tokens seen after h
  discount: float


@dataclasses.dataclass(frozen=True)
class KneserNey:
  vocab_size: int
  # sequence_keys[j] (j >= 2): the sorted distinct keys id(prefix) * V + last of the j-token sequences in the
  # training data; a j-sequence's id is its index there. 1-token sequences are their token id.
  sequence_keys: dict[int, np.ndarray]
  tables: dict[int, OrderTable]  # order m = 1 .. n

  @property
  def order(self) -> int:
    return len(self.tables)

  def context_ids(self, context_QC: np.ndarray, lengths_Q: np.ndarray) -> np.ndarray:
    """[Q, C+1]: column s is the id of the last s context tokens, -1 where unseen or longer than the context.

    context_QC is right-aligned: the token just before the target is in the last column.
    """
    Q, C = context_QC.shape
    V = self.vocab_size
    ids_QS = np.full((Q, C + 1), -1, np.int64)
    ids_QS[:, 0] = 0
    for s in range(1, C + 1):
      sid_Q = context_QC[:, C - s].astype(np.int64)  # the suffix of length s, built up from its first token
      for j in range(2, s + 1):
        keys = self.sequence_keys[j]
        if not keys.size:
          sid_Q = np.full(Q, -1, np.int64)
          break
        key_Q = sid_Q * V + context_QC[:, C - s + j - 1]
        pos_Q = np.minimum(np.searchsorted(keys, key_Q), keys.shape[0] - 1)
        sid_Q = np.where((sid_Q >= 0) & (keys[pos_Q] == key_Q), pos_Q, -1)
      ids_QS[:, s] = np.where(lengths_Q >= s, sid_Q, -1)
    return ids_QS

  def distributions(self, context_QC: np.ndarray, lengths_Q: np.ndarray) -> np.ndarray:
    """[Q, V] float64: P(. | context) for right-aligned contexts of lengths_Q <= n-1 tokens (others ignored)."""
    Q = context_QC.shape[0]
    V, n = self.vocab_size, self.order
    context_QC = context_QC[:, context_QC.shape[1] - min(n - 1, context_QC.shape[1]):]
    lengths_Q = np.minimum(lengths_Q, n - 1)
    ids_QS = self.context_ids(context_QC, lengths_Q)
    probs_QV = np.empty((Q, V))
    probs_QV[:] = self._unigram()
    for m in range(2, n + 1):
      table = self.tables[m]
      ctx_Q = ids_QS[:, m - 1] if m - 1 < ids_QS.shape[1] else np.full(Q, -1)
      rows = np.flatnonzero(ctx_Q >= 0)
      rows = rows[table.totals[ctx_Q[rows]] > 0]
      if not rows.size:
        continue
      ctx = ctx_Q[rows]
      total, gamma = table.totals[ctx], table.discount * table.types[ctx] / table.totals[ctx]
      probs_QV[rows] *= gamma[:, None]
      # The tokens seen after each context are one contiguous run of the sorted keys.
      lo = np.searchsorted(table.keys, ctx * V)
      hi = np.searchsorted(table.keys, (ctx + 1) * V)
      entry_row = np.repeat(np.arange(rows.size), hi - lo)
      entry = np.arange(entry_row.size) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo) + lo[entry_row]
      probs_QV[rows[entry_row], table.keys[entry] % V] += \
          (table.counts[entry] - table.discount) / total[entry_row]
    return probs_QV

  def _unigram(self) -> np.ndarray:
    t = self.tables[1]
    if not t.totals[0]:  # nothing to count: the uniform distribution
      return np.full(self.vocab_size, 1.0 / self.vocab_size)
    probs_V = np.full(self.vocab_size, t.discount * t.types[0] / t.totals[0] / self.vocab_size)
    probs_V[t.keys] += (t.counts - t.discount) / t.totals[0]
    return probs_V


def _discount(counts: np.ndarray) -> float:
  n1, n2 = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
  d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
  return float(np.clip(d, MIN_DISCOUNT, MAX_DISCOUNT))


def _table(keys: np.ndarray, counts: np.ndarray, num_contexts: int, V: int) -> OrderTable:
  keep = counts > 0
  keys, counts = keys[keep], counts[keep].astype(np.float64)
  ctx = keys // V
  return OrderTable(keys, counts, np.bincount(ctx, counts, minlength=num_contexts),
                    np.bincount(ctx, minlength=num_contexts).astype(np.float64), _discount(counts))


def fit(tokens: np.ndarray, doc_starts: np.ndarray, vocab_size: int, order: int) -> KneserNey:
  """Counts every n-gram (n <= order) that lies inside one document of the [bos] doc [eos] stream."""
  V = vocab_size
  tokens = np.asarray(tokens, np.int64)
  N = tokens.shape[0]
  doc_of = np.searchsorted(doc_starts, np.arange(N), side="right") - 1
  offset = np.arange(N) - np.asarray(doc_starts, np.int64)[doc_of]  # tokens before this one in its document
  is_target = offset > 0  # every token but the <bos> is predicted

  sequence_keys: dict[int, np.ndarray] = {}
  tables: dict[int, OrderTable] = {}
  prev_ids = tokens  # per position: id of the (j-1)-sequence ending there, -1 if it would cross a document start
  prev_count = V
  for j in range(2, order + 1):
    ends = np.flatnonzero(offset >= j - 1)
    keys, first, inverse, raw = np.unique(prev_ids[ends - 1] * V + tokens[ends], return_index=True,
                                          return_inverse=True, return_counts=True)
    ids = np.full(N, -1, np.int64)
    ids[ends] = inverse.reshape(-1)
    sequence_keys[j] = keys
    # Order j-1 gets continuation counts: each distinct j-sequence adds one to its last j-1 tokens.
    continuation = np.bincount(prev_ids[ends[first]], minlength=prev_count)
    tables[j - 1] = _lower_order_table(j - 1, sequence_keys, prev_ids, continuation, offset, V)
    prev_ids, prev_count = ids, keys.shape[0]
    last_raw = raw
  if order == 1:
    tables[1] = _table(np.arange(V), np.bincount(tokens[is_target], minlength=V), 1, V)
  else:
    num_contexts = sequence_keys[order - 1].shape[0] if order > 2 else V
    tables[order] = _table(sequence_keys[order], last_raw, num_contexts, V)
  return KneserNey(V, sequence_keys, tables)


def _lower_order_table(m: int, sequence_keys: dict[int, np.ndarray], ids: np.ndarray, continuation: np.ndarray,
                       offset: np.ndarray, V: int) -> OrderTable:
  """Order m < n: continuation counts, except raw counts for m-grams that begin with a document's <bos>."""
  if m == 1:
    return _table(np.arange(V), continuation, 1, V)
  at_start = np.flatnonzero(offset == m - 1)  # m-grams starting at <bos> end here
  raw_at_start = np.bincount(ids[at_start], minlength=continuation.shape[0])
  counts = np.where(raw_at_start > 0, raw_at_start, continuation)
  num_contexts = sequence_keys[m - 1].shape[0] if m > 2 else V
  return _table(sequence_keys[m], counts, num_contexts, V)


# --- scoring the windows the neural models are scored on ----------------------------------------------------------

def batch_queries(batch: pipeline.Batch, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(context [Q, n-1] right-aligned, its lengths [Q], targets [Q]) for the positions with loss_mask 1.

  A position's context is its input token and those before it in the same document and window: what a neural
  model sees there, cut to the last n-1 tokens.
  """
  inputs_BL, segments_BL = batch["inputs"], batch["segment_ids"]
  C = order - 1
  B, L = inputs_BL.shape
  context_BLC = np.zeros((B, L, C), np.int64)
  lengths_BL = np.zeros((B, L), np.int64)
  for c in range(C):
    shifted_BL = np.pad(inputs_BL, ((0, 0), (c, 0)))[:, :L]
    same_BL = np.pad(segments_BL, ((0, 0), (c, 0)), constant_values=-1)[:, :L] == segments_BL
    context_BLC[:, :, C - 1 - c] = np.where(same_BL, shifted_BL, 0)
    lengths_BL += same_BL  # documents are contiguous: once a shift leaves the document, longer ones do too
  keep = batch["loss_mask"] > 0
  return context_BLC[keep], lengths_BL[keep], batch["targets"][keep].astype(np.int64)


def score(model: KneserNey, batches: list[pipeline.Batch], token_bytes_V: np.ndarray,
          token_chars_V: np.ndarray) -> dict[str, float]:
  """The sums CausalLmTask.eval_sums returns (nll in nats, tokens, correct, bytes, chars), over all batches."""
  sums = {"nll": 0.0, "tokens": 0.0, "correct": 0.0, "bytes": 0.0, "chars": 0.0}
  chunk = max(1, 2**21 // model.vocab_size)  # rows of [Q, V] float64 distributions held at once
  for batch in batches:
    context_QC, lengths_Q, targets_Q = batch_queries(batch, model.order)
    for lo in range(0, targets_Q.shape[0], chunk):
      t_Q = targets_Q[lo:lo + chunk]
      probs_QV = model.distributions(context_QC[lo:lo + chunk], lengths_Q[lo:lo + chunk])
      sums["nll"] -= float(np.log(probs_QV[np.arange(t_Q.shape[0]), t_Q]).sum())
      sums["correct"] += float((probs_QV.argmax(-1) == t_Q).sum())
    sums["tokens"] += float(targets_Q.shape[0])
    sums["bytes"] += float(token_bytes_V[targets_Q].sum())
    sums["chars"] += float(token_chars_V[targets_Q].sum())
  return sums


def sample(model: KneserNey, prompt: np.ndarray, num_new: int, temperature: float, top_k: int,
           rng: np.random.Generator) -> np.ndarray:
  """Prompt then up to num_new sampled tokens, stopping after <eos>; temperature 0 is greedy."""
  tokens = list(prompt)
  for _ in range(num_new):
    context = np.asarray(tokens[-(model.order - 1):] if model.order > 1 else [], np.int64)[None]
    probs_V = model.distributions(context, np.asarray([context.shape[1]]))[0]
    probs_V[BOS_ID] = 0.0  # <bos> only ever starts a document
    if temperature == 0.0:
      next_id = int(probs_V.argmax())
    else:
      if top_k > 0:
        probs_V[probs_V < np.sort(probs_V)[-top_k]] = 0.0
      weights_V = probs_V ** (1.0 / temperature)
      next_id = int(rng.choice(weights_V.shape[0], p=weights_V / weights_V.sum()))
    tokens.append(next_id)
    if next_id == EOS_ID:
      break
  return np.asarray(tokens)


class KneserNeyLm:
  """The model a fit-only family builds: fitted in one pass over the training split, never by gradient steps."""

  def __init__(self, cfg: "NgramConfig"):
    self.cfg = cfg

  def fit(self, config: ml_collections.ConfigDict, tokenizer: Tokenizer, train_tokens: pipeline.TokenizedSplit,
          eval_tokens: pipeline.TokenizedSplit, test_tokens: pipeline.TokenizedSplit | None = None) -> FitResult:
    """Fits on the training split and scores the validation windows the trainer would score (and the test
    split's, when there is one), and the same number of leading training windows (how much of the fit is
    memorization); samples like the trainer's sampler."""
    t, d = config.train, config.data
    start = time.perf_counter()
    model = fit(train_tokens.tokens, train_tokens.doc_starts, tokenizer.vocab_size, self.cfg.ngram_order)
    logging.info("Fitted a %d-gram Kneser-Ney model on %d tokens in %.1f s: %s distinct n-grams by order, "
                 "discounts %s.", model.order, train_tokens.num_tokens, time.perf_counter() - start,
                 [int(model.tables[m].keys.size) for m in range(1, model.order + 1)],
                 [round(model.tables[m].discount, 3) for m in range(1, model.order + 1)])
    batch_size = t.eval_batch_size or t.batch_size
    eval_batches = pipeline.make_eval_batches(eval_tokens, d.seq_len, batch_size, max_batches=t.eval_batches or None)
    train_batches = pipeline.make_eval_batches(train_tokens, d.seq_len, batch_size, max_batches=len(eval_batches))
    lengths = tokenizer.token_byte_lengths(), tokenizer.token_char_lengths()
    metrics = {"train": metrics_lib.language_model_summary(score(model, train_batches, *lengths)),
               "eval": metrics_lib.language_model_summary(score(model, eval_batches, *lengths))}
    if test_tokens is not None:
      test_batches = pipeline.make_eval_batches(test_tokens, d.seq_len, batch_size,
                                                max_batches=t.eval_batches or None)
      metrics["test"] = metrics_lib.language_model_summary(score(model, test_batches, *lengths))
    return FitResult(metrics, self._samples(config, tokenizer, model))

  @staticmethod
  def _samples(config: ml_collections.ConfigDict, tokenizer: Tokenizer, model: KneserNey) -> list[str]:
    t = config.train
    prompt = np.r_[BOS_ID, tokenizer.encode(t.sample_prompt)].astype(np.int64)
    rng = np.random.default_rng(config.seed)
    texts = []
    for _ in range(t.num_samples):
      new = sample(model, prompt, t.sample_length, t.sample_temperature, t.sample_top_k, rng)[prompt.shape[0]:]
      new = new[new != EOS_ID]
      texts.append(t.sample_prompt + tokenizer.decode(new))
    return texts


@MODELS.register("ngram")
@dataclasses.dataclass(frozen=True)
class NgramConfig(ModelConfig):
  ngram_order: int = 5  # n of the Kneser-Ney n-gram model

  module: ClassVar[Any] = KneserNeyLm
  fit_only: ClassVar[bool] = True

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    config_lib.at_least(cfg, "model.ngram_order", 1)

  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """None: the model is counted, not trained; its fit is integer sorting and counting in one pass, with no
    multiply-adds to put on a FLOPs axis (reports draw it as a level, not a curve)."""
    del params, seq_len
    return None
