"""The GPT decoder (model.name='gpt'): token embedding, a causal Transformer stack, tied or untied logits.

The same module decodes token by token over a key/value cache: lmjax.decode calls `start_cache` once and then
`extend` with the new tokens and their absolute positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.models import logit_mask
from lmjax.models.attention import KVCache
from lmjax.models.layers import classifier_head, dtype_of, normal_init
from lmjax.models.stack import TransformerConfig, TransformerStack, empty_cache
from lmjax.models.vocab_head import Hidden, VocabHead
from lmjax.registry import MODELS


class Decoder(nn.Module):
  """Decoder-only language model (GPT). Returns float32 logits [B, L, V].

  Decoding passes `cache` (from `start_cache`) and the absolute `positions_BL` of the new tokens, and gets back
  (logits, updated cache): the tokens attend to every cache slot up to their own position, with position biases
  computed against the slots' positions. Parameters are the same either way; decoding never rematerializes, since
  nothing is differentiated.
  """
  cfg: "GptConfig"

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype),
                          param_dtype=dtype_of(cfg.param_dtype),
                          embedding_init=normal_init(cfg.init_std, "vocab", "embed"))
    # Vaswani's decoder has no norm on the embedding sum, unlike BERT; post-norm GPTs keep it that way.
    self.stack = TransformerStack(cfg, causal=True, num_layers=cfg.num_layers, normalize_embeddings=False)
    nn.share_scope(self, self.stack)
    if not cfg.tie_embeddings:
      self.lm_head = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=dtype_of(cfg.dtype),
                                     param_dtype=dtype_of(cfg.param_dtype),
                                     kernel_init=normal_init(cfg.init_std, "embed", "vocab"))

  def __call__(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, deterministic: bool = True,
               cache: tuple[KVCache, ...] | None = None,
               logits_index_B: jax.Array | None = None,
               return_hidden: bool = False) -> jax.Array | tuple[jax.Array, tuple[KVCache, ...]]:
    """`logits_index_B` keeps one index of each row before the vocabulary projection (logits [B, 1, V]): a prefill
    needs only its last prompt token's logits, and the projection is the largest matmul of the model. An index
    [B, K] keeps K positions of each row (logits [B, K, V]): the continuation a log-likelihood request scores.
    `return_hidden` returns a `Hidden` (final hidden states and the head's weights) instead of the logits, for
    losses computed a chunk of tokens at a time (lmjax/models/vocab_head.py)."""
    out = self.hidden(tokens_BL, positions_BL=positions_BL, segment_ids_BL=segment_ids_BL,
                      deterministic=deterministic, cache=cache)
    x_BLD, new_cache = (out, None) if cache is None else out
    if return_hidden:
      return Hidden(x_BLD, self.vocab_head())
    if logits_index_B is not None:
      index_BK = logits_index_B[:, None] if logits_index_B.ndim == 1 else logits_index_B
      x_BLD = jnp.take_along_axis(x_BLD, index_BK[:, :, None], axis=1)
    logits_BLV = self.embed.attend(x_BLD) if self.cfg.tie_embeddings else self.lm_head(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab")).astype(jnp.float32)
    logits_BLV = logit_mask.apply(logits_BLV, self.cfg.logit_mask)
    return logits_BLV if cache is None else (logits_BLV, new_cache)

  def hidden(self, tokens_BL: jax.Array, *, positions_BL: jax.Array | None = None,
             segment_ids_BL: jax.Array | None = None, deterministic: bool = True,
             cache: tuple[KVCache, ...] | None = None) -> Any:
    """The stack's output [B, L, D] before the vocabulary projection (with a cache: and the updated cache)."""
    x_BLD = self.embed(tokens_BL)
    if self.cfg.scale_embeddings:  # Gemma: embeddings times sqrt(d_model), in the compute dtype
      x_BLD = x_BLD * jnp.asarray(self.cfg.d_model ** 0.5, x_BLD.dtype)
    return self.stack(x_BLD, positions_BL=positions_BL, segment_ids_BL=segment_ids_BL, deterministic=deterministic,
                      cache=cache)

  def vocab_head(self) -> VocabHead:
    """The output weights as [V, D]: the tied embedding, or the lm_head kernel transposed."""
    # A masked row's logit becomes x.w - 1e9 rather than exactly -1e9: its probability is 0 in float32 either way.
    bias_V = logit_mask.bias(self.cfg.vocab_size, self.cfg.logit_mask)
    if self.cfg.tie_embeddings:
      return VocabHead(self.embed.embedding, bias_V)
    return VocabHead(self.lm_head.variables["params"]["kernel"].T, bias_V)

  # --- the cache interface of lmjax.decode ------------------------------------------------------------------------

  def init_cache(self, batch: int, length: int) -> tuple[KVCache, ...]:
    """Empty caches for `length` positions per row; the shapes follow from the config alone."""
    return empty_cache(self.cfg, self.cfg.num_layers, batch, length)

  def start_cache(self, batch: int, length: int, encoder_inputs: Any = None) -> tuple[KVCache, ...]:
    if encoder_inputs is not None:
      raise ValueError("a decoder-only model takes no encoder inputs")
    return self.init_cache(batch, length)

  def extend(self, tokens_BL: jax.Array, positions_BL: jax.Array, cache: tuple[KVCache, ...],
             logits_index_B: jax.Array | None = None) -> tuple[jax.Array, tuple[KVCache, ...]]:
    """Logits after the new tokens (at `positions_BL`) and the cache holding them."""
    return self(tokens_BL, positions_BL=positions_BL, cache=cache, logits_index_B=logits_index_B)


class LastTokenClassifier(nn.Module):
  """A decoder's hidden state at each row's last real token -> dropout -> linear: [B, num_outputs] logits."""
  cfg: Any  # a GptConfig
  num_outputs: int

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array, segment_ids_BL: jax.Array,
               deterministic: bool = True) -> jax.Array:
    del token_types_BL  # a decoder has no token types; the separator tokens mark the segments
    x_BLD = Decoder(self.cfg, name="decoder").hidden(tokens_BL, segment_ids_BL=segment_ids_BL,
                                                     deterministic=deterministic)
    last_B = jnp.maximum(jnp.sum(segment_ids_BL > 0, axis=-1) - 1, 0)
    x_BD = jnp.take_along_axis(x_BLD, last_B[:, None, None], axis=1)[:, 0]
    x_BD = nn.Dropout(self.cfg.dropout)(x_BD, deterministic=deterministic)
    return classifier_head(self.cfg, self.num_outputs, "classifier")(x_BD).astype(jnp.float32)


@MODELS.register("gpt")
@dataclasses.dataclass(frozen=True)
class GptConfig(TransformerConfig):
  scale_embeddings: bool = False  # token embeddings times sqrt(d_model) before the stack (Gemma)

  def sequence_classifier(self, num_outputs: int) -> Any:
    return LastTokenClassifier(self, num_outputs)

  @classmethod
  def pretrained_subtrees(cls, params: dict[str, Any]) -> dict[str, Any]:
    return {"decoder": {k: v for k, v in params.items() if k != "lm_head"}}

  module: ClassVar[Any] = Decoder
  interface: ClassVar[str] = "next_token"
  classifies: ClassVar[bool] = True
  decodes: ClassVar[bool] = True
  sows_layers: ClassVar[bool] = True
  returns_hidden: ClassVar[bool] = True
