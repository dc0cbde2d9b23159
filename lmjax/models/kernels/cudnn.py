"""model.attention_impl='cudnn': cuDNN's fused flash attention through jax.nn.dot_product_attention
(implementation='cudnn'), on NVIDIA GPUs, in bfloat16 or float16.

A causal LM without packed documents passes only `is_causal`, so cuDNN skips the blocks above the diagonal and
builds no mask. Packed documents and padding pass the boolean mask, which cuDNN applies as an additive bias (an
[B, 1, L, L] array: correct, not memory-lean; `flash` or `pallas_gpu` take segment ids instead). Position biases
are added by cuDNN; it has no attention dropout and does not return the attention maps.
"""

from __future__ import annotations

import jax

from lmjax.models.kernels.base import Call, Kernel
from lmjax.registry import ATTENTION


def cudnn_attention(call: Call, causal: bool, implementation: str = "cudnn") -> jax.Array:
  """`implementation='xla'` runs the same call through JAX's XLA path, so the argument handling is tested on CPU."""
  mask = None if call.segment_ids_BL is None else call.mask_B1LM
  bias = None if call.bias_BHLM is None else call.bias_BHLM.astype(call.q_BLHd.dtype)
  return jax.nn.dot_product_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, bias=bias, mask=mask,
                                      is_causal=causal, implementation=implementation)


def attend(call: Call, causal: bool):
  return cudnn_attention(call, causal)


CUDNN = ATTENTION.register("cudnn")(Kernel(
    "cudnn", "cuDNN flash attention via jax.nn.dot_product_attention(implementation='cudnn'): NVIDIA GPUs, "
    "bfloat16/float16", attend, biases=True, dtypes=("bfloat16", "float16"), platforms=("gpu", "cuda")))
