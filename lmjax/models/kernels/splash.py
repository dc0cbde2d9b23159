"""model.attention_impl='splash': the Pallas TPU splash-attention kernel shipped with JAX
(jax.experimental.pallas.ops.tpu.splash_attention).

Causality is the kernel's static mask (blocks above the diagonal are skipped), packed documents and padding its
segment ids. Grouped-query heads run its multi-query kernel once per key/value head over that head's G query
heads. The length is padded to a multiple of 128 with segment id 0, which no real query sees. No position biases,
no dropout, no attention maps. Off TPU it runs in Pallas interpret mode: correct and slow, for tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmjax.models.kernels.base import Call, Kernel, pad_length, segments_or_ones
from lmjax.registry import ATTENTION

LANES = 128  # the kernel's tiles are multiples of the TPU's 128 lanes


@functools.lru_cache(maxsize=32)
def _kernel(length: int, heads: int, causal: bool, mqa: bool, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks  # pylint: disable=import-outside-toplevel
  block = next(b for b in (512, 256, 128) if length % b == 0)
  one = masks.CausalMask((length, length)) if causal else masks.FullMask((length, length))
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  make = splash.make_splash_mqa if mqa else splash.make_splash_mha
  return make(masks.MultiHeadMask([one] * heads), block_sizes=sizes, head_shards=1, q_seq_shards=1,
              interpret=interpret), splash.SegmentIds


def splash_attention(call: Call, causal: bool, interpret: bool) -> jax.Array:
  B, L, H, d = call.q_BLHd.shape
  K = call.k_BLKd.shape[2]
  seg_BL = pad_length(segments_or_ones(call.segment_ids_BL, B, L), LANES)
  Lp = seg_BL.shape[1]
  heads_first = lambda x: jnp.swapaxes(pad_length(x, LANES), 1, 2)  # [B, heads, Lp, d]
  q_BHLd = heads_first(call.q_BLHd * d ** -0.5)
  k_BKLd, v_BKLd = heads_first(call.k_BLKd), heads_first(call.v_BLKd)
  if K == H:
    kernel, segment_ids = _kernel(Lp, H, causal, False, interpret)
    out_BHLd = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids(s, s)))(q_BHLd, k_BKLd, v_BKLd, seg_BL)
  else:  # each key/value head serves its G query heads with the multi-query kernel
    kernel, segment_ids = _kernel(Lp, H // K, causal, True, interpret)
    q_BKGLd = q_BHLd.reshape(B, K, H // K, Lp, d)
    per_head = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids(s, s)), in_axes=(0, 0, 0, None))
    out_BHLd = jax.vmap(per_head)(q_BKGLd, k_BKLd, v_BKLd, seg_BL).reshape(B, H, Lp, d)
  return jnp.swapaxes(out_BHLd, 1, 2)[:, :L].astype(call.v_BLKd.dtype)


def attend(call: Call, causal: bool):
  return splash_attention(call, causal, interpret=jax.default_backend() != "tpu")


SPLASH = ATTENTION.register("splash")(Kernel(
    "splash", "the Pallas TPU splash-attention kernel (jax.experimental.pallas.ops.tpu): TPUs; elsewhere Pallas "
    "interpret mode, for tests", attend, platforms=("tpu",), interpretable=True))
