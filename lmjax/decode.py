"""Autoregressive decoding over a key/value cache: greedy, temperature, top-k and top-p sampling, and beam search.

Every strategy drives a model through one small interface, `StepDecoder`:

  prepare(params) -> params
      Done once per call, outside the token loop: whatever is fixed while decoding (weights cast to the compute
      dtype).
  init_cache(params, batch, length, encoder_inputs=None) -> cache
      An empty cache for `length` positions per row. An encoder-decoder runs its encoder here and keeps each
      layer's cross-attention keys and values in the cache; a decoder-only model takes no encoder inputs.
  prefill(params, cache, tokens_BP, lengths_B) -> (logits_BV, cache)
      Runs a right-padded batch of prompts in one call (row b's prompt is tokens_BP[b, :lengths_B[b]], at
      positions 0..lengths_B[b]-1, at least one token: <bos>) and returns each row's logits for the token after
      its own prompt.
  step(params, cache, tokens_B, positions_B) -> (logits_BV, cache)
      Feeds one token per row at that row's own position and returns the logits for the next one.
  max_len: int | None
      The longest sequence the model can place (learned absolute positions), or None when it has no such limit.

`CachedDecoder` implements it for every architecture whose family declares `decodes` (lmjax/models/base.py): such a
model has two methods, `start_cache(batch, length, encoder_inputs)` and `extend(tokens_BL, positions_BL, cache,
logits_index_B)`, and the cache is whatever pytree the model keeps (one KVCache per layer for the GPT decoder,
[B, K, M, d] keys and values with slot m holding position m, so biases and rotations always see the true absolute
positions of cached keys).

A cache is a pytree of arrays whose leading axis is the batch, so beam search can repeat rows into beams and
reorder them without knowing what the cache holds.

Prompts of different lengths share a batch: each row continues from its own length, and its new tokens follow its
prompt directly in the returned [B, P + N] array. A row that emits EOS stops there: the EOS is kept and every later
slot is PAD. The loop over tokens is a `lax.while_loop` inside one program, which stops early once every row is
finished; jit the whole `generate` or `beam_search` call. (A caller that drives `step` itself should jit it with
the cache donated, `donate_argnums=1`, so that XLA writes the new keys and values in place.)

`generate_without_cache` is the former sampler, kept as the reference: it re-runs the model over a sliding window
of recent tokens for every new token, so it also serves models without a cache and samples past a learned-position
model's context.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from lmjax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID

# Scores of impossible hypotheses: far below any real log-probability, yet finite so arithmetic stays NaN-free.
NEG_INF = -1.0e9


class StepDecoder(Protocol):
  max_len: int | None

  def prepare(self, params: Any) -> Any: ...

  def init_cache(self, params: Any, batch: int, length: int, encoder_inputs: Any = None) -> Any: ...

  def prefill(self, params: Any, cache: Any, tokens_BP: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, Any]: ...

  def step(self, params: Any, cache: Any, tokens_B: jax.Array, positions_B: jax.Array) -> tuple[jax.Array, Any]: ...


@dataclasses.dataclass(frozen=True)
class CachedDecoder:
  """StepDecoder for any model with `start_cache` and `extend` (families with `decodes`)."""
  model: Any

  @property
  def max_len(self) -> int | None:
    return self.model.cfg.context_limit()

  @property
  def takes_encoder_inputs(self) -> bool:
    """Whether init_cache needs the source (an encoder-decoder translates its encoder inputs)."""
    return self.model.cfg.interface == "seq2seq"

  def prepare(self, params: Any) -> Any:
    """Matrices in the compute dtype once, rather than a cast (a full read and write of every weight) per token."""
    dtype = jnp.dtype(self.model.cfg.dtype)

    def cast(path, x):
      name = getattr(path[-1], "key", "")
      # The T5 bias table is read in float32 on purpose; norms and biases are small and computed in float32.
      return x.astype(dtype) if x.ndim >= 2 and name in ("kernel", "embedding") else x
    return jax.tree_util.tree_map_with_path(cast, params)

  def init_cache(self, params: Any, batch: int, length: int, encoder_inputs: Any = None) -> Any:
    return self.model.apply({"params": params}, batch, length, encoder_inputs, method="start_cache")

  def prefill(self, params: Any, cache: Any, tokens_BP: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, Any]:
    B, P = tokens_BP.shape
    positions_BP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    # Padding after a shorter prompt is written to the cache too, but only into slots that row's own new tokens
    # overwrite before any query can see them (a query at position p sees slots 0..p).
    logits_B1V, cache = self.model.apply({"params": params}, tokens_BP, positions_BP, cache, lengths_B - 1,
                                         method="extend")
    return logits_B1V[:, 0], cache

  def step(self, params: Any, cache: Any, tokens_B: jax.Array, positions_B: jax.Array) -> tuple[jax.Array, Any]:
    logits_B1V, cache = self.model.apply({"params": params}, tokens_B[:, None], positions_B[:, None], cache,
                                         method="extend")
    return logits_B1V[:, 0], cache


def step_decoder(model: Any) -> CachedDecoder | None:
  """The StepDecoder for a model, or None for one that cannot decode over a cache (use generate_without_cache)."""
  return CachedDecoder(model) if model.cfg.decodes else None


def check_fits(decoder: StepDecoder, prompt_len: int, max_new_tokens: int) -> None:
  if decoder.max_len is not None and prompt_len + max_new_tokens > decoder.max_len:
    raise ValueError(
        f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} = {prompt_len + max_new_tokens} exceeds "
        f"model.max_len={decoder.max_len}, the size of the learned position table; shorten the prompt or lower "
        f"max_new_tokens")


# --- choosing the next token ------------------------------------------------------------------------------------

def _nucleus_drops(ascending_BN: jax.Array, top_p: float) -> jax.Array:
  """Which of the logits, sorted ascending (ties in ascending id order), fall outside the nucleus: those whose
  cumulative probability from the least likely up is at most 1 - top_p (transformers' arithmetic, to the rounding).
  The most likely one always stays."""
  cumulative_BN = jnp.cumsum(jax.nn.softmax(ascending_BN, axis=-1), axis=-1)
  return (cumulative_BN <= 1.0 - top_p).at[:, -1].set(False)


def top_k_filter(logits_BV: jax.Array, top_k: int) -> jax.Array:
  """Keeps every token whose logit is at least the k-th largest, -inf elsewhere: with ties at the k-th logit that
  is more than k tokens, all of them (transformers' TopKLogitsWarper does the same)."""
  kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
  return jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)


def top_p_filter(logits_BV: jax.Array, top_p: float) -> jax.Array:
  """Keeps the nucleus, -inf elsewhere: the smallest set of most likely tokens whose probabilities add up to at
  least top_p (the most likely token always).

  Tokens are ranked by logit, and among equal logits the higher id counts as the more likely; a nucleus that ends
  inside a group of tied tokens keeps only as many of them as it needs, those with the highest ids. This is
  transformers' TopPLogitsWarper (an ascending sort, then dropped from the bottom while the cumulative probability
  is at most 1 - top_p) with its sort made stable: transformers sorts with torch's default sort, which orders ties
  arbitrarily on large inputs, so which tied tokens it keeps can differ, but not how many or their logits (up to
  rounding, where a cumulative probability lands within float precision of the threshold).
  """
  order_BV = jnp.argsort(logits_BV, axis=-1, stable=True)
  drops_BV = _nucleus_drops(jnp.take_along_axis(logits_BV, order_BV, axis=-1), top_p)
  drops_BV = jnp.put_along_axis(jnp.zeros_like(drops_BV), order_BV, drops_BV, axis=-1, inplace=False)
  return jnp.where(drops_BV, -jnp.inf, logits_BV)


def top_k_top_p_filter(logits_BV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """top_p_filter(top_k_filter(logits)): the nucleus is built over exactly the tokens top-k keeps, ties at the
  k-th logit included, and normalized over them.

  When no row has a tie at the k-th logit, top-k keeps exactly the k candidates `lax.top_k` returns, and only they
  are sorted; otherwise the whole vocabulary is (slower on a CPU, where XLA's sort is slow, but the same result).
  """
  values_BK, ids_BK = jax.lax.top_k(logits_BV, top_k)
  kth_B1 = values_BK[:, -1:]
  kept_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  tie_beyond_k = jnp.any(jnp.sum(logits_BV >= kth_B1, axis=-1) > top_k)

  def over_the_candidates(_):
    ascending_BK, ascending_ids_BK = jax.lax.sort((values_BK, ids_BK), dimension=-1, num_keys=2)
    drops_BK = _nucleus_drops(ascending_BK, top_p)
    rows_B1 = jnp.arange(logits_BV.shape[0])[:, None]
    drops_BV = jnp.zeros(logits_BV.shape, bool).at[rows_B1, ascending_ids_BK].set(drops_BK)
    return jnp.where(drops_BV, -jnp.inf, kept_BV)

  return jax.lax.cond(tie_beyond_k, lambda _: top_p_filter(kept_BV, top_p), over_the_candidates, None)


def never_generated(logits_BV: jax.Array) -> jax.Array:
  """<pad> and <bos> are inputs only. An lmjax model never learns to predict them, but an imported one can give
  <bos> a high score (GPT-2's <bos> shares <|endoftext|>'s tied embedding), so they are ruled out explicitly."""
  return logits_BV.at[..., jnp.asarray([PAD_ID, BOS_ID])].set(-jnp.inf)


def filter_logits(logits_BV: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """logits / T, then top-k, then the top-p nucleus of what top-k kept (each only when set: top_k > 0, top_p < 1),
  with the removed tokens at -inf: what transformers' Temperature, TopK and TopP warpers give, in that order."""
  logits_BV = logits_BV / temperature
  if top_k > 0 and top_p < 1.0:
    return top_k_top_p_filter(logits_BV, top_k, top_p)
  if top_k > 0:
    return top_k_filter(logits_BV, top_k)
  if top_p < 1.0:
    return top_p_filter(logits_BV, top_p)
  return logits_BV


def sample_logits(logits_BV: jax.Array, rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Greedy at temperature 0; otherwise a sample from softmax over filter_logits (see there for which tokens the
  top-k and top-p settings keep, ties included)."""
  if temperature == 0.0:
    return logits_BV.argmax(-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits_BV, temperature, top_k, top_p)).astype(jnp.int32)


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT (Wu et al., 2016): ((5 + |Y|) / 6)^alpha; a beam's score is its log-probability divided by this."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# --- sampling -----------------------------------------------------------------------------------------------------

def _start(decoder: StepDecoder, params: Any, prompt_BP: jax.Array, lengths_B: jax.Array, max_new_tokens: int,
           encoder_inputs: Any) -> tuple[Any, jax.Array, Any, jax.Array]:
  """Prepared params, first logits, the cache after the prompt, and the output buffer holding the prompts."""
  B, P = prompt_BP.shape
  check_fits(decoder, P, max_new_tokens)
  params = decoder.prepare(params)
  cache = decoder.init_cache(params, B, P + max_new_tokens, encoder_inputs)
  logits_BV, cache = decoder.prefill(params, cache, prompt_BP, lengths_B)
  T = P + max_new_tokens
  prompt_BP = jnp.where(jnp.arange(P) < lengths_B[:, None], prompt_BP, PAD_ID).astype(jnp.int32)
  tokens_BT = jnp.full((B, T), PAD_ID, jnp.int32).at[:, :P].set(prompt_BP)
  return params, logits_BV, cache, tokens_BT


def generate(decoder: StepDecoder, params: Any, prompt_BP: jax.Array, lengths_B: jax.Array, rng: jax.Array, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: int | None = EOS_ID, encoder_inputs: Any = None, stop_V: jax.Array | None = None) -> jax.Array:
  """[B, P + N] tokens: row b is its prompt (lengths_B[b] tokens of the right-padded prompt_BP), then up to N new
  tokens, ending with EOS when one was sampled, then PAD. Temperature 0 is greedy decoding. `stop_V` (bool [V])
  marks more tokens that end a row as EOS does, kept like it (the tokens holding a stop sequence).

  Randomness: the i-th new token uses the i-th key of the chain `rng, key = split(rng)`, as generate_without_cache
  does, so both give the same samples where their logits agree.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
  B = prompt_BP.shape[0]
  lengths_B = jnp.asarray(lengths_B, jnp.int32)
  params, logits_BV, cache, tokens_BT = _start(decoder, params, prompt_BP, lengths_B, max_new_tokens, encoder_inputs)
  rows_B = jnp.arange(B)
  stop = -1 if eos_id is None else eos_id

  def choose(i, logits_BV, rng, tokens_BT, done_B):
    rng, key = jax.random.split(rng)
    next_B = jnp.where(done_B, PAD_ID, sample_logits(never_generated(logits_BV), key, temperature, top_k, top_p))
    tokens_BT = tokens_BT.at[rows_B, lengths_B + i].set(next_B, unique_indices=True)
    ends_B = next_B == stop
    if stop_V is not None:
      ends_B |= stop_V[next_B] & ~done_B
    return next_B, rng, tokens_BT, done_B | ends_B

  def body(carry):
    i, prev_B, cache, rng, tokens_BT, done_B = carry
    logits_BV, cache = decoder.step(params, cache, prev_B, lengths_B + i - 1)
    next_B, rng, tokens_BT, done_B = choose(i, logits_BV, rng, tokens_BT, done_B)
    return i + 1, next_B, cache, rng, tokens_BT, done_B

  def cond(carry):
    i, *_, done_B = carry
    return (i < max_new_tokens) & ~jnp.all(done_B)

  first_B, rng, tokens_BT, done_B = choose(0, logits_BV, rng, tokens_BT, jnp.zeros((B,), bool))
  carry = jax.lax.while_loop(cond, body, (jnp.int32(1), first_B, cache, rng, tokens_BT, done_B))
  return carry[4]


# --- beam search --------------------------------------------------------------------------------------------------

def _reorder(tree: Any, rows: jax.Array) -> Any:
  """Every leaf's rows (the leading batch axis) gathered by `rows`."""
  return jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=0), tree)


def beam_search(decoder: StepDecoder, params: Any, prompt_BP: jax.Array, lengths_B: jax.Array, *, beam_size: int,
                max_new_tokens: int, alpha: float = 0.6, eos_id: int | None = EOS_ID,
                encoder_inputs: Any = None) -> tuple[jax.Array, jax.Array]:
  """The beam_size best continuations of each prompt: tokens [B, W, P + N] (laid out as in `generate`) and their
  scores [B, W], best first. A score is the sum of the token log-probabilities divided by length_penalty(new
  tokens including EOS, alpha); alpha = 0 ranks by log-probability alone.

  Finished hypotheses (ended by EOS) are kept aside and never extended; each step the W best unfinished ones
  continue. A row stops once it has W finished hypotheses that no unfinished one can still beat; the search stops
  when every row has, or after N new tokens, when unfinished hypotheses compete with the finished ones as they are.
  """
  if max_new_tokens < 1 or beam_size < 1:
    raise ValueError(f"beam_size={beam_size} and max_new_tokens={max_new_tokens} must be at least 1")
  B, W, N = prompt_BP.shape[0], beam_size, max_new_tokens
  lengths_B = jnp.asarray(lengths_B, jnp.int32)
  params, logits_BV, cache, tokens_BT = _start(decoder, params, prompt_BP, lengths_B, N, encoder_inputs)
  T, V = tokens_BT.shape[1], logits_BV.shape[-1]
  stop = -1 if eos_id is None else eos_id
  # Row (b, w) of the beam cache is row b * W + w.
  cache = _reorder(cache, jnp.repeat(jnp.arange(B), W))
  logits_BWV = jnp.broadcast_to(logits_BV[:, None], (B, W, V))
  rows_BW = jnp.arange(B)[:, None] * W
  lengths_X = jnp.repeat(lengths_B, W)

  # Alive: the W best unfinished hypotheses. At first only beam 0 exists, so the others cannot duplicate it.
  alive_BWT = jnp.broadcast_to(tokens_BT[:, None], (B, W, T))
  alive_logp_BW = jnp.where(jnp.arange(W) == 0, 0.0, NEG_INF) + jnp.zeros((B, 1))
  finished_BWT = alive_BWT
  finished_score_BW = jnp.full((B, W), NEG_INF)
  finished_ok_BW = jnp.zeros((B, W), bool)

  def expand(i, logits_BWV, state):
    """Extends the alive hypotheses by token i (0-based) and sorts the candidates into alive and finished."""
    alive_BWT, alive_logp_BW, finished_BWT, finished_score_BW, finished_ok_BW, cache = state
    # Scores stay the model's own log-probabilities; <pad> and <bos> are only taken out of the candidates.
    logp_BWV = never_generated(jax.nn.log_softmax(logits_BWV, axis=-1))
    cand_BX = (alive_logp_BW[:, :, None] + logp_BWV).reshape(B, W * V)
    # 2W candidates always hold W that do not end in EOS: at most one EOS continuation per beam.
    cand_logp_BC, index_BC = jax.lax.top_k(cand_BX, 2 * W)
    parent_BC, token_BC = index_BC // V, (index_BC % V).astype(jnp.int32)
    seq_BCT = jnp.take_along_axis(alive_BWT, parent_BC[:, :, None], axis=1)
    at_BCT = jnp.arange(T) == (lengths_B[:, None, None] + i)
    seq_BCT = jnp.where(at_BCT, token_BC[:, :, None], seq_BCT)
    is_eos_BC = token_BC == stop

    alive_logp_BC = jnp.where(is_eos_BC, NEG_INF, cand_logp_BC)
    alive_logp_BW, pick_BW = jax.lax.top_k(alive_logp_BC, W)
    alive_BWT = jnp.take_along_axis(seq_BCT, pick_BW[:, :, None], axis=1)
    parent_BW = jnp.take_along_axis(parent_BC, pick_BW, axis=1)
    alive_token_BW = jnp.take_along_axis(token_BC, pick_BW, axis=1)
    cache = _reorder(cache, (rows_BW + parent_BW).reshape(-1))

    new_score_BC = jnp.where(is_eos_BC, cand_logp_BC / length_penalty(i + 1, alpha), NEG_INF)
    pool_score_BX = jnp.concatenate([finished_score_BW, new_score_BC], axis=1)
    pool_ok_BX = jnp.concatenate([finished_ok_BW, is_eos_BC & (cand_logp_BC > NEG_INF / 2)], axis=1)
    pool_BXT = jnp.concatenate([finished_BWT, seq_BCT], axis=1)
    finished_score_BW, keep_BW = jax.lax.top_k(pool_score_BX, W)
    finished_ok_BW = jnp.take_along_axis(pool_ok_BX, keep_BW, axis=1)
    finished_BWT = jnp.take_along_axis(pool_BXT, keep_BW[:, :, None], axis=1)
    state = alive_BWT, alive_logp_BW, finished_BWT, finished_score_BW, finished_ok_BW, cache
    return state, alive_token_BW

  def row_done(i, alive_logp_BW, finished_score_BW, finished_ok_BW):
    # Log-probabilities only fall as a hypothesis grows; the penalty's largest value over the lengths it may still
    # reach bounds the best score it can get.
    best_penalty = jnp.maximum(length_penalty(i + 1, alpha), length_penalty(N, alpha))
    bound_B = alive_logp_BW[:, 0] / best_penalty
    return jnp.all(finished_ok_BW, axis=1) & (finished_score_BW[:, -1] >= bound_B)

  def body(carry):
    i, token_BW, state = carry
    cache = state[-1]
    logits_XV, cache = decoder.step(params, cache, token_BW.reshape(-1), lengths_X + i - 1)
    state, token_BW = expand(i, logits_XV.reshape(B, W, V), (*state[:-1], cache))
    return i + 1, token_BW, state

  def cond(carry):
    i, _, (_, alive_logp_BW, _, finished_score_BW, finished_ok_BW, _) = carry
    return (i < N) & ~jnp.all(row_done(i, alive_logp_BW, finished_score_BW, finished_ok_BW))

  state = (alive_BWT, alive_logp_BW, finished_BWT, finished_score_BW, finished_ok_BW, cache)
  state, token_BW = expand(0, logits_BWV, state)
  i, _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), token_BW, state))
  alive_BWT, alive_logp_BW, finished_BWT, finished_score_BW, _, _ = state
  # Hypotheses cut off by the token limit compete with the finished ones as they are.
  alive_score_BW = jnp.where(alive_logp_BW > NEG_INF / 2, alive_logp_BW / length_penalty(i, alpha), NEG_INF)
  score_BX = jnp.concatenate([finished_score_BW, alive_score_BW], axis=1)
  seq_BXT = jnp.concatenate([finished_BWT, alive_BWT], axis=1)
  scores_BW, best_BW = jax.lax.top_k(score_BX, W)
  return jnp.take_along_axis(seq_BXT, best_BW[:, :, None], axis=1), scores_BW


# --- the reference: full recomputation over a sliding window --------------------------------------------------

def generate_without_cache(model: Any, params: Any, prompt_BP: jax.Array, rng: jax.Array, *, num_new: int,
                           window: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Returns [B, P + num_new] tokens: the prompt followed by num_new sampled tokens (no stop at EOS).

  All prompts share length P. Each token re-runs the model over the last `window` tokens (at most its max_len),
  one compiled program for every step, so generation may run past the model's context by sliding the window.
  """
  B, P = prompt_BP.shape
  total = P + num_new
  W = min(window, total)
  tokens_BT = jnp.zeros((B, total), jnp.int32).at[:, :P].set(prompt_BP)

  def body(pos, carry):
    tokens_BT, rng = carry
    start = jnp.clip(pos - W, 0, total - W)
    context_BW = jax.lax.dynamic_slice_in_dim(tokens_BT, start, W, axis=1)
    logits_BWV = model.apply({"params": params}, context_BW, deterministic=True)
    logits_BV = jax.lax.dynamic_index_in_dim(logits_BWV, pos - 1 - start, axis=1, keepdims=False)
    rng, step_rng = jax.random.split(rng)
    next_B = sample_logits(logits_BV, step_rng, temperature, top_k, top_p)
    return tokens_BT.at[:, pos].set(next_B), rng

  tokens_BT, _ = jax.lax.fori_loop(P, total, body, (tokens_BT, rng))
  return tokens_BT
