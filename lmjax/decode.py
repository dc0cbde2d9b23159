"""Autoregressive sampling from a decoder-only model.

Each new token re-runs the model over a fixed-size window of the most recent tokens, so one compiled program
serves every step (a `lax.fori_loop`, no Python loop per token) and generation may run past the model's context
by sliding the window.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


def sample_logits(logits_BV: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Greedy at temperature 0; otherwise sample from softmax(logits / T), optionally among the top k only."""
  if temperature == 0.0:
    return logits_BV.argmax(-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if top_k > 0:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV).astype(jnp.int32)


def generate(model: nn.Module, params: Any, prompt_BP: jax.Array, rng: jax.Array, *, num_new: int,
             window: int, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """Returns [B, P + num_new] tokens: the prompt followed by num_new sampled tokens.

  All prompts share length P. `window` is the longest context the model is run on (its max_len).
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
    next_B = sample_logits(logits_BV, step_rng, temperature, top_k)
    return tokens_BT.at[:, pos].set(next_B), rng

  tokens_BT, _ = jax.lax.fori_loop(P, total, body, (tokens_BT, rng))
  return tokens_BT
