"""Fine-tuning models: a pretrained body with a task head on top.

The BERT encoder (lmjax.models.encoder.Encoder) serves every task; each model names its spine 'encoder' (and its
pooler 'pooler') exactly as the pretraining model `Bert` does, so a pretraining checkpoint's subtrees copy over
unchanged (lmjax.init_from). Sequence classification also runs on a decoder, read at each example's last real
token (the only one that has seen the whole input), with the decoder under 'decoder', and on an encoder-decoder's
encoder, mean-pooled over the real tokens, under 'encoder'. A family says which of these it has and how its
pretraining parameters map onto them (ModelConfig.sequence_classifier, pretrained_subtrees). Everything else is the
new head, which starts from its random initialization.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmjax.models.decoder import LastTokenClassifier
from lmjax.models.encoder import BertConfig, Encoder, SequenceClassifier
from lmjax.models.encoder_decoder import SourceClassifier
from lmjax.models.layers import Projection

PRETRAINED_SUBTREES = ("encoder", "pooler", "decoder")
__all__ = ["LastTokenClassifier", "SequenceClassifier", "SourceClassifier", "SpanExtractor", "TokenClassifier"]


def _head(cfg: Any, num_outputs: int, name: str) -> Projection:
  return Projection((num_outputs,), ("embed",), (None,), cfg.init_std, True, cfg.dtype, cfg.param_dtype, name=name)


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


