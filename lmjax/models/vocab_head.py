"""Losses over a vocabulary head that never hold the [tokens, V] float32 logits whole (train.loss_chunk_tokens).

A model asked for `return_hidden=True` returns, in place of its logits, a `Hidden`: the final hidden states and
the `VocabHead` (the output weights as arrays) that turns them into logits. `token_stats(fn, sources, ...)` then
applies a per-token function of the logits (a cross-entropy, a KL, an argmax) to chunks of `chunk` tokens in a
`lax.scan`, each chunk under `jax.checkpoint`: the forward pass keeps only each chunk's per-token results, and the
backward pass recomputes the chunk's logits from its hidden states. Peak memory for the head falls from
tokens x V to chunk x V floats, for the price of the head's matmul once more in the backward pass.

Given plain logits (a model called as usual, or train.loss_chunk_tokens=0), `token_stats` is exactly `fn` of them,
so today's computation, and its metrics, stay bit-identical.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp


class VocabHead(NamedTuple):
  """logits = x . weight_VD^T (+ bias_V), in x's dtype, then float32: what nn.Embed.attend (a tied embedding) and
  a dense [D, V] head (given transposed) compute."""
  weight_VD: jax.Array
  bias_V: jax.Array | None = None

  def logits(self, x_ND: jax.Array) -> jax.Array:
    logits_NV = jnp.dot(x_ND, self.weight_VD.astype(x_ND.dtype).T).astype(jnp.float32)
    return logits_NV if self.bias_V is None else logits_NV + self.bias_V.astype(jnp.float32)


class Hidden(NamedTuple):
  """Logits not yet computed: hidden states [..., D] and the head that projects them."""
  x_XD: jax.Array
  head: VocabHead

  def logits(self) -> jax.Array:
    return self.head.logits(self.x_XD)


def token_stats(fn: Callable[..., Any], sources: Sequence[Any], extras: Sequence[jax.Array] = (), *,
                chunk: int = 0) -> Any:
  """fn(*logits, *extras) -> per-token results (a pytree of arrays shaped like the tokens), for sources that are
  logits [..., V] or `Hidden` [..., D] over the same tokens, and extras [..., ...] per token (targets, weights).

  With only logits: fn of them, unchanged. With a Hidden: over chunks of `chunk` tokens (0: all at once), each
  recomputed in the backward pass."""
  if not any(isinstance(s, Hidden) for s in sources):
    return fn(*sources, *extras)
  lead = (sources[0].x_XD if isinstance(sources[0], Hidden) else sources[0]).shape[:-1]
  N = math.prod(lead)
  if not chunk or N <= chunk:
    return fn(*(s.logits() if isinstance(s, Hidden) else s for s in sources), *extras)
  chunks = -(-N // chunk)

  def cut(a: jax.Array) -> jax.Array:
    """[*lead, ...] -> [chunks, chunk, ...], zero-padded (padded tokens' results are dropped)."""
    flat = a.reshape(N, *a.shape[len(lead):])
    flat = jnp.pad(flat, [(0, chunks * chunk - N)] + [(0, 0)] * (flat.ndim - 1))
    return flat.reshape(chunks, chunk, *flat.shape[1:])

  heads = [s.head if isinstance(s, Hidden) else None for s in sources]
  inputs = [cut(s.x_XD if isinstance(s, Hidden) else s) for s in sources] + [cut(e) for e in extras]

  @jax.checkpoint
  def one(chunk_inputs, heads):
    xs, rest = chunk_inputs[:len(sources)], chunk_inputs[len(sources):]
    return fn(*(x if h is None else h.logits(x) for h, x in zip(heads, xs)), *rest)

  _, out = jax.lax.scan(lambda carry, chunk_inputs: (carry, one(chunk_inputs, heads)), None, inputs)
  return jax.tree_util.tree_map(lambda y: y.reshape(chunks * chunk, *y.shape[2:])[:N].reshape(*lead, *y.shape[2:]),
                                out)
