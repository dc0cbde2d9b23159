"""model.position='learned': a trained [max_len, D] table added to the token embeddings (GPT-2, BERT)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmjax.models.layers import dtype_of, normal_init
from lmjax.models.positions.base import PositionEncoding
from lmjax.registry import POSITIONS


@POSITIONS.register("learned")
class LearnedPositions(PositionEncoding):

  def setup(self):
    cfg = self.cfg
    self.table_LD = self.param("embedding", normal_init(cfg.init_std, "length", "embed"), (cfg.max_len, cfg.d_model),
                               dtype_of(cfg.param_dtype))

  @classmethod
  def max_length(cls, model: Any) -> int | None:
    return model.max_len

  def embedding(self, positions_BL: jax.Array, num_positions: int = 0) -> jax.Array:
    return jnp.take(self.table_LD, positions_BL, axis=0).astype(dtype_of(self.cfg.dtype))
