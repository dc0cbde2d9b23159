"""The encoder-decoder Transformer (Vaswani et al., 2017) for translation and summarization: model.name='encdec'.

The encoder is a stack of the GPT decoder's Blocks with a bidirectional padding mask; each decoder layer adds
cross-attention over the encoder output between its causal self-attention and its MLP. Source and target tokens
share one embedding table (`model.share_embeddings`, for a joint vocabulary) or have one each; the output layer
is the target embedding transposed (`model.tie_embeddings`) or a separate projection.

Positions follow model.position on both sides, each counted from 0 in its own sequence: absolute encodings are
added to the embeddings, RoPE rotates self-attention queries and keys, ALiBi and T5 biases act in self-attention
(bidirectional buckets in the encoder, causal ones in the decoder). Cross-attention has no position term: source
and target positions are not comparable.

Padding: `source_segment_ids_BS` / `target_segment_ids_BL` are 1 on real tokens and 0 on padding (equal
nonzero ids could also pack several pairs per row: a target token sees only the source with its own id).

For decoding (lmjax.decode.EncoderDecoderStep) the model runs in three methods: `encode` once per batch,
`cross_kv` to project every layer's cross-attention keys and values once, and `decode` per token over a self-
attention KVCache.

Shapes add S, the source length, to the glossary of lmjax/models/__init__.py (L is the target length here).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.config import ModelConfig
from lmjax.models.attention import KVCache, MultiHeadAttention, attention_mask, cached_attention, reference_attention
from lmjax.models.layers import Mlp, Norm, Projection, dtype_of, normal_init
from lmjax.models.positional import AbsolutePositions, RelativePositionBias, alibi_bias
from lmjax.models.transformer import REMAT_POLICIES, Block, remat_block


class CrossAttention(nn.Module):
  """Target queries over encoder keys/values. Keys and values come from `kv` ([B, K, S, d] each, a KVCache
  whose slots are source tokens) so that decoding projects them once per sentence instead of once per token."""
  cfg: ModelConfig
  out_std: float

  def setup(self):
    cfg = self.cfg
    self.q = Projection((cfg.num_heads, cfg.head_dim), ("embed",), ("heads", "kv"), cfg.init_std, cfg.use_bias,
                        cfg.dtype, cfg.param_dtype)
    self.kv = Projection((2, cfg.kv_heads, cfg.head_dim), ("embed",), (None, "heads", "kv"), cfg.init_std,
                         cfg.use_bias, cfg.dtype, cfg.param_dtype)
    self.out = Projection((cfg.d_model,), ("heads", "kv"), ("embed",), self.out_std, cfg.use_bias, cfg.dtype,
                          cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout)

  def keys_values(self, enc_BSD: jax.Array) -> KVCache:
    kv_BS2Kd = self.kv(enc_BSD)
    to_BKSd = lambda x_BSKd: jnp.swapaxes(x_BSKd, 1, 2)
    return KVCache(to_BKSd(kv_BS2Kd[:, :, 0]), to_BKSd(kv_BS2Kd[:, :, 1]))

  def __call__(self, x_BLD: jax.Array, kv: KVCache, mask_B1LS: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.cfg
    B, L, D = x_BLD.shape
    q_BLHd = self.q(x_BLD)
    q_BLHd = nn.with_logical_constraint(q_BLHd, ("batch", "length", "heads", "kv"))
    if not deterministic and cfg.attention_dropout > 0.0:
      to_BSKd = lambda x_BKSd: jnp.swapaxes(x_BKSd, 1, 2)
      out_BLHd = reference_attention(q_BLHd, to_BSKd(kv.k_BKMd), to_BSKd(kv.v_BKMd), mask_B1LS,
                                     self.make_rng("dropout"), cfg.attention_dropout)
    else:
      out_BLHd = cached_attention(q_BLHd, kv, mask_B1LS)  # the same softmax, read in the heads-first layout
    y_BLD = self.out(out_BLHd)
    return self.dropout(y_BLD, deterministic=deterministic)


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention, MLP; each a residual branch, pre-norm or post-norm like Block."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    # Three residual branches per layer write into the stream: GPT-2's 1/sqrt(2 * layers) init scaled to three.
    out_std = cfg.init_std / math.sqrt(3 * (cfg.num_decoder_layers or cfg.num_layers))
    self.self_attn = MultiHeadAttention(cfg, out_std)
    self.cross_attn = CrossAttention(cfg, out_std)
    self.mlp = Mlp(cfg, out_std)
    self.ln_self, self.ln_cross, self.ln_mlp = Norm(cfg), Norm(cfg), Norm(cfg)

  def cross_kv(self, enc_BSD: jax.Array) -> KVCache:
    return self.cross_attn.keys_values(enc_BSD)

  def __call__(self, x_BLD: jax.Array, cross_kv: KVCache, self_mask_B1LM: jax.Array | None,
               cross_mask_B1LS: jax.Array, deterministic: bool, positions_BL: jax.Array | None = None,
               bias_BHLM: jax.Array | None = None,
               cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """With a `cache` (decoding), returns (x, updated self-attention cache)."""
    new_cache = []

    def attend(h_BLD):
      if cache is None:
        return self.self_attn(h_BLD, self_mask_B1LM, deterministic, positions_BL=positions_BL, bias_BHLM=bias_BHLM)
      y_BLD, updated = self.self_attn(h_BLD, None, deterministic, positions_BL=positions_BL, bias_BHLM=bias_BHLM,
                                      cache=cache)
      new_cache.append(updated)
      return y_BLD

    branches = ((self.ln_self, attend),
                (self.ln_cross, lambda h: self.cross_attn(h, cross_kv, cross_mask_B1LS, deterministic)),
                (self.ln_mlp, lambda h: self.mlp(h, deterministic)))
    for norm, branch in branches:
      if self.cfg.pre_norm:
        x_BLD = x_BLD + branch(norm(x_BLD))
      else:
        x_BLD = norm(x_BLD + branch(x_BLD))
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))
    return x_BLD if cache is None else (x_BLD, new_cache[0])


def _positions(tokens_BL: jax.Array) -> jax.Array:
  B, L = tokens_BL.shape
  return jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))


class EncoderDecoder(nn.Module):
  """(source [B, S], target inputs [B, L]) -> float32 logits [B, L, V] over the target vocabulary."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    embed = lambda: nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype),
                             param_dtype=dtype_of(cfg.param_dtype),
                             embedding_init=normal_init(cfg.init_std, "vocab", "embed"))
    self.target_embed = embed()
    self.source_embed = self.target_embed if cfg.share_embeddings else embed()
    self.source_positions = AbsolutePositions(cfg)
    self.target_positions = AbsolutePositions(cfg)
    if cfg.position == "t5":
      self.source_relative_bias = RelativePositionBias(cfg, bidirectional=True)
      self.target_relative_bias = RelativePositionBias(cfg, bidirectional=False)
    self.encoder_layers = [remat_block(Block, cfg.remat)(cfg, name=f"encoder_{i}") for i in range(cfg.num_layers)]
    block = DecoderBlock
    if cfg.remat != "none":
      # Argument 5 (counting self) is `deterministic`, a Python bool that picks code paths, so it stays static.
      block = nn.remat(DecoderBlock, policy=REMAT_POLICIES[cfg.remat], static_argnums=(5,), prevent_cse=True)
    self.decoder_layers = [block(cfg, name=f"decoder_{i}") for i in range(cfg.num_decoder_layers or cfg.num_layers)]
    if cfg.pre_norm:
      self.encoder_norm, self.decoder_norm = Norm(cfg), Norm(cfg)  # blocks normalize inputs: outputs need it once
    else:
      self.source_embed_norm, self.target_embed_norm = Norm(cfg), Norm(cfg)  # blocks normalize their outputs
    if not cfg.tie_embeddings:
      self.lm_head = Projection((cfg.vocab_size,), ("embed",), ("vocab",), cfg.init_std, False, cfg.dtype,
                                cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout)

  def encode(self, source_BS: jax.Array, source_segment_ids_BS: jax.Array | None = None,
             deterministic: bool = True, source_positions_BS: jax.Array | None = None) -> jax.Array:
    """[B, S, D] encoder output (padding rows hold values no real query reads). Positions default to 0..S-1;
    packed rows pass each source's own positions, restarting at 0."""
    cfg = self.cfg
    positions_BS = _positions(source_BS) if source_positions_BS is None else source_positions_BS
    x_BSD = self.source_embed(source_BS) + self.source_positions(positions_BS)
    if not cfg.pre_norm:
      x_BSD = self.source_embed_norm(x_BSD)
    x_BSD = self.dropout(x_BSD, deterministic=deterministic)
    x_BSD = nn.with_logical_constraint(x_BSD, ("batch", "length", "embed"))
    mask_B1SS = attention_mask(source_segment_ids_BS, causal=False, length=source_BS.shape[1])
    bias_BHSS = None
    if cfg.position == "alibi":
      bias_BHSS = alibi_bias(positions_BS, cfg.num_heads)
    elif cfg.position == "t5":
      bias_BHSS = self.source_relative_bias(positions_BS)
    for layer in self.encoder_layers:
      x_BSD = layer(x_BSD, mask_B1SS, deterministic, positions_BS, bias_BHSS)
    return self.encoder_norm(x_BSD) if cfg.pre_norm else x_BSD

  def cross_kv(self, enc_BSD: jax.Array) -> tuple[KVCache, ...]:
    """Every decoder layer's cross-attention keys and values of the encoder output."""
    return tuple(layer.cross_kv(enc_BSD) for layer in self.decoder_layers)

  def decode(self, targets_BL: jax.Array, cross_kv: tuple[KVCache, ...], cross_segment_ids_BS: jax.Array, *,
             target_segment_ids_BL: jax.Array | None = None, positions_BL: jax.Array | None = None,
             deterministic: bool = True, cache: tuple[KVCache, ...] | None = None,
             logits_index_B: jax.Array | None = None) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
    """Logits [B, L, V] of the tokens after each target input; over a `cache`, also the updated cache."""
    cfg = self.cfg
    B, L = targets_BL.shape
    if positions_BL is None:
      positions_BL = _positions(targets_BL)
    kv_positions_BM, M = None, L
    if cache is not None:
      M = cache[0].k_BKMd.shape[2]
      kv_positions_BM = jnp.arange(M, dtype=jnp.int32)[None]
    x_BLD = self.target_embed(targets_BL) + self.target_positions(positions_BL, M if cache is not None else 0)
    if not cfg.pre_norm:
      x_BLD = self.target_embed_norm(x_BLD)
    x_BLD = self.dropout(x_BLD, deterministic=deterministic)
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))

    if cache is None:
      self_mask_B1LM = attention_mask(target_segment_ids_BL, causal=True, length=L)
      query_segments_BL = target_segment_ids_BL if target_segment_ids_BL is not None else jnp.ones((B, L), jnp.int32)
    else:
      self_mask_B1LM = None  # over a cache, attention masks by position
      query_segments_BL = jnp.ones((B, L), jnp.int32)
    cross_mask_B1LS = attention_mask(query_segments_BL, cross_segment_ids_BS, causal=False)
    bias_BHLM = None
    if cfg.position == "alibi":
      bias_BHLM = alibi_bias(positions_BL, cfg.num_heads, kv_positions_BM)
    elif cfg.position == "t5":
      bias_BHLM = self.target_relative_bias(positions_BL, kv_positions_BM)
    new_cache = []
    for i, layer in enumerate(self.decoder_layers):
      if cache is None:
        x_BLD = layer(x_BLD, cross_kv[i], self_mask_B1LM, cross_mask_B1LS, deterministic, positions_BL, bias_BHLM)
      else:
        x_BLD, layer_cache = layer(x_BLD, cross_kv[i], self_mask_B1LM, cross_mask_B1LS, deterministic,
                                   positions_BL, bias_BHLM, cache[i])
        new_cache.append(layer_cache)
    if logits_index_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_index_B[:, None, None], axis=1)
    if cfg.pre_norm:
      x_BLD = self.decoder_norm(x_BLD)
    logits_BLV = self.target_embed.attend(x_BLD) if cfg.tie_embeddings else self.lm_head(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab")).astype(jnp.float32)
    return logits_BLV if cache is None else (logits_BLV, tuple(new_cache))

  def __call__(self, source_BS: jax.Array, targets_BL: jax.Array | None = None,
               source_segment_ids_BS: jax.Array | None = None,
               target_segment_ids_BL: jax.Array | None = None, deterministic: bool = True,
               source_positions_BS: jax.Array | None = None,
               target_positions_BL: jax.Array | None = None) -> jax.Array:
    """Teacher forcing: logits [B, L, V] for every target input position. Several pairs packed into one row have
    segment ids 1, 2, ... on both sides and positions restarting at 0 for each. Without targets the source is fed
    to both sides, so the model initializes from one token array like the other architectures."""
    if targets_BL is None:
      targets_BL = source_BS
    if source_segment_ids_BS is None:
      source_segment_ids_BS = jnp.ones(source_BS.shape, jnp.int32)
    enc_BSD = self.encode(source_BS, source_segment_ids_BS, deterministic, source_positions_BS)
    return self.decode(targets_BL, self.cross_kv(enc_BSD), source_segment_ids_BS,
                       target_segment_ids_BL=target_segment_ids_BL, positions_BL=target_positions_BL,
                       deterministic=deterministic)

  def init_cache(self, batch: int, length: int) -> tuple[KVCache, ...]:
    """Empty self-attention caches of the decoder layers for `length` target positions."""
    cfg = self.cfg
    return tuple(KVCache.zeros(batch, length, cfg.kv_heads, cfg.head_dim, dtype_of(cfg.dtype))
                 for _ in range(cfg.num_decoder_layers or cfg.num_layers))
