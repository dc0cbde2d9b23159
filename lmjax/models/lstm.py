"""LSTM language model: embeddings, stacked LSTM layers of width D, dropout between them, tied or untied logits.

The recurrence is a `jax.lax.scan` over the length axis. The input projections of all positions are one matmul
before the scan, so each step only multiplies the [B, D] hidden state. Where the segment id changes inside a packed
window the carry is zeroed before the step, so a document never sees the state its predecessor left behind.

model.init_std is the embedding's scale. Nothing normalizes the LSTM's input, so the GPT's 0.02 leaves the first
hundreds of steps near the unigram loss; unit-scale embeddings (init_std=1, PyTorch's default) learn at once.
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
from lmjax.models.layers import dtype_of, normal_init
from lmjax.registry import MODELS


def forget_bias_init(*axes: str | None):
  """Gate biases [4, D] in the order (input, forget, cell, output); the forget gate starts open (bias 1) so the
  state, and the gradient through it, survive the first steps of training (Jozefowicz et al., 2015)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[1].set(1.0)
  return nn.with_logical_partitioning(init, axes)


class LstmLayer(nn.Module):
  """One LSTM layer over [B, L, D]; `reset_LB` marks the steps whose carry starts from zero."""
  cfg: "LstmConfig"

  @nn.compact
  def __call__(self, x_BLD: jax.Array, reset_LB: jax.Array) -> jax.Array:
    cfg = self.cfg
    B, L, D = x_BLD.shape
    dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    std = 1.0 / math.sqrt(D)  # PyTorch's scale for LSTM weights: tanh/sigmoid stay out of saturation at init
    w_in_DGD = self.param("input_kernel", normal_init(std, "embed", None, "mlp"), (D, 4, D), param_dtype)
    w_rec_DGD = self.param("recurrent_kernel", normal_init(std, "embed", None, "mlp"), (D, 4, D), param_dtype)
    bias_GD = self.param("bias", forget_bias_init(None, "mlp"), (4, D), param_dtype)

    # Flattened [N, D] @ [D, 4D]: one contracted axis per matmul (see layers.Mlp on XLA:CPU).
    gates_in_NG = x_BLD.reshape(B * L, D).astype(dtype) @ w_in_DGD.reshape(D, 4 * D).astype(dtype)
    gates_in_LBG = (gates_in_NG.reshape(B, L, 4 * D) + bias_GD.reshape(4 * D).astype(dtype)).swapaxes(0, 1)
    w_rec = w_rec_DGD.reshape(D, 4 * D).astype(dtype)

    def step(carry, inputs):
      c_BD, h_BD = carry
      gates_in_BG, reset_B = inputs
      keep_B1 = (~reset_B)[:, None]
      c_BD, h_BD = jnp.where(keep_B1, c_BD, 0.0), jnp.where(keep_B1, h_BD, 0.0)
      gates_BG = (gates_in_BG + h_BD.astype(dtype) @ w_rec).astype(jnp.float32)  # cell math in float32
      i_BD, f_BD, g_BD, o_BD = jnp.split(gates_BG, 4, axis=-1)
      c_BD = jax.nn.sigmoid(f_BD) * c_BD + jax.nn.sigmoid(i_BD) * jnp.tanh(g_BD)
      h_BD = jax.nn.sigmoid(o_BD) * jnp.tanh(c_BD)
      return (c_BD, h_BD), h_BD

    zeros_BD = jnp.zeros((B, D), jnp.float32)
    _, h_LBD = jax.lax.scan(step, (zeros_BD, zeros_BD), (gates_in_LBG, reset_LB))
    return h_LBD.swapaxes(0, 1).astype(dtype)


class LstmLm(nn.Module):
  """Returns float32 logits [B, L, V]; same call signature as the GPT Decoder."""
  cfg: "LstmConfig"

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    del positions_BL  # order is the recurrence itself; documents are told apart by segment ids
    cfg = self.cfg
    B, L = tokens_BL.shape
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((B, L), jnp.int32)
    # The carry starts at zero anyway; a reset is needed wherever a new document begins inside the window.
    reset_BL = jnp.pad(segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1], ((0, 0), (1, 0)))
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                     embedding_init=normal_init(cfg.init_std, "vocab", "embed"), name="embed")
    x_BLD = embed(tokens_BL)
    for i in range(cfg.num_layers):
      # Dropout on the non-recurrent connections only, as in Zaremba et al. (2014).
      x_BLD = nn.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)
      x_BLD = LstmLayer(cfg, name=f"lstm_{i}")(x_BLD, reset_BL.T)
      x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))
    x_BLD = nn.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)

    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=dtype_of(cfg.dtype),
                                   param_dtype=dtype_of(cfg.param_dtype),
                                   kernel_init=normal_init(1.0 / math.sqrt(cfg.d_model), "embed", "vocab"),
                                   name="lm_head")(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab"))
    return logits_BLV.astype(jnp.float32)


@MODELS.register("lstm")
@dataclasses.dataclass(frozen=True)
class LstmConfig(ModelConfig):
  num_layers: int = 4
  d_model: int = 128
  tie_embeddings: bool = True

  module: ClassVar[Any] = LstmLm

  @classmethod
  def validate(cls, cfg: ml_collections.ConfigDict) -> None:
    super().validate(cfg)
    for field in ("num_layers", "d_model"):
      config_lib.at_least(cfg, f"model.{field}", 1)

  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """6 N: each step multiplies its input and its recurrent state by the layer's two kernels, and the output layer
    once, so every weight is used once per token and the window length (seq_len) adds nothing; the embedding table
    is a lookup, unless tied, when it is also the output layer's matmul and counts once."""
    del seq_len
    return 6.0 * multiplying_params(params, () if self.tie_embeddings else (("embed", "embedding"),))
