"""The GPT decoder: token embedding + absolute positions, a stack of attention/MLP blocks, tied or untied logits.

Relative positions ('rope', 'alibi', 't5') live inside attention: the Decoder computes an ALiBi or T5 bias once and
hands it, or the per-document positions for rotary embeddings, to every block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.attention import MultiHeadAttention, attention_mask
from lmjax.models.layers import Mlp, Norm, dtype_of, normal_init
from lmjax.models.positional import AbsolutePositions, RelativePositionBias, alibi_bias


REMAT_POLICIES = {
    "full": None,  # keep only each layer's input; recompute everything inside it in the backward pass
    "save_dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute elementwise ops
}


def remat_block(block: type[nn.Module], policy: str) -> type[nn.Module]:
  """The layer class with activation rematerialization: memory for compute, per config.model.remat."""
  if policy == "none":
    return block
  # Argument 3 (counting self) is `deterministic`, a Python bool that picks code paths, so it must stay static.
  return nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=(3,), prevent_cse=True)


class Block(nn.Module):
  """One Transformer layer. Pre-norm: x + f(norm(x)). Post-norm (Vaswani, BERT): norm(x + f(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask_B1LM: jax.Array, deterministic: bool,
               positions_BL: jax.Array | None = None, bias_BHLM: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    # GPT-2 scales the init of projections that write into the residual stream by 1/sqrt(2 * layers).
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    attn_module = MultiHeadAttention(cfg, out_std, name="attn")
    attn = lambda h_BLD: attn_module(h_BLD, mask_B1LM, deterministic, positions_BL=positions_BL, bias_BHLM=bias_BHLM)
    mlp = Mlp(cfg, out_std, name="mlp")
    if cfg.pre_norm:
      x_BLD = x_BLD + attn(Norm(cfg, name="ln_attn")(x_BLD))
      x_BLD = x_BLD + mlp(Norm(cfg, name="ln_mlp")(x_BLD), deterministic)
    else:
      x_BLD = Norm(cfg, name="ln_attn")(x_BLD + attn(x_BLD))
      x_BLD = Norm(cfg, name="ln_mlp")(x_BLD + mlp(x_BLD, deterministic))
    return nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))


class Decoder(nn.Module):
  """Decoder-only language model (GPT). Returns float32 logits [B, L, V]."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    B, L = tokens_BL.shape
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                     embedding_init=normal_init(cfg.init_std, "vocab", "embed"), name="embed")
    x_BLD = embed(tokens_BL) + AbsolutePositions(cfg, name="positions")(positions_BL)
    x_BLD = nn.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))

    mask_B1LM = attention_mask(segment_ids_BL, causal=True, length=L)
    bias_BHLM = None
    if cfg.position == "alibi":
      bias_BHLM = alibi_bias(positions_BL, cfg.num_heads)
    elif cfg.position == "t5":
      # One table for the whole stack, as in T5, where only the first layer owns it and the rest reuse its output.
      bias_BHLM = RelativePositionBias(cfg, bidirectional=False, name="relative_bias")(positions_BL)
    block = remat_block(Block, cfg.remat)
    for i in range(cfg.num_layers):
      x_BLD = block(cfg, name=f"layer_{i}")(x_BLD, mask_B1LM, deterministic, positions_BL, bias_BHLM)
    if cfg.pre_norm:
      x_BLD = Norm(cfg, name="ln_final")(x_BLD)

    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=dtype_of(cfg.dtype),
                                   param_dtype=dtype_of(cfg.param_dtype),
                                   kernel_init=normal_init(cfg.init_std, "embed", "vocab"), name="lm_head")(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab"))
    return logits_BLV.astype(jnp.float32)
