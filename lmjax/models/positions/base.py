"""The interface every position encoding implements, and the one place the stacks meet positions.

A position scheme can act in up to three places, and the Transformer stack asks each encoding for all three
without knowing which kind it is:

  embedding(positions_BL)       a term added to the token embeddings (learned table, sinusoids), or None;
  bias(positions_BL, kv_BM)     a [B, H, L, M] term added to the attention logits (ALiBi, T5), or None;
  rotation(positions_BL)        a rotation of queries and keys by their positions (RoPE), or None;

and it says how long a sequence it can place: `max_length(model)` (a learned table stops at model.max_len; the
others extrapolate). All of them read per-document positions, so packed documents see the offsets they would see
alone, and a decoding step passes the absolute positions of its new tokens (and of the cache slots, for biases).

An encoding's own config fields live in its `Settings` dataclass (they become `model.<field>` in the config, with
these defaults), checked by its `validate`. The stack creates the encoding under `subtree` (the parameter subtree it
owns), so parameter names stay the same in every model that uses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn



@dataclasses.dataclass(frozen=True)
class PositionSettings:
  """An encoding's config fields; subclasses add theirs (with defaults). `kind` is its registered name."""
  kind: str = ""


class Rotation(NamedTuple):
  """cos and sin [B, L, d] of the angles by which feature pairs (i, i + d/2) of a head are rotated."""
  cos_BLd: jax.Array
  sin_BLd: jax.Array


def rotate(x_BLHd: jax.Array, rotation: Rotation | None) -> jax.Array:
  """The rotate-half layout of GPT-NeoX and LLaMA: x * cos + rotate_half(x) * sin, computed in float32."""
  if rotation is None:
    return x_BLHd
  d = x_BLHd.shape[-1]
  x = x_BLHd.astype(jnp.float32)
  rotated_BLHd = jnp.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
  cos_BL1d, sin_BL1d = rotation.cos_BLd[:, :, None, :], rotation.sin_BLd[:, :, None, :]
  return (x * cos_BL1d + rotated_BLHd * sin_BL1d).astype(x_BLHd.dtype)


class PositionEncoding(nn.Module):
  """Base class: every hook has a neutral default, so an encoding overrides only where it acts."""
  cfg: Any  # a TransformerConfig (lmjax/models/stack.py), which imports this module
  bidirectional: bool = False  # whether keys after the query are seen (encoders); some biases tell them apart

  subtree: ClassVar[str] = "positions"
  adds_bias: ClassVar[bool] = False  # whether `bias` returns an array (attention implementations must add it)
  Settings: ClassVar[type[PositionSettings]] = PositionSettings
  registered_name: ClassVar[str] = ""

  @classmethod
  def section_fields(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls.Settings) if f.name != "kind"}

  @classmethod
  def settings(cls, fields: Any) -> PositionSettings:
    """The Settings of this encoding from anything holding its fields (config.model, or a dict)."""
    get = fields.get if isinstance(fields, dict) else lambda k, d: getattr(fields, k, d)
    return cls.Settings(kind=cls.registered_name, **{k: get(k, v) for k, v in cls.section_fields().items()})

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    """Range checks of the encoding's own fields; run on every config, chosen or not."""
    del cfg

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    """What the encoding needs of the rest of config.model, checked when it is chosen."""
    del cfg

  @classmethod
  def max_length(cls, model: Any) -> int | None:
    """The longest sequence it can place, from config.model or a frozen model config; None: no limit."""
    del model
    return None

  def embedding(self, positions_BL: jax.Array, num_positions: int = 0) -> jax.Array | None:
    """[B, L, D] added to the token embeddings. `num_positions` bounds the positions looked up when it exceeds
    the input length: a decoding step sees one token, but its position may lie anywhere in the cache."""
    del positions_BL, num_positions
    return None

  def bias(self, positions_BL: jax.Array, kv_positions_BM: jax.Array | None = None) -> jax.Array | None:
    """[B, H, L, M] float32 added to the attention logits. Keys are the queries themselves unless
    `kv_positions_BM` is given (decoding against cache slots)."""
    del positions_BL, kv_positions_BM
    return None

  def rotation(self, positions_BL: jax.Array) -> Rotation | None:
    """How queries and keys at these positions are rotated before their dot products."""
    del positions_BL
    return None


def relative_positions(positions_BL: jax.Array, kv_positions_BM: jax.Array | None = None) -> jax.Array:
  """[B, L, M] key position minus query position (negative for keys in the past)."""
  kv_positions_BM = positions_BL if kv_positions_BM is None else kv_positions_BM
  return kv_positions_BM[:, None, :] - positions_BL[:, :, None]
