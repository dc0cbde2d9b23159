"""Position encodings.

Absolute encodings ('learned', 'sinusoidal') are added to the token embeddings; 'none' adds nothing (NoPE).
Relative encodings act inside attention instead: `AbsolutePositions` is the only hook the embedding stage needs,
and attention receives `positions_BL` so rotary or bias-based encodings can be added there without touching the
rest of the model.
"""

from __future__ import annotations

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
  def __call__(self, positions_BL: jax.Array) -> jax.Array | float:
    cfg = self.cfg
    if cfg.position == "learned":
      table_LD = self.param("embedding", normal_init(cfg.init_std, "length", "embed"),
                            (cfg.max_len, cfg.d_model), dtype_of(cfg.param_dtype))
      return jnp.take(table_LD, positions_BL, axis=0).astype(dtype_of(cfg.dtype))
    if cfg.position == "sinusoidal":
      table_LD = jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model), dtype_of(cfg.dtype))
      # Sinusoids extrapolate, so positions past max_len are computed instead of looked up.
      if positions_BL.shape[-1] > cfg.max_len:
        table_LD = jnp.asarray(sinusoidal_table(positions_BL.shape[-1], cfg.d_model), dtype_of(cfg.dtype))
      return jnp.take(table_LD, positions_BL, axis=0, mode="clip")
    return 0.0
