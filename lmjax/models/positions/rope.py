"""model.position='rope': Su et al. (2021) rotary embeddings. Queries and keys are rotated by angles proportional
to their positions, so q.k depends on positions only through their difference; nothing is added to the embeddings.

`model.rope_scaling` stretches the wavelengths of a model trained at one context to a longer one: 'linear'
divides every frequency by model.rope_factor (position interpolation); 'llama3' (Llama 3.1) divides only the low
frequencies, those whose wavelength exceeds rope_original_max_len / rope_low_freq_factor, keeps the high ones
(wavelength under rope_original_max_len / rope_high_freq_factor) and blends in between.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from lmjax import config as config_lib
from lmjax.models.positions.base import PositionEncoding, PositionSettings, Rotation, rotate
from lmjax.registry import POSITIONS


@dataclasses.dataclass(frozen=True)
class RopeSettings(PositionSettings):
  rope_base: float = 10000.0  # wavelengths of the rotary frequencies: pair i turns at base^(-2i/d) per position
  rope_scaling: str = "none"  # 'none', 'linear' or 'llama3': frequencies stretched for a longer context
  rope_factor: float = 1.0  # how many times longer (linear, llama3)
  rope_low_freq_factor: float = 1.0  # llama3: wavelengths above rope_original_max_len / this are fully stretched
  rope_high_freq_factor: float = 4.0  # llama3: wavelengths below rope_original_max_len / this are kept
  rope_original_max_len: int = 8192  # llama3: the context the model was first trained at


SCALINGS = ("none", "linear", "llama3")


def inverse_frequencies(head_dim: int, s: RopeSettings) -> jax.Array:
  """[d/2] float32 turns per position of each feature pair, after model.rope_scaling."""
  inv_freq_f = 1.0 / (s.rope_base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if s.rope_scaling == "linear":
    return inv_freq_f / s.rope_factor
  if s.rope_scaling == "llama3":
    wavelength_f = 2 * math.pi / inv_freq_f
    low_freq_wavelength = s.rope_original_max_len / s.rope_low_freq_factor
    high_freq_wavelength = s.rope_original_max_len / s.rope_high_freq_factor
    stretched_f = jnp.where(wavelength_f > low_freq_wavelength, inv_freq_f / s.rope_factor, inv_freq_f)
    smooth_f = ((s.rope_original_max_len / wavelength_f - s.rope_low_freq_factor)
                / (s.rope_high_freq_factor - s.rope_low_freq_factor))
    blended_f = (1 - smooth_f) * stretched_f / s.rope_factor + smooth_f * stretched_f
    medium_f = (wavelength_f >= high_freq_wavelength) & (wavelength_f <= low_freq_wavelength)
    return jnp.where(medium_f, blended_f, stretched_f)
  return inv_freq_f


def rope_rotation(positions_BL: jax.Array, head_dim: int, base: float,
                  inv_freq_f: jax.Array | None = None) -> Rotation:
  """Angles positions * base^(-2i/d) (or the given frequencies) for the pairs (i, i + d/2), in float32: in
  bfloat16, positions past 256 would already be rounded."""
  if inv_freq_f is None:
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
    config_lib.one_of(cfg, "model.rope_scaling", SCALINGS)
    config_lib.at_least(cfg, "model.rope_factor", 1.0)
    config_lib.at_least(cfg, "model.rope_original_max_len", 1)
    m = cfg.model
    if m.rope_scaling == "llama3" and not 0 < m.rope_low_freq_factor < m.rope_high_freq_factor:
      config_lib.fail("model.rope_low_freq_factor", m.rope_low_freq_factor, f"must be positive and below "
                      f"model.rope_high_freq_factor={m.rope_high_freq_factor} for rope_scaling='llama3'")

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    m = cfg.model
    if m.head_width % 2:
      config_lib.fail("model.head_width", m.head_width, "is odd; position='rope' rotates pairs of features, so it "
                      "must be even")
    if not m.head_width and (m.d_model // m.num_heads) % 2:
      config_lib.fail("model.d_model", m.d_model, f"gives an odd head width {m.d_model // m.num_heads} with "
                      f"model.num_heads={m.num_heads}; position='rope' rotates pairs of features, so it must be even")

  def rotation(self, positions_BL: jax.Array) -> Rotation:
    s = self.cfg.position
    if s.rope_scaling == "none":  # the original computation, unchanged
      return rope_rotation(positions_BL, self.cfg.head_dim, s.rope_base)
    return rope_rotation(positions_BL, self.cfg.head_dim, s.rope_base, inverse_frequencies(self.cfg.head_dim, s))
