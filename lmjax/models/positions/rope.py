"""model.position='rope': Su et al. (2021) rotary embeddings. Queries and keys are rotated by angles proportional
to their positions, so q.k depends on positions only through their difference; nothing is added to the embeddings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from lmjax import config as config_lib
from lmjax.models.positions.base import PositionEncoding, PositionSettings, Rotation, rotate
from lmjax.registry import POSITIONS


@dataclasses.dataclass(frozen=True)
class RopeSettings(PositionSettings):
  rope_base: float = 10000.0  # wavelengths of the rotary frequencies: pair i turns at base^(-2i/d) per position


def rope_rotation(positions_BL: jax.Array, head_dim: int, base: float) -> Rotation:
  """Angles positions * base^(-2i/d) for the pairs (i, i + d/2), in float32: in bfloat16, positions past 256 would
  already be rounded."""
  inv_freq_f = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_BLf = positions_BL.astype(jnp.float32)[..., None] * inv_freq_f
  angles_BLd = jnp.concatenate([angles_BLf, angles_BLf], axis=-1)
  return Rotation(jnp.cos(angles_BLd), jnp.sin(angles_BLd))


def apply_rope(x_BLHd: jax.Array, positions_BL: jax.Array, base: float = 10000.0) -> jax.Array:
  """x rotated by its positions (the rotation the attention applies to queries and keys)."""
  return rotate(x_BLHd, rope_rotation(positions_BL, x_BLHd.shape[-1], base))


@POSITIONS.register("rope")
class RotaryPositions(PositionEncoding):
  Settings = RopeSettings

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    config_lib.at_least(cfg, "model.rope_base", 1.0, strict=True)

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    m = cfg.model
    if (m.d_model // m.num_heads) % 2:
      config_lib.fail("model.d_model", m.d_model, f"gives an odd head width {m.d_model // m.num_heads} with "
                      f"model.num_heads={m.num_heads}; position='rope' rotates pairs of features, so it must be even")

  def rotation(self, positions_BL: jax.Array) -> Rotation:
    return rope_rotation(positions_BL, self.cfg.head_dim, self.cfg.position.rope_base)
