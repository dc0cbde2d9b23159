"""Feed-forward neural language model (Bengio et al., 2003): the next token from a fixed window of previous ones.

Position t sees the embeddings of tokens t-C+1 .. t (C = model.ffnn_context), concatenated, through
model.num_layers hidden layers of width model.mlp_dim. Window slots that fall before the start of the token's
document (or of the input) hold zeros, so packed documents stay independent just as under the GPT's attention
mask. The direct input-to-output connections of the paper are left out.

model.init_std is the embedding's scale. Nothing normalizes the hidden layer's input, so the GPT's 0.02 leaves
the first hundreds of steps near the unigram loss; unit-scale embeddings (init_std=1) learn at once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from lmjax import config as config_lib
from lmjax.models.base import ModelConfig, multiplying_params
from lmjax.models.layers import ACTIVATIONS, GATED_ACTIVATIONS, dtype_of, normal_init, zeros_init
from lmjax.registry import MODELS


def shifted_windows(x_BLD: jax.Array, segment_ids_BL: jax.Array, context: int) -> jax.Array:
  """[B, L, C, D]: slot c of position t holds x[t - c] if it lies in t's document, else zeros.

  C static shifts of the whole array (C is small), rather than a gather per position.
  """
  B, L, D = x_BLD.shape
  slots = []
  for c in range(context):
    x_shift_BLD = jnp.pad(x_BLD, ((0, 0), (c, 0), (0, 0)))[:, :L]
    # -1 never equals a segment id (0 is padding, documents count from 1): slots before the input are masked too.
    seg_shift_BL = jnp.pad(segment_ids_BL, ((0, 0), (c, 0)), constant_values=-1)[:, :L]
    same_BL1 = (seg_shift_BL == segment_ids_BL)[..., None]
    slots.append(jnp.where(same_BL1, x_shift_BLD, jnp.zeros((), x_BLD.dtype)))
  return jnp.stack(slots, axis=2)


class FlatDense(nn.Module):
  """x [N, K] @ kernel + bias, with the kernel stored in `kernel_shape` (e.g. [C, D, F]) so that each of its axes
  keeps a logical name, but applied as one [K, F] matrix: with two contracted axes XLA:CPU transposes
  activations (see layers.Mlp)."""
  cfg: "FfnnConfig"
  features: int
  axes: tuple[str | None, ...]
  kernel_shape: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x_NK: jax.Array) -> jax.Array:
    K, param_dtype, dtype = x_NK.shape[-1], dtype_of(self.cfg.param_dtype), dtype_of(self.cfg.dtype)
    # Fan-in scaled, so hidden units neither saturate nor vanish as the window C*D grows.
    init = normal_init(1.0 / math.sqrt(K), *self.axes)
    kernel_KF = self.param("kernel", init, self.kernel_shape or (K, self.features), param_dtype)
    bias_F = self.param("bias", zeros_init(self.axes[-1]), (self.features,), param_dtype)
    return x_NK.astype(dtype) @ kernel_KF.reshape(K, self.features).astype(dtype) + bias_F.astype(dtype)


class FeedForwardLm(nn.Module):
  """Returns float32 logits [B, L, V]; same call signature as the GPT Decoder."""
  cfg: "FfnnConfig"

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    del positions_BL  # the window is fixed-size; documents are told apart by segment ids alone
    cfg = self.cfg
    B, L = tokens_BL.shape
    C, D, F = cfg.ffnn_context, cfg.d_model, cfg.mlp_dim
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((B, L), jnp.int32)
    embed = nn.Embed(cfg.vocab_size, D, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                     embedding_init=normal_init(cfg.init_std, "vocab", "embed"), name="embed")
    x_BLD = nn.Dropout(cfg.dropout)(embed(tokens_BL), deterministic=deterministic)
    h_NK = shifted_windows(x_BLD, segment_ids_BL, C).reshape(B * L, C * D)

    for i in range(cfg.num_layers):
      axes, shape = ((None, "embed", "mlp"), (C, D, F)) if i == 0 else (("mlp", None), None)
      layer = lambda suffix: FlatDense(cfg, F, axes, shape, name=f"hidden_{i}{suffix}")(h_NK)
      if cfg.activation in GATED_ACTIVATIONS:
        h_NF = GATED_ACTIVATIONS[cfg.activation](layer("_gate")) * layer("_up")
      else:
        h_NF = ACTIVATIONS[cfg.activation](layer(""))
      h_NK = nn.Dropout(cfg.dropout)(h_NF, deterministic=deterministic)

    if cfg.tie_embeddings:
      logits_NV = embed.attend(FlatDense(cfg, D, ("mlp", "embed"), name="to_embed")(h_NK))
    else:
      logits_NV = FlatDense(cfg, cfg.vocab_size, ("mlp", "vocab"), name="lm_head")(h_NK)
    logits_BLV = nn.with_logical_constraint(logits_NV.reshape(B, L, -1), ("batch", "length", "vocab"))
    return logits_BLV.astype(jnp.float32)


@MODELS.register("ffnn")
@dataclasses.dataclass(frozen=True)
class FfnnConfig(ModelConfig):
  num_layers: int = 4
  d_model: int = 128
  mlp_dim: int = 512
  activation: str = "gelu"
  tie_embeddings: bool = True
  ffnn_context: int = 8  # previous tokens the feed-forward LM sees (Bengio et al. 2003)

  module: ClassVar[Any] = FeedForwardLm

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    config_lib.at_least(cfg, "model.ffnn_context", 1)

  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """6 N: every hidden and output weight multiplies each position once, whatever the window (seq_len) is; the
    embedding table is a lookup, unless tied, when it is also the output layer's matmul and counts once."""
    del seq_len
    return 6.0 * multiplying_params(params, () if self.tie_embeddings else (("embed", "embedding"),))

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    super().validate(cfg)
    for field in ("num_layers", "d_model", "mlp_dim"):
      config_lib.at_least(cfg, f"model.{field}", 1)
    config_lib.one_of(cfg, "model.activation", (*ACTIVATIONS, *GATED_ACTIVATIONS))
