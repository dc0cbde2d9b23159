"""model.attention_impl='ring': ring attention (Liu et al., 2023) over the mesh's 'sequence' axis, for context
parallelism (mesh.sequence > 1).

Activations are sharded along the length axis (the logical axis 'length' maps to 'sequence'), so each of the n
devices holds L / n consecutive queries, keys and values. Inside a shard_map over 'sequence' every device computes
its queries against the key/value block it holds with the tiles of flash.py, then passes the block to the next
device round the ring; after n steps every query has seen every key, and the per-block results are merged by their
log-sum-exp. Keys, values and their segment ids travel; positions follow from the device's place in the ring, so
causal masking and packed documents work across devices. The backward pass runs the ring again, passing dK and dV
with their blocks, which arrive back at their owner after the n-th step. Memory per device is O(L / n).

Under the causal mask the blocks from later devices are fully masked and skipped, so devices early in the ring
idle for part of each step (no load-balancing permutation here). No position biases, dropout or attention maps.
With one device on the sequence axis it is `flash`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lmjax.models.kernels import flash
from lmjax.models.kernels.base import Call, Kernel, pad_length, segments_or_ones
from lmjax.registry import ATTENTION

AXIS = "sequence"


def sequence_shards() -> int:
  """The size of the current mesh's 'sequence' axis (1 outside a mesh, or without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names:
    return 1
  return int(mesh.shape[AXIS])


def _merge(out, lse, out_s, lse_s):
  """Two partial softmax results over disjoint key sets, combined by their log-sum-exps."""
  lse_new = jnp.logaddexp(lse, lse_s)
  safe = jnp.where(jnp.isfinite(lse_new), lse_new, 0.0)
  to_rows = lambda w_BKGL: jnp.moveaxis(w_BKGL, 3, 1)[..., None]
  return out * to_rows(jnp.exp(lse - safe)) + out_s * to_rows(jnp.exp(lse_s - safe)), lse_new


def _shift(n: int, *xs):
  perm = [(i, (i + 1) % n) for i in range(n)]
  return tuple(jax.lax.ppermute(x, AXIS, perm) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _ring(q_BLKGd, k_BLKd, v_BLKd, seg_BL, causal: bool, n: int, local: int, block: int):
  return _ring_fwd(q_BLKGd, k_BLKd, v_BLKd, seg_BL, causal, n, local, block)[0]


def _ring_fwd(q_BLKGd, k_BLKd, v_BLKd, seg_BL, causal, n, local, block):
  me = jax.lax.axis_index(AXIS)
  B, L, K, G, d = q_BLKGd.shape

  def step(s, carry):
    out, lse, k, v, kv_seg = carry
    source = (me - s) % n
    out_s, lse_s = flash.forward(q_BLKGd, k, v, seg_BL, kv_seg, None, causal=causal, q_start=me * local,
                                 kv_start=source * local, bq=block, bk=block)
    out, lse = _merge(out, lse, out_s, lse_s)
    return (out, lse, *_shift(n, k, v, kv_seg))

  init = (jnp.zeros((B, L, K, G, d), jnp.float32), jnp.full((B, K, G, L), -jnp.inf, jnp.float32), k_BLKd, v_BLKd,
          seg_BL)
  out, lse, *_ = jax.lax.fori_loop(0, n, step, init)
  out = out.astype(v_BLKd.dtype)
  return out, (q_BLKGd, k_BLKd, v_BLKd, seg_BL, out, lse)


def _ring_bwd(causal, n, local, block, residuals, dout):
  q, k, v, seg, out, lse = residuals
  me = jax.lax.axis_index(AXIS)
  delta = jnp.einsum("BLKGd,BLKGd->BKGL", dout.astype(jnp.float32), out.astype(jnp.float32))

  def step(s, carry):
    dq, k_s, v_s, kv_seg, dk, dv = carry
    source = (me - s) % n
    dq_s, dk_s, dv_s, _ = flash.backward(q, k_s, v_s, seg, kv_seg, None, lse, delta, dout, causal=causal,
                                         q_start=me * local, kv_start=source * local, bq=block, bk=block)
    return (dq + dq_s, *_shift(n, k_s, v_s, kv_seg, dk + dk_s, dv + dv_s))

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  dq, _, _, _, dk, dv = jax.lax.fori_loop(0, n, step, (zeros(q), k, v, seg, zeros(k), zeros(v)))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(q_BLHd, k_BLKd, v_BLKd, segment_ids_BL=None, *, causal: bool) -> jax.Array:
  """Self-attention with the length axis sharded over the mesh's 'sequence' axis; equal to the reference."""
  n = sequence_shards()
  if n == 1:
    return flash.flash_attention(q_BLHd, k_BLKd, v_BLKd, segment_ids_BL, causal=causal)
  B, L, H, d = q_BLHd.shape
  K = k_BLKd.shape[2]
  if L % n:
    raise ValueError(f"ring attention splits the length {L} over mesh.sequence={n} devices: make it a multiple")
  local = L // n
  block = flash.block_size(local)
  seg_BL = segments_or_ones(segment_ids_BL, B, L)
  q_BLKGd = (q_BLHd * d ** -0.5).reshape(B, L, K, H // K, d)

  def per_device(q, k, v, seg):
    # Each device pads its own block to whole tiles (segment 0: seen by nothing) and drops the padding after.
    pad = lambda x: pad_length(x, block)
    out = _ring(pad(q), pad(k), pad(v), pad(seg), causal, n, local, block)
    return out[:, :local]

  spec = lambda rank: P(None, AXIS, *(None,) * (rank - 2))
  sharded = jax.shard_map(per_device, in_specs=(spec(5), spec(4), spec(4), spec(2)), out_specs=spec(5),
                          axis_names={AXIS}, check_vma=False)
  return sharded(q_BLKGd, k_BLKd, v_BLKd, seg_BL).reshape(B, L, H, d)


def attend(call: Call, causal: bool):
  return ring_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, call.segment_ids_BL, causal=causal)


RING = ATTENTION.register("ring")(Kernel(
    "ring", "ring attention over the mesh's sequence axis (context parallelism), flash tiles on each device; "
    "flash with one device", attend, sequence_parallel=True))
