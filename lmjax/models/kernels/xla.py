"""model.attention_impl='xla': the reference. Two einsums and a float32 softmax over materialized [B, H, L, M] scores:
readable, differentiable everywhere, and the only implementation with attention dropout and attention maps."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmjax.models.kernels.base import MASKED, Call, Kernel
from lmjax.registry import ATTENTION


def reference_attention(q_BLHd: jax.Array, k_BMKd: jax.Array, v_BMKd: jax.Array, mask_B1LM: jax.Array,
                        dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0,
                        bias_BHLM: jax.Array | None = None, return_probs: bool = False) -> jax.Array:
  """softmax(Q K^T / sqrt(d) + bias) V. Keys and values may have fewer heads K than queries (H = K * G).
  With return_probs, (output, the attention probabilities [B, H, L, M] before dropout)."""
  B, L, H, d = q_BLHd.shape
  K = k_BMKd.shape[2]
  scale = d ** -0.5
  if K == H:
    scores_BHLM = jnp.einsum("BLHd,BMHd->BHLM", q_BLHd * scale, k_BMKd).astype(jnp.float32)
  else:
    # Grouped heads are contracted against their shared key head directly, never materializing repeated keys.
    q_BLKGd = (q_BLHd * scale).reshape(B, L, K, H // K, d)
    scores_BHLM = jnp.einsum("BLKGd,BMKd->BKGLM", q_BLKGd, k_BMKd).astype(jnp.float32).reshape(B, H, L, -1)
  if bias_BHLM is not None:
    scores_BHLM = scores_BHLM + bias_BHLM.astype(jnp.float32)
  scores_BHLM = jnp.where(mask_B1LM, scores_BHLM, MASKED)
  probs_BHLM = jax.nn.softmax(scores_BHLM, axis=-1)
  undropped_BHLM = probs_BHLM
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BHLM.shape)
    probs_BHLM = jnp.where(keep, probs_BHLM / (1.0 - dropout_rate), 0.0)
  probs_BHLM = probs_BHLM.astype(v_BMKd.dtype)
  if K == H:
    out_BLHd = jnp.einsum("BHLM,BMHd->BLHd", probs_BHLM, v_BMKd)
  else:
    probs_BKGLM = probs_BHLM.reshape(B, K, H // K, L, -1)
    out_BLHd = jnp.einsum("BKGLM,BMKd->BLKGd", probs_BKGLM, v_BMKd).reshape(B, L, H, d)
  return (out_BLHd, undropped_BHLM) if return_probs else out_BLHd


def attend(call: Call, causal: bool):
  del causal  # in the mask already
  return reference_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, call.mask_B1LM, call.dropout_rng,
                             call.dropout_rate, call.bias_BHLM, return_probs=call.return_probs)


XLA = ATTENTION.register("xla")(Kernel(
    "xla", "the reference: materialized float32 scores, any backend, biases, dropout and attention maps", attend,
    biases=True, dropout=True, probs=True))
