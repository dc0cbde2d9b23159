"""Position encodings (rotary, ALiBi, T5 bias), gated MLPs and grouped-query attention, checked against their
definitions, against packing, causality and the plain multi-head path."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmjax.config import ConfigError, base_config

from lmjax.config_validation import validate
from lmjax.models import model_config
from lmjax.models import build_model
from lmjax.models.attention import attention_mask, fused_attention, reference_attention
from lmjax.models.positions.alibi import alibi_bias, alibi_slopes
from lmjax.models.positions.rope import apply_rope
from lmjax.models.positions.t5 import relative_position_bucket

CFG = model_config(vocab_size=50, num_layers=2, num_heads=4, d_model=32, mlp_dim=64, max_len=16)
RELATIVE_KINDS = ["rope", "alibi", "t5", "none"]


def init(cfg, tokens_BL):
  model = build_model(cfg)
  return model, model.init(jax.random.PRNGKey(0), tokens_BL)["params"]


def count(params):
  return sum(np.size(x) for x in jax.tree_util.tree_leaves(nn.meta.unbox(params)))


# --- rotary ---------------------------------------------------------------------------------------------------

def test_rope_logits_depend_only_on_relative_offset():
  rng = np.random.default_rng(0)
  q_BLHd, k_BLHd = (jnp.asarray(rng.normal(size=(1, 6, 2, 8)), jnp.float32) for _ in range(2))
  positions_BL = jnp.arange(6)[None]

  def logits(shift):
    q = apply_rope(q_BLHd, positions_BL + shift)
    k = apply_rope(k_BLHd, positions_BL + shift)
    return np.asarray(jnp.einsum("BLHd,BMHd->BHLM", q, k))

  base = logits(0)
  np.testing.assert_allclose(logits(37), base, atol=1e-4)
  np.testing.assert_allclose(logits(1000), base, atol=1e-3)
  # Not vacuous: rotary changes the logits compared with no rotation at all.
  assert not np.allclose(base, np.asarray(jnp.einsum("BLHd,BMHd->BHLM", q_BLHd, k_BLHd)), atol=1e-3)


def test_rope_is_rotate_half():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 1, 4)), jnp.float32)
  got = np.asarray(apply_rope(x, jnp.asarray([[0, 1, 2]]), base=100.0))
  theta = np.array([1.0, 100.0 ** -0.5])
  want = np.zeros((3, 4))
  for p in range(3):
    x1, x2 = np.asarray(x[0, p, 0, :2]), np.asarray(x[0, p, 0, 2:])
    c, s = np.cos(p * theta), np.sin(p * theta)
    want[p] = np.r_[x1 * c - x2 * s, x2 * c + x1 * s]
  np.testing.assert_allclose(got[0, :, 0], want, atol=1e-6)


# --- ALiBi ----------------------------------------------------------------------------------------------------

def reference_slopes(n):
  """The ALiBi paper's get_slopes, verbatim in structure."""
  def get_slopes_power_of_2(n):
    start = 2 ** (-2 ** -(math.log2(n) - 3))
    ratio = start
    return [start * ratio ** i for i in range(n)]
  if math.log2(n).is_integer():
    return get_slopes_power_of_2(n)
  closest_power_of_2 = 2 ** math.floor(math.log2(n))
  return (get_slopes_power_of_2(closest_power_of_2)
          + reference_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def test_alibi_slopes():
  np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
  six = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
  np.testing.assert_allclose(reference_slopes(6), six, rtol=1e-12)
  np.testing.assert_allclose(alibi_slopes(6), six, rtol=1e-6)
  for n in (1, 2, 3, 5, 12, 20):
    np.testing.assert_allclose(alibi_slopes(n), reference_slopes(n), rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
  positions_BL = jnp.asarray([[0, 1, 2, 0, 1]])
  bias = np.asarray(alibi_bias(positions_BL, 6))
  slopes = np.asarray(reference_slopes(6))
  p, doc = np.asarray(positions_BL[0]), np.array([1, 1, 1, 2, 2])
  for h in range(6):
    for i in range(5):
      for j in np.flatnonzero((doc == doc[i]) & (np.arange(5) <= i)):  # the keys a causal query may see
        assert bias[0, h, i, j] == pytest.approx(slopes[h] * (p[j] - p[i]), rel=1e-6)


# --- T5 buckets -----------------------------------------------------------------------------------------------

def t5_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
  """T5's _relative_position_bucket (mesh_tensorflow / HF transformers), in numpy."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore", invalid="ignore"):
    val_if_large = max_exact + (np.log(n.astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
                                * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = np.minimum(val_if_large, num_buckets - 1)
  return ret + np.where(is_small, n, val_if_large)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20)])
def test_t5_buckets_match_reference(bidirectional, num_buckets, max_distance):
  relative = np.r_[np.arange(-300, 301), -1000, 1000, -129, 129, -127, 127].astype(np.int32)
  got = np.asarray(relative_position_bucket(jnp.asarray(relative), bidirectional=bidirectional,
                                            num_buckets=num_buckets, max_distance=max_distance))
  want = t5_bucket(relative, bidirectional, num_buckets, max_distance)
  np.testing.assert_array_equal(got, want)
  assert got.min() >= 0 and got.max() < num_buckets


def test_t5_table_is_shared_by_all_layers():
  model, params = init(CFG.replace(position="t5"), jnp.zeros((1, 4), jnp.int32))
  assert params["relative_bias"]["rel_embedding"].value.shape == (32, CFG.num_heads)
  assert not any("relative" in k for k in params["layer_0"]["attn"])
  assert "positions" not in params


# --- packing and causality for every position kind --------------------------------------------------------------

@pytest.mark.parametrize("position", RELATIVE_KINDS)
def test_packed_documents_are_independent(position):
  cfg = CFG.replace(position=position)
  rng = np.random.default_rng(3)
  doc_a, doc_b = rng.integers(0, 50, 6), rng.integers(0, 50, 9)
  packed = jnp.asarray([np.r_[doc_a, doc_b]], jnp.int32)
  segments = jnp.asarray([[1] * 6 + [2] * 9], jnp.int32)
  positions = jnp.asarray([np.r_[np.arange(6), np.arange(9)]], jnp.int32)
  model, params = init(cfg, packed)
  if position == "t5":  # the zero-mean init is nearly flat: make the bias matter
    table = params["relative_bias"]["rel_embedding"]
    params["relative_bias"]["rel_embedding"] = table.replace_boxed(
        jnp.asarray(rng.normal(size=table.value.shape), jnp.float32))
  packed_logits = model.apply({"params": params}, packed, positions_BL=positions, segment_ids_BL=segments)
  alone_a = model.apply({"params": params}, jnp.asarray([doc_a], jnp.int32))
  alone_b = model.apply({"params": params}, jnp.asarray([doc_b], jnp.int32))
  np.testing.assert_allclose(np.asarray(packed_logits[0, :6]), np.asarray(alone_a[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(packed_logits[0, 6:]), np.asarray(alone_b[0]), atol=1e-5)


@pytest.mark.parametrize("position", RELATIVE_KINDS)
def test_causal(position):
  cfg = CFG.replace(position=position, tie_embeddings=False)
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, 50, (1, 10)), jnp.int32)
  model, params = init(cfg, tokens)
  changed = tokens.at[0, 6:].set((tokens[0, 6:] + 1) % 50)
  before = np.asarray(model.apply({"params": params}, tokens))
  after = np.asarray(model.apply({"params": params}, changed))
  np.testing.assert_array_equal(before[0, :6], after[0, :6])
  assert not np.allclose(before[0, 6:], after[0, 6:])


def test_relative_positions_run_past_max_len():
  tokens = jnp.zeros((1, 3 * CFG.max_len), jnp.int32)
  for position in RELATIVE_KINDS:
    model, params = init(CFG.replace(position=position), tokens)
    assert np.isfinite(np.asarray(model.apply({"params": params}, tokens))).all()


def test_position_kinds_differ():
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 50, (1, 8)), jnp.int32)
  outs = {}
  for position in RELATIVE_KINDS:
    model, params = init(CFG.replace(position=position), tokens)
    outs[position] = np.asarray(model.apply({"params": params}, tokens))
  assert not np.allclose(outs["rope"], outs["none"], atol=1e-6)
  assert not np.allclose(outs["alibi"], outs["none"], atol=1e-6)


# --- attention with bias and grouped heads ---------------------------------------------------------------------

def test_reference_attention_adds_bias_before_softmax():
  rng = np.random.default_rng(6)
  q, k, v = (rng.normal(size=(2, 5, 3, 4)).astype(np.float32) for _ in range(3))
  bias = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
  mask = attention_mask(jnp.asarray([[1, 1, 1, 2, 2], [1, 1, 1, 1, 1]]), causal=True)
  got = np.asarray(reference_attention(q, k, v, mask, bias_BHLM=bias))
  scores = np.einsum("blhd,bmhd->bhlm", q, k) / 2.0 + bias
  scores = np.where(np.asarray(mask), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(got, np.einsum("bhlm,bmhd->blhd", probs, v), atol=1e-5)


def test_grouped_attention_equals_repeated_kv_heads():
  rng = np.random.default_rng(7)
  q = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  k, v = (rng.normal(size=(2, 5, 2, 4)).astype(np.float32) for _ in range(2))
  mask = attention_mask(jnp.asarray([[1, 1, 2, 2, 2], [1, 1, 1, 1, 0]]), causal=True)
  want = reference_attention(q, np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2), mask)
  np.testing.assert_allclose(np.asarray(reference_attention(q, k, v, mask)), np.asarray(want), atol=1e-6)
  np.testing.assert_allclose(np.asarray(fused_attention(q, k, v, mask))[:, :4], np.asarray(want)[:, :4], atol=1e-5)


def test_gqa_with_all_kv_heads_is_mha():
  tokens = jnp.asarray(np.random.default_rng(8).integers(0, 50, (2, 7)), jnp.int32)
  model, params = init(CFG, tokens)
  gqa = build_model(CFG.replace(num_kv_heads=CFG.num_heads))
  assert jax.tree_util.tree_structure(gqa.init(jax.random.PRNGKey(0), tokens)["params"]) == \
      jax.tree_util.tree_structure(params)
  np.testing.assert_array_equal(np.asarray(gqa.apply({"params": params}, tokens)),
                                np.asarray(model.apply({"params": params}, tokens)))


@pytest.mark.parametrize("impl", ["xla", "jax"])
def test_grouped_and_multi_query_run_and_are_smaller(impl):
  tokens = jnp.asarray(np.random.default_rng(9).integers(0, 50, (2, 7)), jnp.int32)
  _, mha_params = init(CFG, tokens)
  sizes = []
  for kv in (2, 1):
    model, params = init(CFG.replace(num_kv_heads=kv, attention_impl=impl), tokens)
    logits = np.asarray(model.apply({"params": params}, tokens))
    assert logits.shape == (2, 7, 50) and np.isfinite(logits).all()
    sizes.append(count(params))
  assert count(mha_params) > sizes[0] > sizes[1]
  # MQA per layer: q (D*D + D) and one shared k, v head (2*(D*d + d)) instead of 3*(D*D + D).
  D, d = CFG.d_model, CFG.head_dim
  assert count(mha_params) - sizes[1] == CFG.num_layers * 2 * (D * D + D - D * d - d)


def test_grouped_query_keeps_packed_documents_independent():
  cfg = CFG.replace(num_kv_heads=2, position="rope")
  rng = np.random.default_rng(10)
  doc_a, doc_b = rng.integers(0, 50, 5), rng.integers(0, 50, 4)
  model, params = init(cfg, jnp.zeros((1, 9), jnp.int32))
  packed = model.apply({"params": params}, jnp.asarray([np.r_[doc_a, doc_b]], jnp.int32),
                       positions_BL=jnp.asarray([np.r_[np.arange(5), np.arange(4)]], jnp.int32),
                       segment_ids_BL=jnp.asarray([[1] * 5 + [2] * 4], jnp.int32))
  alone_b = model.apply({"params": params}, jnp.asarray([doc_b], jnp.int32))
  np.testing.assert_allclose(np.asarray(packed[0, 5:]), np.asarray(alone_b[0]), atol=1e-5)


# --- gated MLPs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_gated_mlp_runs_and_differs_from_gelu(activation):
  tokens = jnp.asarray([[1, 2, 3, 4, 5]], jnp.int32)
  _, gelu_params = init(CFG, tokens)
  model, params = init(CFG.replace(activation=activation), tokens)
  assert set(params["layer_0"]["mlp"]) == {"wi_gate", "wi_up", "wo"}
  assert count(params) - count(gelu_params) == CFG.num_layers * (CFG.d_model * CFG.mlp_dim + CFG.mlp_dim)
  logits = np.asarray(model.apply({"params": params}, tokens))
  gelu = np.asarray(build_model(CFG).apply({"params": gelu_params}, tokens))
  assert np.isfinite(logits).all() and not np.allclose(logits, gelu, atol=1e-6)


def test_swiglu_is_silu_gate_times_up():
  from lmjax.models.layers import Mlp
  cfg = CFG.replace(activation="swiglu", use_bias=False)
  x = jnp.asarray(np.random.default_rng(11).normal(size=(2, 3, CFG.d_model)), jnp.float32)
  mlp = Mlp(cfg, 0.02)
  p = nn.meta.unbox(mlp.init(jax.random.PRNGKey(0), x, True)["params"])
  want = (jax.nn.silu(x @ p["wi_gate"]["kernel"]) * (x @ p["wi_up"]["kernel"])) @ p["wo"]["kernel"]
  np.testing.assert_allclose(np.asarray(mlp.apply({"params": p}, x, True)), np.asarray(want), atol=1e-5)


# --- config ---------------------------------------------------------------------------------------------------

def one_line_error(c):
  with pytest.raises(ConfigError) as e:
    validate(c)
  message = str(e.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("kv", [3, 5, -1])
def test_bad_num_kv_heads_is_rejected(kv):
  c = base_config()
  c.model.num_heads = 4
  c.model.num_kv_heads = kv
  assert f"config.model.num_kv_heads={kv!r}" in one_line_error(c)


def test_unknown_position_is_rejected():
  c = base_config()
  c.model.position = "xpos"
  message = one_line_error(c)
  assert "config.model.position='xpos'" in message and "rope" in message


@pytest.mark.parametrize("position", ["rope", "alibi", "t5", "none", "sinusoidal"])
def test_only_learned_positions_are_limited_by_max_len(position):
  c = base_config()
  c.model.max_len = 8
  c.data.seq_len = 64
  c.model.position = position
  validate(c)
  c.model.position = "learned"
  assert "config.data.seq_len" in one_line_error(c)


def test_new_fields_validate():
  c = base_config()
  c.model.position, c.model.num_kv_heads, c.model.activation = "rope", 2, "swiglu"
  validate(c)
  c.model.num_kv_heads = 1
  validate(c)
  c.model.d_model, c.model.num_heads, c.model.num_kv_heads = 12, 4, 0  # head width 3: rotary needs pairs
  assert "config.model.d_model" in one_line_error(c)
  c = base_config()
  c.model.relative_max_distance = 8
  assert "config.model.relative_max_distance" in one_line_error(c)


def test_sinusoidal_positions_follow_the_formula_at_the_embedding_scale():
  """PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...), scaled so each feature's RMS is init_std."""
  from lmjax.models.positions.sinusoidal import SinusoidalPositions
  cfg = model_config(vocab_size=10, num_layers=1, num_heads=2, d_model=8, mlp_dim=16, max_len=32,
                    position="sinusoidal", init_std=0.02)
  positions_BL = jnp.arange(32)[None]
  got_LD = np.asarray(SinusoidalPositions(cfg).apply({}, positions_BL, method="embedding"))[0]
  p, i = np.arange(32)[:, None], np.arange(4)[None]
  angle = p / 10000.0 ** (2 * i / 8)
  expected_LD = np.zeros((32, 8))
  expected_LD[:, 0::2], expected_LD[:, 1::2] = np.sin(angle), np.cos(angle)
  np.testing.assert_allclose(got_LD, expected_LD * 0.02 * math.sqrt(2.0), atol=1e-7)
  # Over many positions each feature's RMS is about init_std, the scale of the token embeddings it is added to.
  np.testing.assert_allclose(np.sqrt((got_LD**2).mean()), 0.02, rtol=0.05)
