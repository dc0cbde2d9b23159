"""model.position='sinusoidal': Vaswani et al. (2017), fixed sinusoids added to the token embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.models.layers import dtype_of
from lmjax.models.positions.base import PositionEncoding
from lmjax.registry import POSITIONS


def sinusoidal_table(max_len: int, width: int) -> np.ndarray:
  """PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...)."""
  positions = np.arange(max_len)[:, None]
  inv_freq = np.exp(-np.log(10000.0) * np.arange(0, width, 2) / width)
  table = np.zeros((max_len, width), np.float32)
  table[:, 0::2] = np.sin(positions * inv_freq)
  table[:, 1::2] = np.cos(positions * inv_freq)[:, : width // 2]
  return table


@POSITIONS.register("sinusoidal")
class SinusoidalPositions(PositionEncoding):
  """Sinusoids extrapolate, so positions past model.max_len are computed instead of looked up."""

  def embedding(self, positions_BL: jax.Array, num_positions: int = 0) -> jax.Array:
    cfg = self.cfg
    dtype = dtype_of(cfg.dtype)
    table_LD = jnp.asarray(sinusoidal_table(max(cfg.max_len, positions_BL.shape[-1], num_positions), cfg.d_model),
                           dtype)
    # Scaled so each feature has the RMS of a learned table at init (init_std): at amplitude 1 the sinusoids
    # drown token embeddings initialized at 0.02, and a small model never learns to read the tokens.
    scale = cfg.init_std * np.sqrt(2.0)
    return jnp.take(table_LD, positions_BL, axis=0, mode="clip") * jnp.asarray(scale, dtype)
