"""Position encodings.

Absolute encodings ('learned', 'sinusoidal') are added to the token embeddings; 'none' adds nothing (NoPE).
Relative encodings act inside attention instead and add nothing to the embeddings:
  'rope'   Su et al. (2021) rotary embeddings, rotating q and k by angles proportional to their positions;
  'alibi'  Press et al. (2022) linear biases, -slope_h * distance added to the attention logits;
  't5'     Raffel et al. (2020) learned bias per (log-bucketed) relative position and head, shared by all layers.
All of them read offsets from the per-document `positions_BL`, so packed documents see the same offsets as they
would alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.layers import dtype_of, normal_init

ABSOLUTE_KINDS = ("learned", "sinusoidal")


def sinusoidal_table(max_len: int, width: int) -> np.ndarray:
  """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...)."""
  positions = np.arange(max_len)[:, None]
  inv_freq = np.exp(-np.log(10000.0) * np.arange(0, width, 2) / width)
  table = np.zeros((max_len, width), np.float32)
  table[:, 0::2] = np.sin(positions * inv_freq)
  table[:, 1::2] = np.cos(positions * inv_freq)[:, : width // 2]
  return table


class AbsolutePositions(nn.Module):
  """Returns the position term to add to embeddings, or 0 when positions live inside attention."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, positions_BL: jax.Array, num_positions: int = 0) -> jax.Array | float:
    """`num_positions` bounds the positions looked up when it exceeds the input length: a decoding step sees one
    token, but its position may lie anywhere in the cache."""
    cfg = self.cfg
    if cfg.position == "learned":
      table_LD = self.param("embedding", normal_init(cfg.init_std, "length", "embed"),
                            (cfg.max_len, cfg.d_model), dtype_of(cfg.param_dtype))
      return jnp.take(table_LD, positions_BL, axis=0).astype(dtype_of(cfg.dtype))
    if cfg.position == "sinusoidal":
      table_LD = jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model), dtype_of(cfg.dtype))
      # Sinusoids extrapolate, so positions past max_len are computed instead of looked up.
      needed = max(positions_BL.shape[-1], num_positions)
      if needed > cfg.max_len:
        table_LD = jnp.asarray(sinusoidal_table(needed, cfg.d_model), dtype_of(cfg.dtype))
      # Scaled so each feature has the RMS of a learned table at init (init_std): at amplitude 1 the sinusoids
      # drown token embeddings initialized at 0.02, and a small model never learns to read the tokens.
      scale = cfg.init_std * np.sqrt(2.0)
      return jnp.take(table_LD, positions_BL, axis=0, mode="clip") * jnp.asarray(scale, table_LD.dtype)
    return 0.0


def apply_rope(x_BLHd: jax.Array, positions_BL: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotates feature pairs (i, i + d/2) by positions * base^(-2i/d): the rotate-half layout of GPT-NeoX and LLaMA.

  Because both q and k are rotated by their own position, q.k depends on the positions only through their
  difference.
  """
  d = x_BLHd.shape[-1]
  inv_freq_f = 1.0 / (base ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  # float32 angles: in bfloat16 positions past 256 would already be rounded.
  angles_BLf = positions_BL.astype(jnp.float32)[..., None] * inv_freq_f
  cos_BL1d = jnp.cos(jnp.concatenate([angles_BLf, angles_BLf], axis=-1))[:, :, None, :]
  sin_BL1d = jnp.sin(jnp.concatenate([angles_BLf, angles_BLf], axis=-1))[:, :, None, :]
  x = x_BLHd.astype(jnp.float32)
  rotated_BLHd = jnp.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
  return (x * cos_BL1d + rotated_BLHd * sin_BL1d).astype(x_BLHd.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Head slopes of the ALiBi paper's reference code: a geometric sequence starting at 2^(-8/n).

  For a head count that is not a power of two it takes the n = largest power of two below it, and fills the rest
  with every other slope of 2n, so the extra heads interleave with the first ones.
  """
  def power_of_two(n: int) -> list[float]:
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]

  if math.log2(num_heads).is_integer():
    return np.asarray(power_of_two(num_heads), np.float32)
  n = 2 ** math.floor(math.log2(num_heads))
  extra = alibi_slopes(2 * n)[0::2][: num_heads - n]
  return np.concatenate([np.asarray(power_of_two(n), np.float32), extra]).astype(np.float32)


def relative_positions(positions_BL: jax.Array, kv_positions_BM: jax.Array | None = None) -> jax.Array:
  """[B, L, M] key position minus query position (negative for keys in the past).

  Keys are the queries themselves unless `kv_positions_BM` is given, as when decoding against a cache whose keys
  sit at other positions than the new tokens.
  """
  kv_positions_BM = positions_BL if kv_positions_BM is None else kv_positions_BM
  return kv_positions_BM[:, None, :] - positions_BL[:, :, None]


def alibi_bias(positions_BL: jax.Array, num_heads: int, kv_positions_BM: jax.Array | None = None) -> jax.Array:
  """[B, H, L, M] additive bias -slope_h * |q - k|; keys after the query are masked anyway for a decoder."""
  distance_BLM = jnp.abs(relative_positions(positions_BL, kv_positions_BM)).astype(jnp.float32)
  slopes_H = jnp.asarray(alibi_slopes(num_heads))
  return -slopes_H[None, :, None, None] * distance_BLM[:, None]


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's bucketing of key - query offsets: exact buckets for small offsets, log-spaced ones up to max_distance.

  Bidirectional buckets spend half of the buckets on keys after the query; unidirectional (causal) ones map every
  future key to bucket 0 and use all buckets for the past.
  """
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(relative_position.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # n is clipped below so the log of the (unused) small branch stays finite.
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """T5's learned bias: one [buckets, heads] table, looked up by bucketed offset; returns [B, H, L, M] float32."""
  cfg: ModelConfig
  bidirectional: bool = False

  @nn.compact
  def __call__(self, positions_BL: jax.Array, kv_positions_BM: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    table_RH = self.param("rel_embedding", normal_init(cfg.init_std, None, "heads"),
                          (cfg.relative_buckets, cfg.num_heads), dtype_of(cfg.param_dtype))
    buckets_BLM = relative_position_bucket(relative_positions(positions_BL, kv_positions_BM),
                                           bidirectional=self.bidirectional, num_buckets=cfg.relative_buckets,
                                           max_distance=cfg.relative_max_distance)
    bias_BLMH = jnp.take(table_RH, buckets_BLM, axis=0).astype(jnp.float32)
    return jnp.transpose(bias_BLMH, (0, 3, 1, 2))
