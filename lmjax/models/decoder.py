"""The GPT decoder: token embedding + absolute positions, a stack of attention/MLP blocks, tied or untied logits.

Relative positions ('rope', 'alibi', 't5') live inside attention: the Decoder computes an ALiBi or T5 bias once and
hands it, or the per-document positions for rotary embeddings, to every block. The same modules decode token by
token over a key/value cache (lmjax.decode drives them).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.attention import KVCache, MultiHeadAttention, attention_mask
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
  def __call__(self, x_BLD: jax.Array, mask_B1LM: jax.Array | None, deterministic: bool,
               positions_BL: jax.Array | None = None, bias_BHLM: jax.Array | None = None,
               cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """With a `cache` (decoding), returns (x, updated cache); see MultiHeadAttention."""
    cfg = self.cfg
    # GPT-2 scales the init of projections that write into the residual stream by 1/sqrt(2 * layers).
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    attn_module = MultiHeadAttention(cfg, out_std, name="attn")
    new_cache = []

    def attn(h_BLD):
      if cache is None:
        return attn_module(h_BLD, mask_B1LM, deterministic, positions_BL=positions_BL, bias_BHLM=bias_BHLM)
      y_BLD, updated = attn_module(h_BLD, mask_B1LM, deterministic, positions_BL=positions_BL, bias_BHLM=bias_BHLM,
                                   cache=cache)
      new_cache.append(updated)
      return y_BLD

    mlp = Mlp(cfg, out_std, name="mlp")
    if cfg.pre_norm:
      x_BLD = x_BLD + attn(Norm(cfg, name="ln_attn")(x_BLD))
      x_BLD = x_BLD + mlp(Norm(cfg, name="ln_mlp")(x_BLD), deterministic)
    else:
      x_BLD = Norm(cfg, name="ln_attn")(x_BLD + attn(x_BLD))
      x_BLD = Norm(cfg, name="ln_mlp")(x_BLD + mlp(x_BLD, deterministic))
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))
    # Recorded only when the caller makes 'intermediates' mutable (distillation matches hidden states); a no-op
    # otherwise, so default outputs and speed are unchanged.
    self.sow("intermediates", "hidden", x_BLD)
    return x_BLD if cache is None else (x_BLD, new_cache[0])


class Decoder(nn.Module):
  """Decoder-only language model (GPT). Returns float32 logits [B, L, V].

  Decoding passes `cache`, one KVCache per layer (from `init_cache`), and the absolute `positions_BL` of the new
  tokens, and gets back (logits, updated cache): the tokens attend to every cache slot up to their own position,
  with ALiBi/T5 biases computed against the slots' positions. Parameters are the same either way; decoding never
  rematerializes, since nothing is differentiated.
  """
  cfg: ModelConfig

  def init_cache(self, batch: int, length: int) -> tuple[KVCache, ...]:
    """Empty caches for `length` positions; plain arrays, so callers can jit, donate and reorder them freely."""
    cfg = self.cfg
    return tuple(KVCache.zeros(batch, length, cfg.kv_heads, cfg.head_dim, dtype_of(cfg.dtype))
                 for _ in range(cfg.num_layers))

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, deterministic: bool = True,
               cache: tuple[KVCache, ...] | None = None,
               logits_index_B: jax.Array | None = None) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
    """`logits_index_B` keeps one index of each row before the vocabulary projection (logits [B, 1, V]): a prefill
    needs only its last prompt token's logits, and the projection is the largest matmul of the model."""
    cfg = self.cfg
    B, L = tokens_BL.shape
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    # Keys are this call's tokens, or when decoding every cache slot, whose position is its index.
    kv_positions_BM = None
    if cache is not None:
      M = cache[0].k_BKMd.shape[2]
      kv_positions_BM = jnp.arange(M, dtype=jnp.int32)[None]
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
                     embedding_init=normal_init(cfg.init_std, "vocab", "embed"), name="embed")
    positions = AbsolutePositions(cfg, name="positions")
    x_BLD = embed(tokens_BL) + (positions(positions_BL) if cache is None else positions(positions_BL, M))
    x_BLD = nn.Dropout(cfg.dropout)(x_BLD, deterministic=deterministic)
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))

    # Over a cache, attention masks by position instead (see MultiHeadAttention).
    mask_B1LM = attention_mask(segment_ids_BL, causal=True, length=L) if cache is None else None
    bias_BHLM = None
    if cfg.position == "alibi":
      bias_BHLM = alibi_bias(positions_BL, cfg.num_heads, kv_positions_BM)
    elif cfg.position == "t5":
      # One table for the whole stack, as in T5, where only the first layer owns it and the rest reuse its output.
      bias_BHLM = RelativePositionBias(cfg, bidirectional=False, name="relative_bias")(positions_BL, kv_positions_BM)
    block = remat_block(Block, cfg.remat) if cache is None else Block
    new_cache = []
    for i in range(cfg.num_layers):
      layer = block(cfg, name=f"layer_{i}")
      if cache is None:
        x_BLD = layer(x_BLD, mask_B1LM, deterministic, positions_BL, bias_BHLM)
      else:
        x_BLD, layer_cache = layer(x_BLD, mask_B1LM, deterministic, positions_BL, bias_BHLM, cache[i])
        new_cache.append(layer_cache)
    if logits_index_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_index_B[:, None, None], axis=1)
    if cfg.pre_norm:
      x_BLD = Norm(cfg, name="ln_final")(x_BLD)

    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=dtype_of(cfg.dtype),
                                   param_dtype=dtype_of(cfg.param_dtype),
                                   kernel_init=normal_init(cfg.init_std, "embed", "vocab"), name="lm_head")(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab"))
    logits_BLV = logits_BLV.astype(jnp.float32)
    return logits_BLV if cache is None else (logits_BLV, tuple(new_cache))
