"""Scaled dot-product attention, softmax(Q K^T / sqrt(d)) V, with causal and document (segment) masks.

`model.attention_impl` names one implementation of the same function (lmjax/models/kernels/, one file each,
registered in lmjax.registry.ATTENTION): 'xla' the reference, 'cudnn', 'splash', 'pallas_gpu', 'flash', 'ring',
'auto', and 'jax' for runs that recorded it. `MultiHeadAttention` calls them through `self_attention`, the one
dispatch point; what an implementation cannot do is a config error (lmjax/models/stack.py validates), never a
silent fallback. Rotary positions arrive as a `Rotation` of queries and keys (lmjax/models/positions/), position
biases as a [B, H, L, M] array added to the logits.

Grouped-query attention (`model.num_kv_heads` < `model.num_heads`) shares each key/value head among G = H / K
consecutive query heads: query head h = k * G + g reads key/value head k.

For decoding, a layer's keys and values live in a `KVCache` indexed by absolute position (slot m holds the key of
the token at position m), so a new token's bias or rotation needs no bookkeeping beyond its own position. Attention
over a cache, and cross-attention, use the reference's softmax in the cache's heads-first layout ('jax' keeps its
fused op over a cache, as before).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.config import ConfigError
from lmjax.models import kernels
from lmjax.models.kernels.base import MASKED as _MASKED
from lmjax.models.kernels.jax_sdpa import fused_attention
from lmjax.models.kernels.ring import sequence_shards
from lmjax.models.kernels.xla import reference_attention
from lmjax.models.layers import Projection
from lmjax.models.positions import Rotation, rotate
from lmjax.registry import ATTENTION

__all__ = ["CrossAttention", "KVCache", "MultiHeadAttention", "attention_mask", "cache_mask", "cached_attention",
           "fused_attention", "reference_attention", "self_attention"]


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


def choose_kernel(impl: str, needs: kernels.Needs, platform: str | None = None) -> kernels.Kernel:
  """The implementation model.attention_impl=`impl` runs for a call with `needs` on `platform` (default: JAX's
  backend); a ConfigError naming the field when it cannot."""
  platform = platform or jax.default_backend()
  chosen = ATTENTION.get(impl).resolve(needs, platform)
  why = chosen.unsupported(needs)
  if not why and chosen.platforms and platform not in chosen.platforms and not chosen.interpretable:
    why = f"it runs on {' or '.join(chosen.platforms)}, and this process runs on {platform}"
  if why:
    ran = f" (which runs {chosen.name!r})" if chosen.name != impl else ""
    raise ConfigError(f"config.model.attention_impl={impl!r} is invalid{ran}: {why}; choose 'xla', 'flash' or "
                      f"'auto'.")
  return chosen


def self_attention(impl: str, call: kernels.Call, *, causal: bool, dtype: str) -> Any:
  """The one dispatch point: `call` through the implementation `impl` resolves to."""
  needs = kernels.Needs(bias=call.bias_BHLM is not None,
                        dropout=call.dropout_rng is not None and call.dropout_rate > 0.0,
                        probs=call.return_probs, sequence_shards=sequence_shards(), dtype=dtype,
                        length=call.q_BLHd.shape[1])
  return choose_kernel(impl, needs).attend(call, causal)


class KVCache(NamedTuple):
  """One layer's keys and values for decoding: slot m of row b holds position m of that row's sequence.

  Only K key/value heads are stored (grouped-query attention shrinks the cache by H / K), with rotary embeddings
  already applied, since a key's rotation depends only on its own position. Heads come before slots, the layout in
  which both attention matmuls read the cache directly; [B, M, K, d] would be transposed (copied whole) each step.
  """
  k_BKMd: jax.Array
  v_BKMd: jax.Array

  @classmethod
  def zeros(cls, batch: int, length: int, kv_heads: int, head_dim: int, dtype: jnp.dtype) -> "KVCache":
    shape = (batch, kv_heads, length, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  def write(self, k_BLKd: jax.Array, v_BLKd: jax.Array, positions_BL: jax.Array) -> "KVCache":
    """The cache with the new keys and values at their positions (a scatter that XLA performs in place)."""
    b_B1 = jnp.arange(k_BLKd.shape[0])[:, None]
    # Indexing [b, :, position] addresses a [B, L, K, d] block, the shape of the new keys.
    put = lambda cache, new: cache.at[b_B1, :, positions_BL].set(new.astype(cache.dtype), unique_indices=True)
    return KVCache(put(self.k_BKMd, k_BLKd), put(self.v_BKMd, v_BLKd))


def cache_mask(positions_BL: jax.Array, length: int) -> jax.Array:
  """[B, 1, L, M]: a query at position p sees cache slots 0..p, which hold its row's tokens up to itself."""
  return (jnp.arange(length)[None, None, :] <= positions_BL[:, :, None])[:, None]


def cached_attention(q_BLHd: jax.Array, cache: KVCache, mask_B1LM: jax.Array,
                     bias_BHLM: jax.Array | None = None) -> jax.Array:
  """reference_attention over a KVCache: the same function, written for the cache's heads-first layout."""
  B, L, H, d = q_BLHd.shape
  K, M = cache.k_BKMd.shape[1:3]
  q_BLKGd = (q_BLHd * d ** -0.5).reshape(B, L, K, H // K, d)
  scores_BKGLM = jnp.einsum("BLKGd,BKMd->BKGLM", q_BLKGd, cache.k_BKMd).astype(jnp.float32)
  if bias_BHLM is not None:
    scores_BKGLM = scores_BKGLM + bias_BHLM.astype(jnp.float32).reshape(B, K, H // K, L, M)
  scores_BKGLM = jnp.where(mask_B1LM[:, :, None], scores_BKGLM, _MASKED)
  probs_BKGLM = jax.nn.softmax(scores_BKGLM, axis=-1).astype(cache.v_BKMd.dtype)
  return jnp.einsum("BKGLM,BKMd->BLKGd", probs_BKGLM, cache.v_BKMd).reshape(B, L, H, d)


def unscale(q_BLHd: jax.Array, cfg: Any) -> jax.Array:
  """Queries for model.scaled_attention=False (T5): every attention path divides q.k by sqrt(d), so the queries
  are multiplied by sqrt(d) first. The default returns them untouched."""
  if cfg.scaled_attention:
    return q_BLHd
  return q_BLHd * jnp.asarray(q_BLHd.shape[-1] ** 0.5, q_BLHd.dtype)


class MultiHeadAttention(nn.Module):
  """Multi-head self-attention.

  With one key/value head per query head, a single fused QKV projection (one matmul per layer); with fewer
  (grouped-query, multi-query), separate 'q' and 'kv' projections, since the two outputs differ in width.
  """
  cfg: Any  # a TransformerConfig (lmjax/models/stack.py), which imports this module
  out_std: float
  causal: bool = False  # a decoder's self-attention: queries see keys up to their own position

  @property
  def recording(self) -> bool:
    """Whether the caller asked for intermediates (model.apply(..., mutable=['intermediates']))."""
    return self.is_mutable_collection("intermediates")

  @nn.compact
  def __call__(self, x_BLD: jax.Array, mask_B1LM: jax.Array | None, deterministic: bool, *,
               positions_BL: jax.Array | None = None, bias_BHLM: jax.Array | None = None,
               rotation: Rotation | None = None, segment_ids_BL: jax.Array | None = None,
               cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """`rotation` turns queries and keys by their positions (RoPE). `segment_ids_BL` are the ids `mask_B1LM` was
    made from (None: one document per row), for implementations that mask tile by tile. With a `cache`, the new
    keys and values are written at `positions_BL` and the queries attend to the cache up to their own positions
    (`mask_B1LM` is unused; `bias_BHLM` spans the M slots); returns (output, updated cache)."""
    cfg = self.cfg
    B, L, D = x_BLD.shape
    H, K, d = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    dense = lambda feats, name: Projection(
        feats, ("embed",), (*(None,) * (len(feats) - 2), "heads", "kv"), cfg.init_std, cfg.use_bias or cfg.qkv_bias,
        cfg.dtype, cfg.param_dtype, name=name)
    # Projections run on tokens flattened to N = B*L: see Mlp for why this matters for the backward pass.
    x_ND = x_BLD.reshape(B * L, D)
    if K == H:
      qkv_BL3Hd = dense((3, H, d), "qkv")(x_ND).reshape(B, L, 3, H, d)
      q_BLHd, k_BLKd, v_BLKd = (qkv_BL3Hd[:, :, i] for i in range(3))
    else:
      q_BLHd = dense((H, d), "q")(x_ND).reshape(B, L, H, d)
      kv_BL2Kd = dense((2, K, d), "kv")(x_ND).reshape(B, L, 2, K, d)
      k_BLKd, v_BLKd = kv_BL2Kd[:, :, 0], kv_BL2Kd[:, :, 1]
    q_BLHd, k_BLKd = rotate(q_BLHd, rotation), rotate(k_BLKd, rotation)
    q_BLHd = unscale(q_BLHd, cfg)
    q_BLHd = nn.with_logical_constraint(q_BLHd, ("batch", "length", "heads", "kv"))

    use_dropout = not deterministic and cfg.attention_dropout > 0.0
    if cache is not None:
      cache = cache.write(k_BLKd, v_BLKd, positions_BL)
      mask_B1LM = cache_mask(positions_BL, cache.k_BKMd.shape[2])
      if cfg.attention_impl == "jax" and bias_BHLM is None:
        # The fused op reads [B, M, K, d]: a transposed copy of the cache per call, the price of cuDNN on GPU.
        to_BMKd = lambda x_BKMd: jnp.swapaxes(x_BKMd, 1, 2)
        out_BLHd = fused_attention(q_BLHd, to_BMKd(cache.k_BKMd), to_BMKd(cache.v_BKMd), mask_B1LM)
      else:
        out_BLHd = cached_attention(q_BLHd, cache, mask_B1LM, bias_BHLM)
    else:
      rng = self.make_rng("dropout") if use_dropout else None
      call = kernels.Call(q_BLHd, k_BLKd, v_BLKd, segment_ids_BL, mask_B1LM, bias_BHLM, rng,
                          cfg.attention_dropout if use_dropout else 0.0, return_probs=self.recording)
      out_BLHd = self_attention(cfg.attention_impl, call, causal=self.causal, dtype=cfg.dtype)
      if self.recording:  # the attention maps, for distillation
        out_BLHd, probs_BHLM = out_BLHd
        self.sow("intermediates", "probs", probs_BHLM)

    y_ND = Projection((cfg.d_model,), ("heads", "kv"), ("embed",), self.out_std, cfg.use_bias, cfg.dtype,
                      cfg.param_dtype, name="out")(out_BLHd.reshape(B * L, H, d))
    y_BLD = nn.Dropout(cfg.dropout)(y_ND.reshape(B, L, D), deterministic=deterministic)
    return y_BLD if cache is None else (y_BLD, cache)


class CrossAttention(nn.Module):
  """Target queries over encoder keys/values (the encoder-decoder's second sublayer). Keys and values come as a
  KVCache whose slots are source tokens ([B, K, S, d] each, from `keys_values`), so that decoding projects them
  once per sentence instead of once per token. No position term: source and target positions are not comparable."""
  cfg: Any  # a TransformerConfig (lmjax/models/stack.py), which imports this module
  out_std: float

  def setup(self):
    cfg = self.cfg
    self.q = Projection((cfg.num_heads, cfg.head_dim), ("embed",), ("heads", "kv"), cfg.init_std,
                        cfg.use_bias or cfg.qkv_bias, cfg.dtype, cfg.param_dtype)
    self.kv = Projection((2, cfg.kv_heads, cfg.head_dim), ("embed",), (None, "heads", "kv"), cfg.init_std,
                         cfg.use_bias or cfg.qkv_bias, cfg.dtype, cfg.param_dtype)
    self.out = Projection((cfg.d_model,), ("heads", "kv"), ("embed",), self.out_std, cfg.use_bias, cfg.dtype,
                          cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout)

  def keys_values(self, enc_BSD: jax.Array) -> KVCache:
    kv_BS2Kd = self.kv(enc_BSD)
    to_BKSd = lambda x_BSKd: jnp.swapaxes(x_BSKd, 1, 2)
    return KVCache(to_BKSd(kv_BS2Kd[:, :, 0]), to_BKSd(kv_BS2Kd[:, :, 1]))

  def __call__(self, x_BLD: jax.Array, kv: KVCache, mask_B1LS: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    q_BLHd = unscale(self.q(x_BLD), cfg)
    q_BLHd = nn.with_logical_constraint(q_BLHd, ("batch", "length", "heads", "kv"))
    if not deterministic and cfg.attention_dropout > 0.0:
      to_BSKd = lambda x_BKSd: jnp.swapaxes(x_BKSd, 1, 2)
      out_BLHd = reference_attention(q_BLHd, to_BSKd(kv.k_BKMd), to_BSKd(kv.v_BKMd), mask_B1LS,
                                     self.make_rng("dropout"), cfg.attention_dropout)
    else:
      out_BLHd = cached_attention(q_BLHd, kv, mask_B1LS)  # the same softmax, read in the heads-first layout
    y_BLD = self.out(out_BLHd)
    return self.dropout(y_BLD, deterministic=deterministic)
