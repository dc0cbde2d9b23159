"""Model zoo. Shape glossary used in names (`x_BLD`) and einsum strings throughout lmjax:

  B  batch                L  query length           M  key/value length
  D  model width          H  attention heads        d  head width (D / H)
  F  MLP hidden width     V  vocabulary size        K  key/value heads (grouped-query attention)
  P  positions an MLM predicts per example          S  source length (encoder-decoder)

Logical axis names given to parameters and activations (mapped to mesh axes by rules in the config):
  'batch', 'length', 'embed', 'heads', 'kv', 'mlp', 'vocab', and 'activation_tokens' for the flattened [B*L]
  token axis of MLP activations.

Every module of this package is imported here, so each architecture (a config class registered with
`@MODELS.register`, next to its Flax module) is available by `model.name` as soon as lmjax is imported; adding one
is adding one file (docs/extending.md).
"""

import importlib
import pkgutil

from flax.linen import logical_axis_rules

from lmjax.models import positions
from lmjax.models.registry import build_model, family, model_config

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["build_model", "family", "logical_axis_rules", "model_config", "positions"]
