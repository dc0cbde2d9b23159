"""Fine-tuning models: the BERT encoder (lmjax.models.encoder.Encoder) with a task head on top.

Each names its spine 'encoder' (and its pooler 'pooler') exactly as the pretraining model `Bert` does, so a
pretraining checkpoint's subtrees copy over unchanged (lmjax.init_from); everything else is the new head, which
starts from its random initialization.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.models.encoder import BertConfig, Encoder, Pooler
from lmjax.models.layers import Projection

PRETRAINED_SUBTREES = ("encoder", "pooler")


def _head(cfg: BertConfig, num_outputs: int, name: str) -> Projection:
  return Projection((num_outputs,), ("embed",), (None,), cfg.init_std, True, cfg.dtype, cfg.param_dtype, name=name)


class SequenceClassifier(nn.Module):
  """[CLS] pooled vector -> dropout -> linear: [B, num_outputs] logits (num_outputs=1: a regression value)."""
  cfg: BertConfig
  num_outputs: int

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array, segment_ids_BL: jax.Array,
               deterministic: bool = True) -> jax.Array:
    x_BLD = Encoder(self.cfg, name="encoder")(tokens_BL, token_types_BL, segment_ids_BL, deterministic=deterministic)
    pooled_BD = Pooler(self.cfg, name="pooler")(x_BLD)
    pooled_BD = nn.Dropout(self.cfg.dropout)(pooled_BD, deterministic=deterministic)
    return _head(self.cfg, self.num_outputs, "classifier")(pooled_BD).astype(jnp.float32)


class TokenClassifier(nn.Module):
  """Every position's vector -> dropout -> linear: [B, L, num_tags] logits (named-entity tagging)."""
  cfg: BertConfig
  num_tags: int

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array, segment_ids_BL: jax.Array,
               deterministic: bool = True) -> jax.Array:
    x_BLD = Encoder(self.cfg, name="encoder")(tokens_BL, token_types_BL, segment_ids_BL, deterministic=deterministic)
    x_BLD = nn.Dropout(self.cfg.dropout)(x_BLD, deterministic=deterministic)
    return _head(self.cfg, self.num_tags, "classifier")(x_BLD).astype(jnp.float32)


class SpanExtractor(nn.Module):
  """Every position's vector -> linear to 2: start and end logits [B, L] of the answer span (extractive QA).

  Positions outside the example (segment id 0) get a large negative logit, so padding is never an answer.
  """
  cfg: BertConfig

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array, segment_ids_BL: jax.Array,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    x_BLD = Encoder(self.cfg, name="encoder")(tokens_BL, token_types_BL, segment_ids_BL, deterministic=deterministic)
    logits_BL2 = _head(self.cfg, 2, "span")(x_BLD).astype(jnp.float32)
    logits_BL2 = jnp.where((segment_ids_BL > 0)[..., None], logits_BL2, -1e9)
    return logits_BL2[..., 0], logits_BL2[..., 1]
