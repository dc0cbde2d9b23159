"""model.position='t5': Raffel et al. (2020), a learned bias per (log-bucketed) relative position and head, added to
the attention logits. One table serves the whole stack, as in T5, where only the first layer owns it and the rest
reuse its output. Encoders use bidirectional buckets (keys before and after the query differ), decoders causal
ones.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from lmjax import config as config_lib
from lmjax.models.layers import dtype_of, normal_init
from lmjax.models.positions.base import PositionEncoding, PositionSettings, relative_positions
from lmjax.registry import POSITIONS


@dataclasses.dataclass(frozen=True)
class T5Settings(PositionSettings):
  relative_buckets: int = 32  # buckets of the learned relative position bias
  relative_max_distance: int = 128  # offsets at least this far apart share the last bucket


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


@POSITIONS.register("t5")
class T5RelativeBias(PositionEncoding):
  adds_bias = True
  subtree = "relative_bias"
  Settings = T5Settings

  def setup(self):
    cfg = self.cfg
    self.table_RH = self.param("rel_embedding", normal_init(cfg.init_std, None, "heads"),
                               (cfg.position.relative_buckets, cfg.num_heads), dtype_of(cfg.param_dtype))

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    m = cfg.model
    config_lib.at_least(cfg, "model.relative_buckets", 2)
    if m.relative_max_distance <= m.relative_buckets // 2:
      config_lib.fail("model.relative_max_distance", m.relative_max_distance,
                      f"must exceed model.relative_buckets // 2 = {m.relative_buckets // 2}, where exact buckets end")

  def bias(self, positions_BL: jax.Array, kv_positions_BM: jax.Array | None = None) -> jax.Array:
    s = self.cfg.position
    buckets_BLM = relative_position_bucket(relative_positions(positions_BL, kv_positions_BM),
                                           bidirectional=self.bidirectional, num_buckets=s.relative_buckets,
                                           max_distance=s.relative_max_distance)
    bias_BLMH = jnp.take(self.table_RH, buckets_BLM, axis=0).astype(jnp.float32)
    return jnp.transpose(bias_BLMH, (0, 3, 1, 2))
