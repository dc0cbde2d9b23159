"""`model.logit_mask`: lmjax special tokens that an imported checkpoint's output distribution does not have.

An imported vocabulary gains rows for the lmjax specials it lacks (lmjax/hf/vocab.py: GPT-2 has no <pad>, <bos>,
<unk>, ...). Those rows are inputs only; left in the softmax they would take probability from the checkpoint's own
tokens (a copied <bos> row scores like <|endoftext|>), so token log-probabilities, beam scores and evaluation would
differ from the checkpoint's. The importer lists them here and every vocabulary head gives them a logit so low that
their probability is exactly 0 in float32; it is finite, so a loss that multiplies probabilities by log-probabilities
(distillation) stays finite too. Empty (the default, and every lmjax-native run): no mask, no change.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from lmjax import config as config_lib
from lmjax.data.tokenizers import SPECIAL_TOKENS

NAMES = tuple(token.strip("<>") for token in SPECIAL_TOKENS)  # lmjax id order: 'pad' is 0, ..., 'cls' is 6
MASKED_LOGIT = -1e9


def parse(field: str) -> tuple[int, ...]:
  """The lmjax ids named by a model.logit_mask value ('bos,unk' -> (1, 3))."""
  return tuple(sorted(NAMES.index(name.strip()) for name in field.split(",") if name.strip()))


def to_field(ids) -> str:
  return ",".join(NAMES[i] for i in sorted(ids))


def validate(cfg: ml_collections.ConfigDict) -> None:
  unknown = [name.strip() for name in cfg.model.logit_mask.split(",") if name.strip() and name.strip() not in NAMES]
  if unknown:
    config_lib.fail("model.logit_mask", cfg.model.logit_mask, f"names lmjax special tokens, comma-separated, from "
                    f"{', '.join(NAMES)} ({unknown[0]!r} is none of them)")


def apply(logits_BLV, field: str):
  """float32 logits with the named rows set to MASKED_LOGIT; the logits themselves when the field is empty."""
  ids = parse(field)
  if not ids:
    return logits_BLV
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  masked_V = np.zeros(logits_BLV.shape[-1], bool)
  masked_V[list(ids)] = True
  return jnp.where(masked_V, jnp.asarray(MASKED_LOGIT, logits_BLV.dtype), logits_BLV)


def bias(vocab_size: int, field: str):
  """A [V] float32 bias that is MASKED_LOGIT on the named rows, for heads applied a chunk at a time; None when the
  field is empty."""
  ids = parse(field)
  if not ids:
    return None
  bias_V = np.zeros(vocab_size, np.float32)
  bias_V[list(ids)] = MASKED_LOGIT
  return bias_V
