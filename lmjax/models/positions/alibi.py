"""model.position='alibi': Press et al. (2022) linear biases, -slope_h * |q - k| added to the attention logits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.models.positions.base import PositionEncoding, relative_positions
from lmjax.registry import POSITIONS


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


def alibi_bias(positions_BL: jax.Array, num_heads: int, kv_positions_BM: jax.Array | None = None) -> jax.Array:
  """[B, H, L, M] additive bias -slope_h * |q - k|: symmetric, so it suits encoders too; a decoder masks the
  keys after the query anyway."""
  distance_BLM = jnp.abs(relative_positions(positions_BL, kv_positions_BM)).astype(jnp.float32)
  slopes_H = jnp.asarray(alibi_slopes(num_heads))
  return -slopes_H[None, :, None, None] * distance_BLM[:, None]


@POSITIONS.register("alibi")
class AlibiPositions(PositionEncoding):
  adds_bias = True

  def bias(self, positions_BL: jax.Array, kv_positions_BM: jax.Array | None = None) -> jax.Array:
    return alibi_bias(positions_BL, self.cfg.num_heads, kv_positions_BM)
