"""Scaled dot-product attention, softmax(Q K^T / sqrt(d)) V, with causal and document (segment) masks.

Two implementations of the same function, chosen by `model.attention_impl`:
  'xla'  the reference: two einsums and a float32 softmax, readable and differentiable everywhere;
  'jax'  jax.nn.dot_product_attention, which dispatches to cuDNN flash attention on GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.layers import dtype_of, normal_init, zeros_init

_MASKED = -1e30  # large but finite, so fully masked rows (padding) give a uniform softmax instead of NaN


def attention_mask(segment_ids_BL: jax.Array | None, kv_segment_ids_BM: jax.Array | None = None, *,
                   causal: bool, length: int | None = None) -> jax.Array:
  """Boolean mask [B, 1, L, M]: True where query l may attend to key m.

  Tokens attend only within their own document (equal segment id); segment id 0 marks padding, which attends
  and is attended to by nothing.
  """
  if segment_ids_BL is None:
    ones = jnp.ones((1, length), jnp.int32)
    segment_ids_BL = ones
  kv_segment_ids_BM = segment_ids_BL if kv_segment_ids_BM is None else kv_segment_ids_BM
  same_BLM = segment_ids_BL[:, :, None] == kv_segment_ids_BM[:, None, :]
  valid_BLM = same_BLM & (segment_ids_BL[:, :, None] > 0) & (kv_segment_ids_BM[:, None, :] > 0)
  if causal:
    L, M = segment_ids_BL.shape[1], kv_segment_ids_BM.shape[1]
    valid_BLM = valid_BLM & (jnp.arange(L)[:, None] >= jnp.arange(M)[None, :])[None]
  return valid_BLM[:, None]


def reference_attention(q_BLHd: jax.Array, k_BMHd: jax.Array, v_BMHd: jax.Array, mask_B1LM: jax.Array,
                        dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0) -> jax.Array:
  scale = q_BLHd.shape[-1] ** -0.5
  scores_BHLM = jnp.einsum("BLHd,BMHd->BHLM", q_BLHd * scale, k_BMHd).astype(jnp.float32)
  scores_BHLM = jnp.where(mask_B1LM, scores_BHLM, _MASKED)
  probs_BHLM = jax.nn.softmax(scores_BHLM, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BHLM.shape)
    probs_BHLM = jnp.where(keep, probs_BHLM / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("BHLM,BMHd->BLHd", probs_BHLM.astype(v_BMHd.dtype), v_BMHd)


def fused_attention(q_BLHd: jax.Array, k_BMHd: jax.Array, v_BMHd: jax.Array, mask_B1LM: jax.Array) -> jax.Array:
  # jax.nn.dot_product_attention cannot mask a row completely; padding rows are zeroed afterwards by the caller's
  # loss mask, and a fully masked row here only needs to stay finite, which the XLA path of this op guarantees.
  return jax.nn.dot_product_attention(q_BLHd, k_BMHd, v_BMHd, mask=mask_B1LM)


class MultiHeadAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection (a single matmul per layer)."""
  cfg: ModelConfig
  out_std: float

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask_B1LM: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    dtype, param_dtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    B, L, D = x_BLD.shape
    # Projections run on tokens flattened to N = B*L: see Mlp for why this matters for the backward pass.
    qkv_N3Hd = nn.DenseGeneral(
        (3, cfg.num_heads, cfg.head_dim), use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=normal_init(cfg.init_std, "embed", None, "heads", "kv"),
        bias_init=zeros_init(None, "heads", "kv"), name="qkv")(x_BLD.reshape(B * L, D))
    qkv_BL3Hd = qkv_N3Hd.reshape(B, L, 3, cfg.num_heads, cfg.head_dim)
    q_BLHd, k_BLHd, v_BLHd = (qkv_BL3Hd[:, :, i] for i in range(3))
    q_BLHd = nn.with_logical_constraint(q_BLHd, ("batch", "length", "heads", "kv"))

    use_dropout = not deterministic and cfg.attention_dropout > 0.0
    if cfg.attention_impl == "jax" and not use_dropout:
      out_BLHd = fused_attention(q_BLHd, k_BLHd, v_BLHd, mask_B1LM)
    else:
      rng = self.make_rng("dropout") if use_dropout else None
      out_BLHd = reference_attention(q_BLHd, k_BLHd, v_BLHd, mask_B1LM, rng, cfg.attention_dropout)

    y_ND = nn.DenseGeneral(
        cfg.d_model, axis=(-2, -1), use_bias=cfg.use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=normal_init(self.out_std, "heads", "kv", "embed"), bias_init=zeros_init("embed"),
        name="out")(out_BLHd.reshape(B * L, cfg.num_heads, cfg.head_dim))
    return nn.Dropout(cfg.dropout)(y_ND.reshape(B, L, D), deterministic=deterministic)
