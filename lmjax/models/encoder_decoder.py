"""The encoder-decoder Transformer (Vaswani et al., 2017) for translation and summarization: model.name='encdec'.

Two Transformer stacks (lmjax/models/stack.py): a bidirectional encoder, and a causal decoder whose layers add
cross-attention over the encoder output between their self-attention and their MLP. Source and target tokens share
one embedding table (`model.share_embeddings`, for a joint vocabulary) or have one each; the output layer is the
target embedding transposed (`model.tie_embeddings`) or a separate projection.

Positions follow model.position on both sides, each counted from 0 in its own sequence; cross-attention has no
position term, since source and target positions are not comparable.

Padding: `source_segment_ids_BS` / `target_segment_ids_BL` are 1 on real tokens and 0 on padding (equal nonzero
ids also pack several pairs per row: a target token sees only the source with its own id).

For decoding, `start_cache` runs the encoder once and projects every decoder layer's cross-attention keys and
values; `extend` then runs only the decoder, over a self-attention cache.

Shapes add S, the source length, to the glossary of lmjax/models/__init__.py (L is the target length here).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from lmjax import config as config_lib
from lmjax.models import logit_mask
from lmjax.models.attention import KVCache, attention_mask
from lmjax.models.base import multiplying_params
from lmjax.models.layers import Projection, classifier_head, dtype_of, normal_init
from lmjax.models.stack import StackNames, TransformerConfig, TransformerStack, empty_cache
from lmjax.models.vocab_head import Hidden, VocabHead
from lmjax.registry import MODELS

# The parameter names of both sides (unchanged since the first encoder-decoder checkpoints).
ENCODER_NAMES = StackNames(layer="encoder_{}", positions_prefix="source_", final_norm="encoder_norm",
                           embed_norm="source_embed_norm", dropout="source_dropout")
DECODER_NAMES = StackNames(layer="decoder_{}", positions_prefix="target_", final_norm="decoder_norm",
                           embed_norm="target_embed_norm", dropout="target_dropout", attn="self_attn",
                           attn_norm="ln_self")


class EncoderDecoder(nn.Module):
  """(source [B, S], target inputs [B, L]) -> float32 logits [B, L, V] over the target vocabulary."""
  cfg: "EncoderDecoderConfig"

  def setup(self):
    cfg = self.cfg
    embed = lambda: nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype),
                             param_dtype=dtype_of(cfg.param_dtype),
                             embedding_init=normal_init(cfg.init_std, "vocab", "embed"))
    self.target_embed = embed()
    self.source_embed = self.target_embed if cfg.share_embeddings else embed()
    self.encoder = TransformerStack(cfg, causal=False, num_layers=cfg.num_layers, names=ENCODER_NAMES)
    self.decoder = TransformerStack(cfg, causal=True, num_layers=cfg.decoder_layers, cross_attention=True,
                                    names=DECODER_NAMES)
    nn.share_scope(self, self.encoder)
    nn.share_scope(self, self.decoder)
    if not cfg.tie_embeddings:
      self.lm_head = Projection((cfg.vocab_size,), ("embed",), ("vocab",), cfg.init_std, False, cfg.dtype,
                                cfg.param_dtype)

  def encode(self, source_BS: jax.Array, source_segment_ids_BS: jax.Array | None = None,
             deterministic: bool = True, source_positions_BS: jax.Array | None = None) -> jax.Array:
    """[B, S, D] encoder output (padding rows hold values no real query reads). Positions default to 0..S-1;
    packed rows pass each source's own positions, restarting at 0."""
    return self.encoder(self.source_embed(source_BS), positions_BL=source_positions_BS,
                        segment_ids_BL=source_segment_ids_BS, deterministic=deterministic)

  def cross_kv(self, enc_BSD: jax.Array) -> tuple[KVCache, ...]:
    """Every decoder layer's cross-attention keys and values of the encoder output."""
    return self.decoder.cross_kv(enc_BSD)

  def decode(self, targets_BL: jax.Array, cross_kv: tuple[KVCache, ...], cross_segment_ids_BS: jax.Array, *,
             target_segment_ids_BL: jax.Array | None = None, positions_BL: jax.Array | None = None,
             deterministic: bool = True, cache: tuple[KVCache, ...] | None = None,
             logits_index_B: jax.Array | None = None,
             return_hidden: bool = False) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
    """Logits [B, L, V] of the tokens after each target input; over a `cache`, also the updated cache. With
    `return_hidden`, a `Hidden` instead of the logits (lmjax/models/vocab_head.py)."""
    B, L = targets_BL.shape
    if cache is None and target_segment_ids_BL is not None:
      query_segments_BL = target_segment_ids_BL
    else:  # decoding: one pair per row
      query_segments_BL = jnp.ones((B, L), jnp.int32)
    cross_mask_B1LS = attention_mask(query_segments_BL, cross_segment_ids_BS, causal=False)
    out = self.decoder(self.target_embed(targets_BL), positions_BL=positions_BL, segment_ids_BL=target_segment_ids_BL,
                       deterministic=deterministic, cross=cross_kv, cross_mask_B1LS=cross_mask_B1LS, cache=cache)
    x_BLD, new_cache = (out, None) if cache is None else out
    if self.cfg.scale_decoder_output:  # T5 v1.0: the output rescaled for its tied embedding
      x_BLD = x_BLD * jnp.asarray(self.cfg.d_model ** -0.5, x_BLD.dtype)
    if return_hidden:
      bias_V = logit_mask.bias(self.cfg.vocab_size, self.cfg.logit_mask)
      weight_VD = (self.target_embed.embedding if self.cfg.tie_embeddings
                   else self.lm_head.variables["params"]["kernel"].T)
      return Hidden(x_BLD, VocabHead(weight_VD, bias_V))
    if logits_index_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_index_B[:, None, None], axis=1)
    logits_BLV = self.target_embed.attend(x_BLD) if self.cfg.tie_embeddings else self.lm_head(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab")).astype(jnp.float32)
    logits_BLV = logit_mask.apply(logits_BLV, self.cfg.logit_mask)
    return logits_BLV if cache is None else (logits_BLV, new_cache)

  def __call__(self, source_BS: jax.Array, targets_BL: jax.Array | None = None,
               source_segment_ids_BS: jax.Array | None = None,
               target_segment_ids_BL: jax.Array | None = None, deterministic: bool = True,
               source_positions_BS: jax.Array | None = None,
               target_positions_BL: jax.Array | None = None, return_hidden: bool = False) -> jax.Array:
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
                       deterministic=deterministic, return_hidden=return_hidden)

  def init_cache(self, batch: int, length: int) -> tuple[KVCache, ...]:
    """Empty self-attention caches of the decoder layers for `length` target positions."""
    return empty_cache(self.cfg, self.cfg.decoder_layers, batch, length)

  # --- the cache interface of lmjax.decode ------------------------------------------------------------------------

  def start_cache(self, batch: int, length: int, encoder_inputs: Any = None) -> dict[str, Any]:
    """`encoder_inputs` is {"tokens": [B, S] source ids, right-padded, "lengths": [B] real source tokens}. The
    encoder runs once and every decoder layer's cross-attention keys and values are kept, so a step costs only the
    decoder. The cache is {"self": one KVCache per layer, "cross": one KVCache per layer over the S source slots,
    "source_segment_ids": [B, S]}, every leaf batch-first, so beam search reorders it like any other cache."""
    if encoder_inputs is None:
      raise ValueError("an encoder-decoder model needs encoder_inputs={'tokens': [B, S], 'lengths': [B]}")
    source_BS = jnp.asarray(encoder_inputs["tokens"], jnp.int32)
    if source_BS.shape[0] != batch:
      raise ValueError(f"encoder_inputs has {source_BS.shape[0]} rows for a batch of {batch}")
    segment_ids_BS = (jnp.arange(source_BS.shape[1]) < jnp.asarray(encoder_inputs["lengths"])[:, None])
    segment_ids_BS = segment_ids_BS.astype(jnp.int32)
    cross = self.cross_kv(self.encode(source_BS, segment_ids_BS))
    return {"self": self.init_cache(batch, length), "cross": cross, "source_segment_ids": segment_ids_BS}

  def extend(self, tokens_BL: jax.Array, positions_BL: jax.Array, cache: dict[str, Any],
             logits_index_B: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
    logits_BLV, self_cache = self.decode(tokens_BL, cache["cross"], cache["source_segment_ids"],
                                         positions_BL=positions_BL, cache=cache["self"],
                                         logits_index_B=logits_index_B)
    return logits_BLV, {**cache, "self": self_cache}


class SourceEncoder(nn.Module):
  """The encoder half alone, under the encoder-decoder's own parameter names: [B, S] tokens -> [B, S, D]."""
  cfg: "EncoderDecoderConfig"

  def setup(self):
    cfg = self.cfg
    self.target_embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype),
                                 param_dtype=dtype_of(cfg.param_dtype),
                                 embedding_init=normal_init(cfg.init_std, "vocab", "embed"))
    self.encoder = TransformerStack(cfg, causal=False, num_layers=cfg.num_layers, names=ENCODER_NAMES)
    nn.share_scope(self, self.encoder)

  def __call__(self, source_BS: jax.Array, segment_ids_BS: jax.Array, deterministic: bool = True) -> jax.Array:
    return self.encoder(self.target_embed(source_BS), segment_ids_BL=segment_ids_BS, deterministic=deterministic)


ENCODER_SUBTREES = ("target_embed", "encoder_norm", "source_relative_bias", "source_positions", "source_embed_norm")


class SourceClassifier(nn.Module):
  """An encoder-decoder's encoder output, mean-pooled over the real tokens -> dropout -> linear (T5's encoder)."""
  cfg: Any  # an EncoderDecoderConfig
  num_outputs: int

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array, segment_ids_BL: jax.Array,
               deterministic: bool = True) -> jax.Array:
    del token_types_BL
    x_BLD = SourceEncoder(self.cfg, name="encoder")(tokens_BL, segment_ids_BL, deterministic)
    real_BL1 = (segment_ids_BL > 0)[..., None].astype(jnp.float32)
    pooled_BD = (x_BLD.astype(jnp.float32) * real_BL1).sum(1) / jnp.maximum(real_BL1.sum(1), 1.0)
    pooled_BD = nn.Dropout(self.cfg.dropout)(pooled_BD, deterministic=deterministic)
    return classifier_head(self.cfg, self.num_outputs, "classifier")(pooled_BD).astype(jnp.float32)


@MODELS.register("encdec")
@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig(TransformerConfig):
  share_embeddings: bool = True  # one embedding table for source and target tokens
  num_decoder_layers: int = 0  # decoder layers; 0 -> model.num_layers
  scale_decoder_output: bool = False  # the decoder output times d_model^-0.5 before the vocabulary (T5 v1.0)

  module: ClassVar[Any] = EncoderDecoder
  interface: ClassVar[str] = "seq2seq"
  classifies: ClassVar[bool] = True
  decodes: ClassVar[bool] = True
  returns_hidden: ClassVar[bool] = True

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    config_lib.at_least(cfg, "model.num_decoder_layers", 0)

  def sequence_classifier(self, num_outputs: int) -> Any:
    return SourceClassifier(self, num_outputs)

  @classmethod
  def pretrained_subtrees(cls, params: dict[str, Any]) -> dict[str, Any]:
    """The encoder (and the shared embedding: a model with its own source embedding keeps it)."""
    encoder = {k: v for k, v in params.items() if k.startswith("encoder_") or k in ENCODER_SUBTREES}
    if "source_embed" in params:
      encoder["target_embed"] = params["source_embed"]
    return {"encoder": encoder}
  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """Not defined for two sequences of different lengths: see flops_per_pair."""
    del params, seq_len
    return None

  def flops_per_pair(self, params: Any, source_len: int, target_len: int) -> float | None:
    """The decoder-only count (6 N + 12 L D T, see TransformerConfig.flops_per_token) for each side: the encoder
    layers multiply the S source tokens, so do the cross-attention key/value projections (they read the encoder
    output), and the rest of the decoder and the output layer multiply the T target tokens. Attention adds
    12 D S^2 per encoder layer, 12 D T^2 per decoder layer and 12 D T S per cross-attention. Embedding and position
    tables are lookups; a tied target table is the output layer."""
    S, T, D = source_len, target_len, self.d_model
    layers = lambda names: [params[names.layer.format(i)] for i in range(len(params))
                            if names.layer.format(i) in params]
    encoder = sum(multiplying_params(layer) for layer in layers(ENCODER_NAMES))
    encoder += multiplying_params(params.get(ENCODER_NAMES.final_norm, {}))
    decoder_layers = layers(DECODER_NAMES)
    cross_kv = sum(multiplying_params(layer.get("cross_attn", {}).get("kv", {})) for layer in decoder_layers)
    decoder = sum(multiplying_params(layer) for layer in decoder_layers) - cross_kv
    decoder += multiplying_params(params.get(DECODER_NAMES.final_norm, {}))
    head = multiplying_params(params["target_embed"] if self.tie_embeddings else params["lm_head"])
    matmuls = 6.0 * ((encoder + cross_kv) * S + (decoder + head) * T)
    attention = 12.0 * D * (self.num_layers * S * S + self.decoder_layers * (T * T + T * S))
    return matmuls + attention
