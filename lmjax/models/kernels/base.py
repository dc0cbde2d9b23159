"""What an attention implementation is: a function of one self-attention call and what it can do.

Every implementation computes the same function, softmax(Q K^T / sqrt(d) + bias) V under the causal and document
masks of lmjax/models/attention.py, for grouped-query heads too (query head h = k * G + g reads key/value head k).
They differ in how: materialized scores (the XLA reference), a fused library kernel (cuDNN), a Pallas kernel
(splash on TPU, the Triton flash kernel on GPU), or blockwise online-softmax attention in plain JAX (flash, and
ring attention across the mesh's sequence axis). What each cannot do (an additive position bias, attention
dropout, returning the attention maps) it declares here, and the config refuses the combination in one line
instead of falling back silently.

Rows of padding (segment id 0) attend to nothing; their outputs are unspecified (finite, never NaN) and differ
between implementations. Every consumer masks them: the losses weight padding by 0 and no real query reads a
padding key, so real outputs and every gradient are the same whichever implementation runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

MASKED = -1e30  # large but finite, so fully masked rows (padding) give a uniform softmax instead of NaN


class Call(NamedTuple):
  """One self-attention call, as every implementation receives it.

  `segment_ids_BL` is None for one document per row without padding (a plain causal LM); `mask_B1LM` is the dense
  boolean mask the same segments and causality give, for the implementations that take one (computed lazily by
  the caller: XLA drops it from the program when nothing reads it).
  """
  q_BLHd: jax.Array
  k_BLKd: jax.Array
  v_BLKd: jax.Array
  segment_ids_BL: jax.Array | None
  mask_B1LM: jax.Array
  bias_BHLM: jax.Array | None = None
  dropout_rng: jax.Array | None = None
  dropout_rate: float = 0.0
  return_probs: bool = False


class Needs(NamedTuple):
  """What a model asks of attention, which decides what `auto` may pick and what a fixed choice must support."""
  bias: bool = False  # an additive position bias (ALiBi, T5)
  dropout: bool = False  # attention dropout in this call
  probs: bool = False  # the attention maps are recorded (distillation)
  sequence_shards: int = 1  # the mesh's sequence axis: context parallelism when > 1
  dtype: str = "float32"  # the compute dtype
  length: int = 0  # the query length of this call


@dataclasses.dataclass(frozen=True)
class Kernel:
  """An implementation of model.attention_impl, registered in lmjax.registry.ATTENTION by its file."""
  name: str
  summary: str  # one line for docs and logs
  attend: Callable[[Call, bool], Any] | None  # (call, causal) -> out_BLHd (with return_probs: (out, probs_BHLM))
  biases: bool = False
  dropout: bool = False
  probs: bool = False
  dtypes: tuple[str, ...] = ()  # compute dtypes it runs; () for any
  platforms: tuple[str, ...] = ()  # jax backends it compiles for; () for any
  interpretable: bool = False  # a Pallas kernel: elsewhere it runs in interpret mode (for tests: slow)
  sequence_parallel: bool = False  # runs with the length axis sharded over the mesh's 'sequence' axis

  def resolve(self, needs: Needs, platform: str) -> "Kernel":
    """The implementation that runs: this one (`auto` overrides this)."""
    del needs, platform
    return self

  def unsupported(self, needs: Needs) -> str:
    """Why this implementation cannot serve `needs` ('' when it can): the first missing capability."""
    if needs.bias and not self.biases:
      return "it adds no attention bias"
    if needs.dropout and not self.dropout:
      return "it has no attention dropout"
    if needs.probs and not self.probs:
      return "it does not return the attention maps"
    if self.dtypes and needs.dtype not in self.dtypes:
      return f"it computes in {' or '.join(self.dtypes)}, not {needs.dtype}"
    if needs.sequence_shards > 1 and not self.sequence_parallel:
      return f"the length axis is split over mesh.sequence={needs.sequence_shards} devices"
    return ""


def segments_or_ones(segment_ids_BL: jax.Array | None, batch: int, length: int) -> jax.Array:
  """The segment ids, or one document per row when there are none."""
  if segment_ids_BL is None:
    return jnp.ones((batch, length), jnp.int32)
  return segment_ids_BL.astype(jnp.int32)


def pad_length(x: jax.Array, multiple: int, axis: int = 1) -> jax.Array:
  """x zero-padded along `axis` to a multiple of `multiple` (padding is segment 0: seen by no real query)."""
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def repeat_kv_heads(x_BLKd: jax.Array, heads: int) -> jax.Array:
  """[B, L, K, d] -> [B, L, H, d] with query head h = k * G + g reading key/value head k, for kernels that want one
  key/value head per query head."""
  K = x_BLKd.shape[2]
  return x_BLKd if K == heads else jnp.repeat(x_BLKd, heads // K, axis=2)
