"""model.attention_impl='flash': blockwise attention with an online softmax (Milakov & Gimelshein 2018, Dao et al.
2022), in plain JAX, on every backend, CPU included.

Queries are cut into blocks of `block_q` rows and keys into blocks of `block_k`; for each query block a loop over
key blocks keeps a running maximum m, normalizer l and unnormalized output, so no [L, M] array ever exists, only
[block_q, block_k] tiles. Under the causal mask the loop stops at the diagonal, so blocks above it cost nothing.
A custom VJP stores only the output and the log-sum-exp per row (O(L) memory) and recomputes the tiles in the
backward pass: one loop over key blocks for dQ, one over query blocks for dK and dV.

Additive biases (ALiBi, T5) are read tile by tile from the dense [B or 1, H, L, M] bias the position encoding
computes, and get their gradient (T5's table learns) tile by tile too; the bias array itself is still L x M, so
the memory saving is for models without one (learned, sinusoidal, RoPE, no positions).

The lower-level `forward` and `backward` take the positions of the first query and key (traced values are fine),
so ring attention (ring.py) runs the same tiles on key blocks that arrive from other devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lmjax.models.kernels.base import Call, Kernel, pad_length, segments_or_ones
from lmjax.registry import ATTENTION

BLOCK = 512  # rows per tile on each side; shorter sequences use one tile rounded up to a multiple of 8


def block_size(length: int, block: int = BLOCK) -> int:
  return min(block, -(-length // 8) * 8)


def _tile_mask(q_seg_Bq, kv_seg_Bk, q_pos_q, kv_pos_k, causal: bool):
  """[B, 1, 1, q, k]: same nonzero segment, and with `causal` keys not after the query."""
  mask_Bqk = (q_seg_Bq[:, :, None] == kv_seg_Bk[:, None, :]) & (q_seg_Bq[:, :, None] > 0)
  if causal:
    mask_Bqk = mask_Bqk & (q_pos_q[:, None] >= kv_pos_k[None, :])[None]
  return mask_Bqk[:, None, None]


def _bias_tile(bias_BHLM, i0, j0, bq: int, bk: int, K: int):
  """The [B or 1, K, G, q, k] tile of the bias at query row i0, key column j0."""
  tile = jax.lax.dynamic_slice(bias_BHLM, (0, 0, i0, j0), (bias_BHLM.shape[0], bias_BHLM.shape[1], bq, bk))
  return tile.astype(jnp.float32).reshape(tile.shape[0], K, -1, bq, bk)


def _scores(q_BqKGd, k_BkKd, bias_BHLM, i0, j0, K):
  s_BKGqk = jnp.einsum("BqKGd,BkKd->BKGqk", q_BqKGd, k_BkKd, preferred_element_type=jnp.float32)
  if bias_BHLM is not None:
    s_BKGqk = s_BKGqk + _bias_tile(bias_BHLM, i0, j0, q_BqKGd.shape[1], k_BkKd.shape[1], K)
  return s_BKGqk


def _kv_blocks_needed(i, bq: int, bk: int, nk: int, q_start, kv_start, causal: bool):
  """Key blocks 0..hi-1 can hold a key visible to query block i (keys after its last query are masked)."""
  if not causal:
    return nk
  last_q = q_start + (i + 1) * bq - 1
  return jnp.clip((last_q - kv_start) // bk + 1, 0, nk)


def _first_q_block(j, bq: int, bk: int, nq: int, q_start, kv_start, causal: bool):
  """Query blocks before the result see no key of key block j under the causal mask."""
  if not causal:
    return 0
  first_k = kv_start + j * bk
  return jnp.clip((first_k - q_start) // bq, 0, nq)


def forward(q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, *, causal: bool, q_start=0, kv_start=0,
            bq: int, bk: int):
  """(out [B, L, K, G, d], lse [B, K, G, L]), both float32, of pre-scaled queries; L and M must be multiples of bq
  and bk. Rows that see no key get output 0 and lse -inf."""
  B, L, K, G, d = q_BLKGd.shape
  M = k_BMKd.shape[1]
  nq, nk = L // bq, M // bk

  def q_block(i):
    i0 = i * bq
    q_i = jax.lax.dynamic_slice_in_dim(q_BLKGd, i0, bq, axis=1)
    q_seg = jax.lax.dynamic_slice_in_dim(q_seg_BL, i0, bq, axis=1)
    q_pos = q_start + i0 + jnp.arange(bq)

    def step(j, carry):
      m_BKGq, l_BKGq, acc_BqKGd = carry
      j0 = j * bk
      k_j = jax.lax.dynamic_slice_in_dim(k_BMKd, j0, bk, axis=1)
      v_j = jax.lax.dynamic_slice_in_dim(v_BMKd, j0, bk, axis=1)
      kv_seg = jax.lax.dynamic_slice_in_dim(kv_seg_BM, j0, bk, axis=1)
      s = _scores(q_i, k_j, bias_BHLM, i0, j0, K)
      s = jnp.where(_tile_mask(q_seg, kv_seg, q_pos, kv_start + j0 + jnp.arange(bk), causal), s, -jnp.inf)
      m_new = jnp.maximum(m_BKGq, s.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with nothing visible yet stays at 0
      p = jnp.exp(s - m_safe[..., None])
      correction = jnp.exp(m_BKGq - m_safe)
      l_new = correction * l_BKGq + p.sum(-1)
      pv_BqKGd = jnp.einsum("BKGqk,BkKd->BqKGd", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
      acc_new = acc_BqKGd * jnp.moveaxis(correction, 3, 1)[..., None] + pv_BqKGd
      return m_new, l_new, acc_new

    init = (jnp.full((B, K, G, bq), -jnp.inf, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
            jnp.zeros((B, bq, K, G, d), jnp.float32))
    hi = _kv_blocks_needed(i, bq, bk, nk, q_start, kv_start, causal)
    m, l, acc = jax.lax.fori_loop(0, hi, step, init)
    seen = l > 0
    out = acc / jnp.moveaxis(jnp.where(seen, l, 1.0), 3, 1)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    return out, lse

  out_nBqKGd, lse_nBKGq = jax.lax.map(q_block, jnp.arange(nq))
  out = jnp.moveaxis(out_nBqKGd, 0, 1).reshape(B, L, K, G, d)
  lse = jnp.moveaxis(lse_nBKGq, 0, 3).reshape(B, K, G, L)
  return out, lse


def backward(q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, lse_BKGL, delta_BKGL, dout_BLKGd, *,
             causal: bool, q_start=0, kv_start=0, bq: int, bk: int):
  """(dq, dk, dv, dbias or None) of `forward`, given the rows' final log-sum-exp and delta = sum(dout * out)
  (both over every key the rows see: in ring attention, keys on other devices too). Gradients are float32."""
  B, L, K, G, d = q_BLKGd.shape
  M = k_BMKd.shape[1]
  nq, nk = L // bq, M // bk
  lse_safe = jnp.where(jnp.isfinite(lse_BKGL), lse_BKGL, 0.0)

  def tile(i0, j0):
    """Probabilities and score gradients of one tile."""
    q_i = jax.lax.dynamic_slice_in_dim(q_BLKGd, i0, bq, axis=1)
    do_i = jax.lax.dynamic_slice_in_dim(dout_BLKGd, i0, bq, axis=1)
    q_seg = jax.lax.dynamic_slice_in_dim(q_seg_BL, i0, bq, axis=1)
    lse_i = jax.lax.dynamic_slice_in_dim(lse_safe, i0, bq, axis=3)
    delta_i = jax.lax.dynamic_slice_in_dim(delta_BKGL, i0, bq, axis=3)
    k_j = jax.lax.dynamic_slice_in_dim(k_BMKd, j0, bk, axis=1)
    v_j = jax.lax.dynamic_slice_in_dim(v_BMKd, j0, bk, axis=1)
    kv_seg = jax.lax.dynamic_slice_in_dim(kv_seg_BM, j0, bk, axis=1)
    mask = _tile_mask(q_seg, kv_seg, q_start + i0 + jnp.arange(bq), kv_start + j0 + jnp.arange(bk), causal)
    s = _scores(q_i, k_j, bias_BHLM, i0, j0, K)
    p = jnp.where(mask, jnp.exp(s - lse_i[..., None]), 0.0)
    dp = jnp.einsum("BqKGd,BkKd->BKGqk", do_i, v_j, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_i[..., None])
    return q_i, do_i, k_j, v_j, p, ds

  def dq_block(i):
    def step(j, dq_BqKGd):
      _, _, k_j, _, _, ds = tile(i * bq, j * bk)
      return dq_BqKGd + jnp.einsum("BKGqk,BkKd->BqKGd", ds, k_j, preferred_element_type=jnp.float32)
    hi = _kv_blocks_needed(i, bq, bk, nk, q_start, kv_start, causal)
    return jax.lax.fori_loop(0, hi, step, jnp.zeros((B, bq, K, G, d), jnp.float32))

  def dkv_block(j):
    def step(i, carry):
      dk_BkKd, dv_BkKd, dbias_col = carry
      q_i, do_i, _, _, p, ds = tile(i * bq, j * bk)
      dv_BkKd = dv_BkKd + jnp.einsum("BKGqk,BqKGd->BkKd", p.astype(do_i.dtype), do_i,
                                     preferred_element_type=jnp.float32)
      dk_BkKd = dk_BkKd + jnp.einsum("BKGqk,BqKGd->BkKd", ds, q_i, preferred_element_type=jnp.float32)
      if dbias_col is not None:
        ds_tile = ds.reshape(B, K * G, bq, bk)
        if dbias_col.shape[0] == 1:
          ds_tile = ds_tile.sum(0, keepdims=True)
        dbias_col = jax.lax.dynamic_update_slice_in_dim(dbias_col, ds_tile, i * bq, axis=2)
      return dk_BkKd, dv_BkKd, dbias_col

    dbias_col = None if bias_BHLM is None else jnp.zeros((bias_BHLM.shape[0], K * G, L, bk), jnp.float32)
    lo = _first_q_block(j, bq, bk, nq, q_start, kv_start, causal)
    zeros = jnp.zeros((B, bk, K, d), jnp.float32)
    return jax.lax.fori_loop(lo, nq, step, (zeros, zeros, dbias_col))

  dq = jnp.moveaxis(jax.lax.map(dq_block, jnp.arange(nq)), 0, 1).reshape(B, L, K, G, d)
  dk_nBkKd, dv_nBkKd, dbias_nBHLk = jax.lax.map(dkv_block, jnp.arange(nk))
  dk = jnp.moveaxis(dk_nBkKd, 0, 1).reshape(B, M, K, d)
  dv = jnp.moveaxis(dv_nBkKd, 0, 1).reshape(B, M, K, d)
  dbias = None
  if bias_BHLM is not None:
    dbias = jnp.moveaxis(dbias_nBHLk, 0, 3).reshape(bias_BHLM.shape[0], K * G, L, M)
  return dq, dk, dv, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _flash(q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, causal: bool, bq: int, bk: int):
  out = forward(q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, causal=causal, bq=bq, bk=bk)[0]
  return out.astype(v_BMKd.dtype)


def _flash_fwd(q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, causal, bq, bk):
  out, lse = forward(q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, causal=causal, bq=bq, bk=bk)
  out = out.astype(v_BMKd.dtype)
  return out, (q_BLKGd, k_BMKd, v_BMKd, q_seg_BL, kv_seg_BM, bias_BHLM, out, lse)


def _flash_bwd(causal, bq, bk, residuals, dout):
  q, k, v, q_seg, kv_seg, bias, out, lse = residuals
  delta = jnp.einsum("BLKGd,BLKGd->BKGL", dout.astype(jnp.float32), out.astype(jnp.float32))
  dq, dk, dv, dbias = backward(q, k, v, q_seg, kv_seg, bias, lse, delta, dout, causal=causal, bq=bq, bk=bk)
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, dbias


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BLHd, k_BLKd, v_BLKd, segment_ids_BL=None, bias_BHLM=None, *, causal: bool,
                    block: int = BLOCK) -> jax.Array:
  """Self-attention of [B, L, H, d] queries over [B, L, K, d] keys and values, equal to the reference."""
  B, L, H, d = q_BLHd.shape
  K = k_BLKd.shape[2]
  b = block_size(L, block)
  seg_BL = pad_length(segments_or_ones(segment_ids_BL, B, L), b)
  pad = lambda x: pad_length(x, b)
  q_BLKGd = pad(q_BLHd * d ** -0.5).reshape(B, -1, K, H // K, d)
  if bias_BHLM is not None:
    bias_BHLM = pad_length(pad_length(bias_BHLM, b, axis=2), b, axis=3)
  out = _flash(q_BLKGd, pad(k_BLKd), pad(v_BLKd), seg_BL, seg_BL, bias_BHLM, causal, b, b)
  return out.reshape(B, -1, H, d)[:, :L]


def attend(call: Call, causal: bool):
  return flash_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, call.segment_ids_BL, call.bias_BHLM,
                         causal=causal)


FLASH = ATTENTION.register("flash")(Kernel(
    "flash", "blockwise online-softmax attention in plain JAX with a recomputing backward pass: O(L) memory on "
    "any backend", attend, biases=True))
