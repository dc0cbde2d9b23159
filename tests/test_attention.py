"""Attention is softmax(QK^T/sqrt(d))V, respects causality, and keeps packed documents apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmjax.models import model_config
from lmjax.models import build_model
from lmjax.models.attention import attention_mask, fused_attention, reference_attention

CFG = model_config(vocab_size=50, num_layers=2, num_heads=4, d_model=32, mlp_dim=64, max_len=16)


def naive_attention(q, k, v, mask):
  """Loops over batch, head and query in float64: the textbook definition."""
  B, L, H, d = q.shape
  out = np.zeros((B, L, H, d))
  for b in range(B):
    for h in range(H):
      for i in range(L):
        allowed = mask[b, 0, i]
        if not allowed.any():
          continue
        scores = np.array([q[b, i, h] @ k[b, j, h] / np.sqrt(d) for j in range(k.shape[1])])
        scores = np.where(allowed, scores, -np.inf)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        out[b, i, h] = (w[:, None] * v[b, :, h]).sum(0)
  return out


def random_qkv(seed, B=2, L=7, H=3, d=5):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(B, L, H, d)).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("causal", [True, False])
def test_reference_attention_matches_naive(causal):
  q, k, v = random_qkv(0)
  segments = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 0, 0]])
  mask = np.asarray(attention_mask(jnp.asarray(segments), causal=causal))
  got = np.asarray(reference_attention(q, k, v, mask))
  want = naive_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask)
  valid = segments > 0
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=1e-5)


def test_fused_attention_matches_reference():
  q, k, v = random_qkv(1)
  segments = jnp.asarray([[1, 1, 2, 2, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1]])
  mask = attention_mask(segments, causal=True)
  np.testing.assert_allclose(np.asarray(fused_attention(q, k, v, mask)),
                             np.asarray(reference_attention(q, k, v, mask)), atol=1e-5, rtol=1e-5)


def test_attention_mask_is_causal_and_per_document():
  mask = np.asarray(attention_mask(jnp.asarray([[1, 1, 2, 2, 0]]), causal=True))[0, 0]
  expected = np.array([[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],
                       [0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(mask, expected)


def test_no_gradient_flows_from_future_tokens():
  cfg = CFG.replace(tie_embeddings=False)
  model = build_model(cfg)
  L, t = 12, 5
  # Ids 0..9 appear only at positions <= t, ids 40..49 only after t.
  tokens = jnp.asarray([np.r_[np.arange(t + 1) % 10, 40 + np.arange(L - t - 1) % 10]], jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens)["params"])

  def grad_of_embeddings(select):
    def f(embedding):
      p = dict(params, embed={"embedding": embedding})
      return select(model.apply({"params": p}, tokens)).sum()
    return np.asarray(jax.grad(f)(params["embed"]["embedding"]))

  past = grad_of_embeddings(lambda logits: logits[:, : t + 1])
  future_rows = np.arange(40, 50)
  assert np.all(past[future_rows] == 0.0), "a logit at position <= t depends on a later token"
  later = grad_of_embeddings(lambda logits: logits[:, t + 1:])
  assert np.abs(later[future_rows]).sum() > 0.0  # the check above is not vacuous


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_packed_documents_do_not_attend_across(position):
  model = build_model(CFG.replace(position=position))
  rng = np.random.default_rng(3)
  doc_a, doc_b = rng.integers(0, 50, 6), rng.integers(0, 50, 9)
  packed = jnp.asarray([np.r_[doc_a, doc_b]], jnp.int32)
  segments = jnp.asarray([[1] * 6 + [2] * 9], jnp.int32)
  positions = jnp.asarray([np.r_[np.arange(6), np.arange(9)]], jnp.int32)
  params = model.init(jax.random.PRNGKey(1), packed)["params"]
  packed_logits = model.apply({"params": params}, packed, positions_BL=positions, segment_ids_BL=segments)
  alone_b = model.apply({"params": params}, jnp.asarray([doc_b], jnp.int32))
  alone_a = model.apply({"params": params}, jnp.asarray([doc_a], jnp.int32))
  np.testing.assert_allclose(np.asarray(packed_logits[0, 6:]), np.asarray(alone_b[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(packed_logits[0, :6]), np.asarray(alone_a[0]), atol=1e-5)


def test_post_norm_and_untied_variants_run_and_differ():
  tokens = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
  outs = []
  for variant in (CFG, CFG.replace(pre_norm=False), CFG.replace(tie_embeddings=False)):
    model = build_model(variant)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    logits = np.asarray(model.apply({"params": params}, tokens))
    assert logits.shape == (1, 4, 50) and np.isfinite(logits).all()
    outs.append(logits)
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2])
