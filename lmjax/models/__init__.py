"""Model zoo. Shape glossary used in names (`x_BLD`) and einsum strings throughout lmjax:

  B  batch                L  query length           M  key/value length
  D  model width          H  attention heads        d  head width (D / H)
  F  MLP hidden width     V  vocabulary size        K  key/value heads (grouped-query attention)
  P  positions an MLM predicts per example

Logical axis names given to parameters and activations (mapped to mesh axes by rules in the config):
  'batch', 'length', 'embed', 'heads', 'kv', 'mlp', 'vocab', and 'activation_tokens' for the flattened [B*L]
  token axis of MLP activations.
"""

from flax.linen import logical_axis_rules

from lmjax.models.registry import build_model, MODEL_REGISTRY

__all__ = ["build_model", "logical_axis_rules", "MODEL_REGISTRY"]
