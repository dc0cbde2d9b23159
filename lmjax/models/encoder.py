"""The bidirectional Transformer encoder (BERT) and its pretraining heads.

`Encoder` is the spine fine-tuning tasks reuse: token + position + token-type embeddings, then the Transformer
stack the GPT decoder uses, bidirectional, so every token sees every other real token of its example. `Bert` adds
what pretraining needs: a pooler (dense + tanh on the [CLS] position), the masked-LM head (dense + activation +
norm, then the tied embedding with an output bias) and the 2-way next-sentence head on the pooled output.
Parameters live under 'encoder', 'pooler', 'mlm_head' and 'nsp_head', so a fine-tuning model that names its
spine 'encoder' (and its pooler 'pooler') starts from pretrained weights by copying those subtrees.

BERT is post-norm (model.pre_norm=False): a LayerNorm after the embeddings and after each residual add. A pre-norm
encoder instead normalizes its output once at the end, as the decoder does.
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
from lmjax.models.layers import (ACTIVATIONS, Norm, Projection, classifier_head, dtype_of, normal_init,
                                 zeros_init)
from lmjax.models.stack import TransformerConfig, TransformerStack
from lmjax.models.vocab_head import Hidden, VocabHead
from lmjax.registry import MODELS


class Encoder(nn.Module):
  """[B, L] tokens -> [B, L, D] contextual vectors; a setup module, so parents can also call `attend`."""
  cfg: "BertConfig"

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype),
                          param_dtype=dtype_of(cfg.param_dtype),
                          embedding_init=normal_init(cfg.init_std, "vocab", "embed"))
    self.token_types = nn.Embed(cfg.type_vocab_size, cfg.d_model, dtype=dtype_of(cfg.dtype),
                                param_dtype=dtype_of(cfg.param_dtype),
                                embedding_init=normal_init(cfg.init_std, None, "embed"))
    self.stack = TransformerStack(cfg, causal=False, num_layers=cfg.num_layers)
    nn.share_scope(self, self.stack)

  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, positions_BL: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """`segment_ids_BL` is 0 at padding (which attends to and is seen by nothing) and equal within an example;
    `token_types_BL` says which segment (A = 0, B = 1) a token belongs to."""
    if token_types_BL is None:
      token_types_BL = jnp.zeros_like(tokens_BL)
    return self.stack(self.embed(tokens_BL), positions_BL=positions_BL, segment_ids_BL=segment_ids_BL,
                      deterministic=deterministic, added_BLD=self.token_types(token_types_BL))

  def attend(self, x_BLD: jax.Array) -> jax.Array:
    """x . embedding^T: logits over the vocabulary with the input embedding as output weights (tied)."""
    return self.embed.attend(x_BLD)

  def embedding_VD(self) -> jax.Array:
    return self.embed.embedding


class Pooler(nn.Module):
  """tanh(W x_[CLS] + b): one vector per example for sentence-level heads (NSP, classification)."""
  cfg: "BertConfig"

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    cfg = self.cfg
    dense = Projection((cfg.d_model,), ("embed",), (None,), cfg.init_std, True, cfg.dtype, cfg.param_dtype,
                       name="dense")
    return jnp.tanh(dense(x_BLD[:, 0]))


class MlmHead(nn.Module):
  """Masked-LM output: dense + activation + norm, then logits through the tied embedding plus a bias per token."""
  cfg: "BertConfig"

  @nn.compact
  def __call__(self, x_BPD: jax.Array, encoder: Encoder, return_hidden: bool = False) -> jax.Array | Hidden:
    cfg = self.cfg
    h_BPD = Projection((cfg.d_model,), ("embed",), (None,), cfg.init_std, True, cfg.dtype, cfg.param_dtype,
                       name="transform")(x_BPD)
    # A gated MLP's gate nonlinearity stands in for its activation here: the head has a single projection.
    h_BPD = Norm(cfg, name="ln")(ACTIVATIONS.get(cfg.activation, ACTIVATIONS["gelu"])(h_BPD))
    if return_hidden:
      bias_V = self.param("bias", zeros_init("vocab"), (cfg.vocab_size,), dtype_of(cfg.param_dtype))
      weight_VD = encoder.embedding_VD() if cfg.tie_embeddings else self.variables["params"]["decoder"]["kernel"].T
      mask_V = logit_mask.bias(cfg.vocab_size, cfg.logit_mask)
      return Hidden(h_BPD, VocabHead(weight_VD, bias_V if mask_V is None else bias_V.astype(jnp.float32) + mask_V))
    if cfg.tie_embeddings:
      logits_BPV = encoder.attend(h_BPD)
    else:
      logits_BPV = Projection((cfg.vocab_size,), ("embed",), ("vocab",), cfg.init_std, False, cfg.dtype,
                              cfg.param_dtype, name="decoder")(h_BPD)
    bias_V = self.param("bias", zeros_init("vocab"), (cfg.vocab_size,), dtype_of(cfg.param_dtype))
    return logit_mask.apply(logits_BPV.astype(jnp.float32) + bias_V.astype(jnp.float32), cfg.logit_mask)


class Bert(nn.Module):
  """The pretraining model: {'mlm_logits': [B, P, V], 'nsp_logits': [B, 2]}, float32.

  MLM logits are computed only at `mlm_positions_BP` (the P predicted positions of each row, about 15% of L),
  since the vocabulary projection is the largest matmul of the model; without positions, at every position.
  """
  cfg: "BertConfig"

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, token_types_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None, mlm_positions_BP: jax.Array | None = None,
               deterministic: bool = True, return_hidden: bool = False) -> dict[str, jax.Array]:
    """With `return_hidden`, 'mlm_logits' is a `Hidden` (lmjax/models/vocab_head.py) instead of logits."""
    encoder = Encoder(self.cfg, name="encoder")
    x_BLD = encoder(tokens_BL, token_types_BL, segment_ids_BL, deterministic=deterministic)
    x_BPD = x_BLD if mlm_positions_BP is None else jnp.take_along_axis(x_BLD, mlm_positions_BP[:, :, None], axis=1)
    mlm_logits_BPV = MlmHead(self.cfg, name="mlm_head")(x_BPD, encoder, return_hidden)
    if not return_hidden:
      mlm_logits_BPV = nn.with_logical_constraint(mlm_logits_BPV, ("batch", "length", "vocab"))
    pooled_BD = Pooler(self.cfg, name="pooler")(x_BLD)
    nsp_logits_B2 = Projection((2,), ("embed",), (None,), self.cfg.init_std, True, self.cfg.dtype,
                               self.cfg.param_dtype, name="nsp_head")(pooled_BD)
    return {"mlm_logits": mlm_logits_BPV, "nsp_logits": nsp_logits_B2.astype(jnp.float32)}


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
    return classifier_head(self.cfg, self.num_outputs, "classifier")(pooled_BD).astype(jnp.float32)


@MODELS.register("bert")
@dataclasses.dataclass(frozen=True)
class BertConfig(TransformerConfig):
  type_vocab_size: int = 2  # token types (segment A / B) the encoder embeds

  module: ClassVar[Any] = Bert
  interface: ClassVar[str] = "encoder"
  classifies: ClassVar[bool] = True
  sows_layers: ClassVar[bool] = True
  returns_hidden: ClassVar[bool] = True

  @classmethod
  def validate_fields(cls, cfg: ml_collections.ConfigDict) -> None:
    config_lib.at_least(cfg, "model.type_vocab_size", 1)

  def sequence_classifier(self, num_outputs: int) -> Any:
    return SequenceClassifier(self, num_outputs)

  @classmethod
  def pretrained_subtrees(cls, params: dict[str, Any]) -> dict[str, Any]:
    return {name: params[name] for name in ("encoder", "pooler") if name in params}
  def flops_per_token(self, params: Any, seq_len: int) -> float | None:
    """Not counted: the pretraining heads run on a task-dependent subset of positions (the masked ones, the
    [CLS] vector), so a per-token count would depend on the task, not the family."""
    del params, seq_len
    return None
