"""model.attention_impl='pallas_gpu': the Pallas (Triton) flash-attention kernel shipped with JAX
(jax.experimental.pallas.ops.gpu.attention.mha), forward and backward.

It takes segment ids for packed documents and padding, and a causal flag; it wants one key/value head per query
head, so grouped-query keys and values are repeated to the query heads (their gradients summed back by autodiff).
The length is padded to a multiple of the block with segment id 0. No position biases, no dropout, no attention
maps. Off GPU it runs in Pallas interpret mode: correct and slow, for tests.
"""

from __future__ import annotations

import jax

from lmjax.models.kernels.base import Call, Kernel, pad_length, repeat_kv_heads, segments_or_ones
from lmjax.registry import ATTENTION


def pallas_gpu_attention(call: Call, causal: bool, interpret: bool) -> jax.Array:
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # pylint: disable=import-outside-toplevel
  B, L, H, d = call.q_BLHd.shape
  block = min(128, -(-L // 32) * 32)
  backward_block = min(32, block)
  sizes = gpu_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=backward_block,
                                   block_kv_dkv=backward_block, block_q_dq=backward_block, block_kv_dq=backward_block)
  seg_BL = pad_length(segments_or_ones(call.segment_ids_BL, B, L), block)
  pad = lambda x: pad_length(x, block)
  out_BLHd = gpu_attention.mha(pad(call.q_BLHd), pad(repeat_kv_heads(call.k_BLKd, H)),
                               pad(repeat_kv_heads(call.v_BLKd, H)), seg_BL, sm_scale=d ** -0.5, causal=causal,
                               block_sizes=sizes, interpret=interpret)
  return out_BLHd[:, :L].astype(call.v_BLKd.dtype)


def attend(call: Call, causal: bool):
  return pallas_gpu_attention(call, causal, interpret=jax.default_backend() not in ("gpu", "cuda"))


PALLAS_GPU = ATTENTION.register("pallas_gpu")(Kernel(
    "pallas_gpu", "the Pallas (Triton) flash-attention kernel (jax.experimental.pallas.ops.gpu): NVIDIA GPUs; "
    "elsewhere Pallas interpret mode, for tests", attend, platforms=("gpu", "cuda"), interpretable=True))
