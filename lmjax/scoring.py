"""Scoring text with a causal language model: log-likelihoods of continuations, strided perplexity and batched
generation, each run in a few padded shapes so that the number of compilations is small and known.

A `Row` is a token sequence and how many of its last tokens are scored: inputs are tokens[:-1], targets
tokens[1:], and the sum of the last `scored` targets' log-probabilities is the row's log-likelihood. Rows are
sorted by length and padded up to a bucket length (powers of two from `MIN_BUCKET`, then the context itself);
each bucket runs in batches of about `batch_tokens` tokens, the last one padded to a power of two of rows, and the
scored positions of a batch are padded to a bucket length too. One compilation per (rows, length, scored) shape:
`Scorer.shapes` lists them.

Perplexity over long text follows the usual strided recipe (`strided_rows`): windows of `window` tokens start
every `stride` tokens, and each window scores only the tokens no earlier window scored, so every token is
predicted once, with at least window - stride tokens of context except in the first window.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import decode
from lmjax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID

MIN_BUCKET = 32
SCORED_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ScoringError(ValueError):
  """Input the model cannot score or generate as asked; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Row:
  tokens: tuple[int, ...]  # at least two: the first is only an input, the last only a target
  scored: int  # the last `scored` targets count (1 <= scored <= len(tokens) - 1)


def bucket_lengths(max_length: int, smallest: int = MIN_BUCKET) -> list[int]:
  """Powers of two from `smallest` below max_length, then max_length itself."""
  out, n = [], smallest
  while n < max_length:
    out.append(n)
    n *= 2
  return out + [max_length]


def bucket_of(length: int, buckets: Sequence[int]) -> int:
  return next(b for b in buckets if b >= length)


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def strided_rows(ids: Sequence[int], window: int, stride: int, prefix: int = BOS_ID) -> list[Row]:
  """The windows that score every token of `ids` once, each conditioned on `prefix` and what precedes it.

  The sequence is [prefix] + ids; window k covers inputs [k * stride, k * stride + window) and scores the targets
  after the previous window's last one.
  """
  if not 1 <= stride <= window:
    raise ScoringError(f"--stride={stride} must be between 1 and the window of {window} tokens")
  seq = [prefix, *ids]
  n = len(ids)  # targets 1..n of seq
  rows, done, start = [], 0, 0
  while done < n:
    end = min(start + window, n)  # inputs seq[start:end], targets seq[start + 1:end + 1]
    rows.append(Row(tuple(seq[start:end + 1]), end - done))
    done, start = end, start + stride
  return rows


class Scorer:
  """Log-likelihoods and greedy matches of `Row`s, and generation, for one model and its parameters.

  `scored_V` (bool [V]) limits the softmax to some vocabulary rows (the rows of an imported checkpoint's own
  vocabulary); None scores over all of them. `place` puts a host array where the jitted functions read it and
  `activate` is entered around every call (the trainer's mesh); by default the default device and nothing.
  """

  def __init__(self, model: Any, params: Any, *, max_length: int, batch_tokens: int = 8192, max_rows: int = 64,
               scored_V: np.ndarray | None = None, place: Callable[[np.ndarray], Any] | None = None,
               activate: Callable[[], contextlib.AbstractContextManager] | None = None):
    if batch_tokens < 1 or max_rows < 1:
      raise ScoringError(f"batch_tokens={batch_tokens} and max_rows={max_rows} must be at least 1")
    self.model, self.params, self.max_length = model, params, max_length
    self.batch_tokens, self.max_rows = batch_tokens, max_rows
    self.buckets = bucket_lengths(max_length)
    self._place = place or jnp.asarray
    self._activate = activate or contextlib.nullcontext
    self.shapes: list[tuple[Any, ...]] = []  # every distinct compiled shape, in the order first used
    self._bias_V = None if scored_V is None else self._place(np.where(scored_V, 0.0, -np.inf).astype(np.float32))
    self._score = jax.jit(self._score_rows)
    self._keeps_positions = model.cfg.decodes  # its forward pass takes logits_index_B, as decoding does
    self.share_prefixes = model.cfg.decodes
    self._prefill = jax.jit(self._prefill_prefixes, static_argnums=3)
    self._continue = jax.jit(self._score_continuations)
    self._generators: dict[tuple, Any] = {}

  @property
  def compilations(self) -> int:
    return len(self.shapes)

  def _note(self, shape: tuple[Any, ...]) -> None:
    if shape not in self.shapes:
      self.shapes.append(shape)

  def rows_for(self, length: int) -> int:
    return max(1, min(self.max_rows, self.batch_tokens // length))

  # --- log-likelihoods --------------------------------------------------------------------------------------

  def _score_rows(self, params, bias_V, inputs_RL, targets_RK, index_RK, weights_RK):
    """Only the K scored positions of each row go through the vocabulary projection where the model can keep
    them (a GPT's logits_index_B): continuations are short next to their contexts, and the projection is the
    largest matmul. The log-softmax is one logsumexp per position, never a [R, K, V] array of its own."""
    if self._keeps_positions:
      logits_RKV = self.model.apply({"params": params}, inputs_RL, deterministic=True, logits_index_B=index_RK)
    else:
      logits_RLV = self.model.apply({"params": params}, inputs_RL, deterministic=True)
      logits_RKV = jnp.take_along_axis(logits_RLV, index_RK[:, :, None], axis=1)
    logits_RKV = logits_RKV.astype(jnp.float32)
    if bias_V is not None:
      logits_RKV = logits_RKV + bias_V
    target_RK = jnp.take_along_axis(logits_RKV, targets_RK[..., None], axis=-1)[..., 0]
    logp_RK = target_RK - jax.nn.logsumexp(logits_RKV, axis=-1)
    scored_RK = weights_RK > 0
    greedy_RK = (target_RK >= jnp.max(logits_RKV, axis=-1)) | ~scored_RK
    return jnp.sum(jnp.where(scored_RK, logp_RK, 0.0), axis=1), jnp.all(greedy_RK, axis=1)

  def batches(self, lengths: Sequence[int]) -> Iterator[tuple[int, int, list[int]]]:
    """(rows, bucket length, request indices) per batch: requests sorted by length (longest first), each bucket
    in full batches and one last batch of a power of two of rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    by_bucket: dict[int, list[int]] = {}
    for i in order:
      if lengths[i] > self.max_length:
        raise ScoringError(f"a row of {lengths[i]} tokens exceeds the context of {self.max_length}")
      by_bucket.setdefault(bucket_of(lengths[i], self.buckets), []).append(i)
    for length in sorted(by_bucket, reverse=True):
      members, full = by_bucket[length], self.rows_for(length)
      for start in range(0, len(members), full):
        chunk = members[start:start + full]
        yield min(full, _pow2_at_least(len(chunk))), length, chunk

  def score(self, rows: Sequence[Row]) -> list[tuple[float, bool]]:
    """(sum of the scored targets' log-probabilities, whether each of them is the argmax) per row, in order.

    Rows that share everything before their scored tokens (a multiple-choice question's context, with one row per
    choice) run that prefix once, for a model that decodes over a cache: the prefix fills a key/value cache, and
    each row's continuation extends its own copy of it."""
    for r in rows:
      if len(r.tokens) < 2 or not 1 <= r.scored <= len(r.tokens) - 1:
        raise ScoringError(f"a row of {len(r.tokens)} tokens cannot score {r.scored} of them")
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    shared, alone = self._shared_plan(rows)
    with self._activate():
      pending = self._dispatch_alone(rows, alone) + self._dispatch_shared(rows, shared)
      for chunk, (logp_R, greedy_R) in pending:
        logp_R, greedy_R = _fetch(logp_R), _fetch(greedy_R)
        for j, i in enumerate(chunk):
          out[i] = (float(logp_R[j]), bool(greedy_R[j]))
    return out  # type: ignore[return-value]

  def _dispatch_alone(self, rows: Sequence[Row], indices: Sequence[int]) -> list:
    pending = []
    for R, L, part in self.batches([len(rows[i].tokens) - 1 for i in indices]):
      chunk = [indices[j] for j in part]
      K = min(L, bucket_of(max(rows[i].scored for i in chunk), SCORED_BUCKETS))
      inputs = np.zeros((R, L), np.int32)
      targets, index, weights = (np.zeros((R, K), np.int32) for _ in range(3))
      for j, i in enumerate(chunk):
        tokens, n, s = rows[i].tokens, len(rows[i].tokens) - 1, rows[i].scored
        inputs[j, :n] = tokens[:-1]
        targets[j, :s], index[j, :s], weights[j, :s] = tokens[n - s + 1:], np.arange(n - s, n), 1
      self._note(("score", R, L, K))
      # Dispatched back to back; fetched once at the end.
      pending.append((chunk, self._score(self.params, self._bias_V,
                                         *map(self._place, (inputs, targets, index, weights)))))
    return pending

  # --- rows sharing a prefix ------------------------------------------------------------------------------------

  def _shared_plan(self, rows: Sequence[Row]) -> tuple[list[tuple[list[int], list[list[int]], int, int, int]],
                                                       list[int]]:
    """Batches of prefixes, each with the rows continuing them, and the rows scored alone. A batch is (prefix
    rows, rows per prefix, rows, prefix length, continuation length); a row whose continuation would reach past
    the context in its batch's padded shape is scored alone."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rows):
      groups.setdefault(r.tokens[:len(r.tokens) - r.scored], []).append(i)
    if not self.share_prefixes or len(groups) == len(rows):
      return [], list(range(len(rows)))
    alone = [i for members in groups.values() if len(members) == 1 for i in members]
    prefixes = [p for p, members in groups.items() if len(members) > 1]
    plan = []
    for R, L, part in self.batches([len(p) for p in prefixes]):
      batch = [prefixes[j] for j in part]
      C = bucket_of(max(max(rows[i].scored - 1 for i in groups[p]) for p in batch) or 1, SCORED_BUCKETS)
      owned = []
      for p in batch:
        fits = [i for i in groups[p] if len(p) + C <= self.max_length]  # padding stays inside the positions
        alone += [i for i in groups[p] if len(p) + C > self.max_length]
        owned.append(fits)
      plan.append((batch, owned, R, L, C))
    return plan, alone

  def _prefill_prefixes(self, params, prefix_RP, lengths_R, length: int):
    """A cache of `length` slots per prefix row, filled with the prefix, and the logits after its last token."""
    R, P = prefix_RP.shape
    cache = self.model.apply({"params": params}, R, length, None, method="start_cache")
    positions_RP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (R, P))
    logits_R1V, cache = self.model.apply({"params": params}, prefix_RP, positions_RP, cache, lengths_R - 1,
                                         method="extend")
    return logits_R1V[:, 0].astype(jnp.float32), cache

  def _score_continuations(self, params, bias_V, logits_PV, cache, lengths_P, owner_R, first_R, inputs_RC,
                           targets_RC, weights_RC):
    """Each row's log-likelihood: its first target from its prefix's last logits, the rest from its continuation
    fed through a copy of the prefix's cache at the positions after the prefix."""
    if bias_V is not None:
      logits_PV = logits_PV + bias_V
    first_RV = logits_PV[owner_R]
    first_target_R = jnp.take_along_axis(first_RV, first_R[:, None], axis=-1)[:, 0]
    first_logp_R = first_target_R - jax.nn.logsumexp(first_RV, axis=-1)
    first_greedy_R = first_target_R >= jnp.max(first_RV, axis=-1)
    cache_R = jax.tree_util.tree_map(lambda x: jnp.take(x, owner_R, axis=0), cache)
    C = inputs_RC.shape[1]
    positions_RC = lengths_P[owner_R][:, None] + jnp.arange(C, dtype=jnp.int32)
    logits_RCV, _ = self.model.apply({"params": params}, inputs_RC, positions_RC, cache_R, method="extend")
    logits_RCV = logits_RCV.astype(jnp.float32)
    if bias_V is not None:
      logits_RCV = logits_RCV + bias_V
    target_RC = jnp.take_along_axis(logits_RCV, targets_RC[..., None], axis=-1)[..., 0]
    logp_RC = target_RC - jax.nn.logsumexp(logits_RCV, axis=-1)
    scored_RC = weights_RC > 0
    greedy_RC = (target_RC >= jnp.max(logits_RCV, axis=-1)) | ~scored_RC
    return (first_logp_R + jnp.sum(jnp.where(scored_RC, logp_RC, 0.0), axis=1),
            first_greedy_R & jnp.all(greedy_RC, axis=1))

  def _dispatch_shared(self, rows: Sequence[Row], plan) -> list:
    pending = []
    for batch, owned, Rp, P, C in plan:
      prefix_RP = np.zeros((Rp, P), np.int32)
      lengths_R = np.ones(Rp, np.int32)
      for j, p in enumerate(batch):
        prefix_RP[j, :len(p)], lengths_R[j] = p, len(p)
      self._note(("prefix", Rp, P, P + C))
      logits_PV, cache = self._prefill(self.params, self._place(prefix_RP), self._place(lengths_R), P + C)
      members = [(j, i) for j, fits in enumerate(owned) for i in fits]
      # Each row holds a copy of its prefix's cache: about batch_tokens cache slots per call.
      full = max(1, min(self.rows_for(C), self.batch_tokens // (P + C)))
      for start in range(0, len(members), full):
        part = members[start:start + full]
        R = min(full, _pow2_at_least(len(part)))
        owner, first = np.zeros(R, np.int32), np.zeros(R, np.int32)
        inputs, targets, weights = (np.zeros((R, C), np.int32) for _ in range(3))
        for k, (j, i) in enumerate(part):
          tokens, s = rows[i].tokens, rows[i].scored
          owner[k], first[k] = j, tokens[len(tokens) - s]
          rest = tokens[len(tokens) - s:]  # the continuation: inputs all but its last token, targets all but its first
          inputs[k, :s - 1], targets[k, :s - 1], weights[k, :s - 1] = rest[:-1], rest[1:], 1
        self._note(("continue", R, C, Rp, P + C))
        pending.append(([i for _, i in part], self._continue(
            self.params, self._bias_V, logits_PV, cache, self._place(lengths_R),
            *map(self._place, (owner, first, inputs, targets, weights)))))
    return pending

  # --- generation -------------------------------------------------------------------------------------------

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, stop_V: np.ndarray | None = None,
               seed: int = 0) -> list[list[int]]:
    """Up to max_new_tokens new tokens per prompt (ending at <eos> or at a token of `stop_V`, kept), greedy at
    temperature 0. Prompts are bucketed like rows; the model must decode over a cache."""
    decoder = decode.step_decoder(self.model)
    if decoder is None:
      raise ScoringError(f"model.name={self.model.cfg.name!r} cannot decode over a key/value cache, so it cannot "
                         f"generate; use a task that scores log-likelihoods")
    room = self.max_length - max_new_tokens
    if room < 1:
      raise ScoringError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in the context of "
                         f"{self.max_length} tokens; lower max_gen_toks")
    settings = (max_new_tokens, float(temperature), int(top_k), float(top_p))
    if settings not in self._generators:
      self._generators[settings] = jax.jit(functools.partial(
          decode.generate, decoder, max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
          top_p=float(top_p), eos_id=EOS_ID))
    fn = self._generators[settings]
    stop_V = np.zeros(self.model.cfg.vocab_size, bool) if stop_V is None else stop_V
    prompts = [list(p)[-room:] for p in prompts]
    buckets = sorted({min(b, room) for b in self.buckets})
    out: list[list[int] | None] = [None] * len(prompts)
    rng = jax.random.PRNGKey(seed)
    with self._activate():
      stop = self._place(stop_V)
      for n, (R, P, chunk) in enumerate(self._generation_batches([len(p) for p in prompts], buckets)):
        prompt_RP = np.full((R, P), PAD_ID, np.int32)
        lengths_R = np.ones(R, np.int32)
        prompt_RP[:, 0] = BOS_ID
        for j, i in enumerate(chunk):
          prompt_RP[j, :len(prompts[i])] = prompts[i]
          lengths_R[j] = len(prompts[i])
        self._note(("generate", R, P, *settings))
        tokens_RT = _fetch(fn(self.params, *map(self._place, (prompt_RP, lengths_R)), self._place(
            np.asarray(jax.random.fold_in(rng, n))), stop_V=stop))
        for j, i in enumerate(chunk):
          out[i] = tokens_RT[j, lengths_R[j]:lengths_R[j] + max_new_tokens].tolist()
    return out  # type: ignore[return-value]

  def _generation_batches(self, lengths: Sequence[int], buckets: Sequence[int]):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    by_bucket: dict[int, list[int]] = {}
    for i in order:
      by_bucket.setdefault(bucket_of(max(lengths[i], 1), buckets), []).append(i)
    for length in sorted(by_bucket, reverse=True):
      members, full = by_bucket[length], self.rows_for(length)
      for start in range(0, len(members), full):
        chunk = members[start:start + full]
        yield min(full, _pow2_at_least(len(chunk))), length, chunk


def _fetch(x: Any) -> np.ndarray:
  """A replicated result on the host (the first local shard is the whole array, also on several processes)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


# --- perplexity of whole texts ------------------------------------------------------------------------------------

def perplexity(scorer: Scorer, texts: Sequence[str], encode: Callable[[str], Sequence[int]], *, window: int,
               stride: int) -> dict[str, float]:
  """Token perplexity, bits per byte and bits per character of `texts`, each text scored on its own from <bos>,
  with strided windows. Bytes and characters are the texts' own (UTF-8), so tokenizers compare."""
  rows, documents = [], 0
  for text in texts:
    ids = list(encode(text))
    if ids:
      rows += strided_rows(ids, window, stride)
      documents += 1
  nll = -sum(logp for logp, _ in scorer.score(rows)) if rows else 0.0
  tokens = sum(r.scored for r in rows)
  num_bytes = sum(len(t.encode("utf-8")) for t in texts)
  chars = sum(len(t) for t in texts)
  if not tokens:
    raise ScoringError("the texts hold no tokens to score")
  return {"perplexity": math.exp(nll / tokens), "nll_per_token": nll / tokens,
          "bits_per_byte": nll / math.log(2) / max(num_bytes, 1), "bits_per_char": nll / math.log(2) / max(chars, 1),
          "tokens": float(tokens), "bytes": float(num_bytes), "chars": float(chars), "documents": float(documents),
          "windows": float(len(rows)), "window": float(window), "stride": float(stride)}
