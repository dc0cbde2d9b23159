"""model.attention_impl='jax': jax.nn.dot_product_attention called without `implementation`, which in JAX 0.10
takes its XLA path on every backend (it is not cuDNN: that is 'cudnn'). Kept so that runs which recorded it
validate, resume and compute exactly as before, including its fallback to the reference for position biases,
attention dropout and recorded attention maps."""

from __future__ import annotations

import jax

from lmjax.models.kernels.base import Call, Kernel
from lmjax.models.kernels.xla import reference_attention
from lmjax.registry import ATTENTION


def fused_attention(q_BLHd: jax.Array, k_BMKd: jax.Array, v_BMKd: jax.Array, mask_B1LM: jax.Array) -> jax.Array:
  # jax.nn.dot_product_attention cannot mask a row completely; padding rows are zeroed afterwards by the caller's
  # loss mask, and a fully masked row here only needs to stay finite, which the XLA path of this op guarantees.
  # It groups query heads over fewer key/value heads the same way (h = k * G + g).
  return jax.nn.dot_product_attention(q_BLHd, k_BMKd, v_BMKd, mask=mask_B1LM)


def attend(call: Call, causal: bool):
  del causal
  if call.bias_BHLM is not None or call.return_probs or (call.dropout_rng is not None and call.dropout_rate > 0):
    return reference_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, call.mask_B1LM, call.dropout_rng,
                               call.dropout_rate, call.bias_BHLM, return_probs=call.return_probs)
  return fused_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, call.mask_B1LM)


JAX = ATTENTION.register("jax")(Kernel(
    "jax", "jax.nn.dot_product_attention's XLA path (runs recorded before 'xla'/'cudnn' were split); the reference "
    "for biases, dropout and attention maps", attend, biases=True, dropout=True, probs=True))
