"""Every attention implementation equals the reference, in outputs and gradients, on causal, packed, padded and
grouped-query inputs; ring attention equals one device on 8 simulated devices; and a combination an
implementation cannot do is a one-line config error naming the field.

The Pallas kernels (splash for TPU, the Triton kernel for GPU) run here through their `interpret=True` mode, which
evaluates the kernel body with XLA on the CPU. cuDNN has no interpret mode (it is a library call that only a GPU can
run): its adapter's handling of masks, causality, biases and grouped heads is run through the XLA path of the same
jax.nn.dot_product_attention call instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax import programs, sharding
from lmjax.config import ConfigError, base_config
from lmjax.config_validation import validate
from lmjax.models import kernels
from lmjax.models.attention import attention_mask, choose_kernel, reference_attention
from lmjax.models.kernels import auto
from lmjax.models.kernels.cudnn import cudnn_attention
from lmjax.models.kernels.ring import ring_attention
from lmjax.registry import ATTENTION
from lmjax.state import create_train_state

B, L, H, d = 2, 40, 4, 8  # L is no multiple of any block size: every kernel pads


def inputs(kv_heads, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, L, H, d)).astype(np.float32)
  k, v = (rng.normal(size=(B, L, kv_heads, d)).astype(np.float32) for _ in range(2))
  # Row 0: three packed documents; row 1: one document and 7 tokens of padding (segment 0).
  segments = np.ones((B, L), np.int32)
  segments[0, 11:25], segments[0, 25:] = 2, 3
  segments[1, -7:] = 0
  weights = rng.normal(size=(B, L, H, d)).astype(np.float32)
  return q, k, v, jnp.asarray(segments), weights


def masked_loss(attend, segments, weights):
  """A loss over the real rows only: padding rows' outputs are unspecified (base.py)."""
  real = (np.asarray(segments) > 0)[:, :, None, None]
  return lambda q, k, v, *bias: (attend(q, k, v, *bias) * weights * real).sum()


def assert_matches_reference(attend, *, causal, kv_heads, bias=False, atol=2e-5):
  q, k, v, segments, weights = inputs(kv_heads)
  mask = attention_mask(segments, causal=causal)
  args = (q, k, v)
  if bias:
    args += (np.random.default_rng(1).normal(size=(1, H, L, L)).astype(np.float32),)
  reference = lambda q, k, v, *b: reference_attention(q, k, v, mask, bias_BHLM=b[0] if b else None)
  call = lambda q, k, v, *b: attend(kernels.Call(q, k, v, segments, mask, b[0] if b else None), causal)
  real = np.asarray(segments) > 0
  argnums = tuple(range(len(args)))
  # Jitted: one compilation each, instead of one per operation.
  outputs_and_grads = lambda f: jax.jit(lambda *a: (f(*a), jax.grad(masked_loss(f, segments, weights), argnums)(*a)))
  want_out, want = outputs_and_grads(reference)(*args)
  got_out, got = outputs_and_grads(call)(*args)
  np.testing.assert_allclose(np.asarray(got_out)[real], np.asarray(want_out)[real], atol=atol)
  for name, a, b in zip(("dq", "dk", "dv", "dbias"), got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, err_msg=name)


CASES = [pytest.param(True, 2, id="causal-packed-padded-gqa"), pytest.param(False, 4, id="bidirectional-padded")]


@pytest.mark.parametrize("causal,kv_heads", CASES)
@pytest.mark.parametrize("impl", ["jax", "flash", "ring"])
def test_plain_jax_implementations_equal_the_reference(impl, causal, kv_heads):
  assert_matches_reference(ATTENTION.get(impl).attend, causal=causal, kv_heads=kv_heads)


@pytest.mark.parametrize("causal,kv_heads", CASES)
@pytest.mark.parametrize("impl", ["splash", "pallas_gpu"])
def test_pallas_kernels_equal_the_reference_in_interpret_mode(impl, causal, kv_heads):
  kernel = ATTENTION.get(impl)
  assert kernel.interpretable and jax.default_backend() not in kernel.platforms  # so this runs interpret=True
  assert_matches_reference(kernel.attend, causal=causal, kv_heads=kv_heads)


@pytest.mark.parametrize("causal,kv_heads", CASES)
def test_cudnn_adapter_equals_the_reference_through_the_xla_path(causal, kv_heads):
  assert_matches_reference(lambda call, c: cudnn_attention(call, c, implementation="xla"), causal=causal,
                           kv_heads=kv_heads)


@pytest.mark.parametrize("impl", ["flash", "cudnn"])
def test_position_biases_and_their_gradient(impl):
  attend = ATTENTION.get(impl).attend if impl == "flash" else (
      lambda call, c: cudnn_attention(call, c, implementation="xla"))
  assert_matches_reference(attend, causal=True, kv_heads=2, bias=True)


def test_flash_with_several_tiles_skips_blocks_above_the_diagonal_and_stays_equal():
  from lmjax.models.kernels.flash import flash_attention  # pylint: disable=import-outside-toplevel
  attend = lambda call, causal: flash_attention(call.q_BLHd, call.k_BLKd, call.v_BLKd, call.segment_ids_BL,
                                                call.bias_BHLM, causal=causal, block=16)
  assert_matches_reference(attend, causal=True, kv_heads=2, bias=True)
  assert_matches_reference(attend, causal=False, kv_heads=1)


def test_flash_outputs_are_finite_on_rows_that_see_nothing():
  from lmjax.models.kernels.flash import flash_attention  # pylint: disable=import-outside-toplevel
  q, k, v, _, _ = inputs(2)
  attend = lambda q: flash_attention(q, k, v, jnp.zeros((B, L), jnp.int32), causal=True)
  out, grads = jax.jit(lambda q: (attend(q), jax.grad(lambda q: attend(q).sum())(q)))(q)
  assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize("causal", [True, False])
def test_ring_attention_on_eight_devices_equals_one_device(causal):
  """The kernel alone under a mesh whose sequence axis has 8 devices: each holds 5 of the 40 positions."""
  c = base_config().mesh
  c.update(data=1, sequence=8)
  mesh = sharding.make_mesh(c)
  q, k, v, segments, weights = inputs(2)
  mask = attention_mask(segments, causal=causal)
  loss = masked_loss(lambda q, k, v: ring_attention(q, k, v, segments, causal=causal), segments, weights)
  want = jax.grad(masked_loss(lambda q, k, v: reference_attention(q, k, v, mask), segments, weights),
                  (0, 1, 2))(q, k, v)
  with sharding.activate(mesh, sharding.logical_rules(c)):
    got = jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def small_config(**fields):
  c = base_config()
  c.model.update(num_layers=1, num_heads=4, num_kv_heads=2, d_model=32, mlp_dim=64, max_len=16)
  c.data.seq_len = 16
  c.train.update(batch_size=8, num_steps=10)
  c.optim.update(learning_rate=1e-2, warmup_steps=0)
  for key, value in fields.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def packed_batch(batch=8, length=16, seed=0):
  rng = np.random.default_rng(seed)
  cut = rng.integers(1, length, (1, batch, 1))
  ids = np.arange(length)[None, None]
  return {"inputs": rng.integers(0, 64, (1, batch, length), dtype=np.int32),
          "targets": rng.integers(0, 64, (1, batch, length), dtype=np.int32),
          "segment_ids": np.where(ids < cut, 1, 2).astype(np.int32),
          "positions": np.where(ids < cut, ids, ids - cut).astype(np.int32),
          "loss_mask": (rng.random((1, batch, length)) < 0.8).astype(np.float32)}


def one_step(config, devices):
  progs = programs.build_without_data(config, 64, devices=devices)
  with sharding.activate(progs.mesh, progs.rules):
    state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                               progs.state_shardings)
    state, metrics = progs.train_fn(state, sharding.global_batch(packed_batch(), progs.mesh, progs.train_batch_spec))
  return float(metrics["loss"][0]), float(metrics["grad_norm"][0]), jax.device_get(state.params)


@pytest.mark.slow
def test_a_train_step_with_context_parallelism_equals_one_device():
  """GPT with packed documents, mesh.sequence=8 (2 positions per device) against the reference on one device."""
  loss, norm, params = one_step(small_config(**{"model.attention_impl": "xla"}), jax.devices()[:1])
  config = small_config(**{"model.attention_impl": "auto", "mesh.data": 1, "mesh.sequence": 8})
  validate(config)
  ring_loss, ring_norm, ring_params = one_step(config, jax.devices())
  np.testing.assert_allclose(ring_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(ring_norm, norm, rtol=1e-4)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ring_params), jax.tree_util.tree_leaves(params)):
    name = jax.tree_util.keystr(path)
    a, b = np.asarray(a), np.asarray(b)
    if name.endswith("['kv']['bias']"):
      # The key bias gets no gradient in exact arithmetic (softmax ignores a shift shared by every key); Adam's
      # first step turns its rounding noise (~1e-12) into moves of ~1e-5 in either direction. The value bias is exact.
      np.testing.assert_allclose(a[0], b[0], atol=1e-4, err_msg=name)
      a, b = a[1], b[1]
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


# --- what `auto` picks, and what the config refuses ----------------------------------------------------------------

@pytest.mark.parametrize("needs,platform,want", [
    (kernels.Needs(dtype="bfloat16"), "gpu", "cudnn"),
    (kernels.Needs(dtype="bfloat16", bias=True), "gpu", "cudnn"),
    (kernels.Needs(dtype="float32"), "gpu", "xla"),
    (kernels.Needs(), "tpu", "splash"),
    (kernels.Needs(bias=True), "tpu", "xla"),
    (kernels.Needs(dtype="bfloat16", dropout=True), "gpu", "xla"),
    (kernels.Needs(probs=True), "tpu", "xla"),
    (kernels.Needs(sequence_shards=4), "cpu", "ring"),
    (kernels.Needs(), "cpu", "xla"),
])
def test_auto_picks_per_platform_and_model(needs, platform, want):
  assert auto.choose(needs, platform)[0] == want
  assert choose_kernel("auto", needs, platform).name == want


@pytest.mark.parametrize("fields,field,words", [
    ({"model.attention_impl": "splash", "model.position": "alibi"}, "model.attention_impl", "attention bias"),
    ({"model.attention_impl": "ring", "model.position": "t5"}, "model.attention_impl", "attention bias"),
    ({"model.attention_impl": "cudnn"}, "model.attention_impl", "bfloat16 or float16"),
    ({"model.attention_impl": "flash", "model.attention_dropout": 0.1}, "model.attention_impl", "dropout"),
    ({"model.attention_impl": "xla", "mesh.sequence": 2, "mesh.data": 1}, "model.attention_impl", "mesh.sequence"),
    ({"model.attention_impl": "auto", "model.position": "alibi", "mesh.sequence": 2}, "model.attention_impl",
     "runs 'ring'"),
    ({"mesh.sequence": 3}, "data.seq_len", "multiple of 3"),
    ({"model.attention_impl": "fash"}, "model.attention_impl", "did you mean 'flash'"),
])
def test_combinations_an_implementation_cannot_do_are_one_line_errors(fields, field, words):
  with pytest.raises(ConfigError, match=f"config.{field}") as error:
    validate(small_config(**fields))
  assert words in str(error.value) and "\n" not in str(error.value)


def test_a_kernel_for_another_platform_is_refused_at_trace_time_with_the_field():
  with pytest.raises(ConfigError, match=r"config.model.attention_impl='cudnn' .*runs on gpu"):
    choose_kernel("cudnn", kernels.Needs(dtype="bfloat16"), "cpu")


def test_runs_that_recorded_jax_still_validate():
  validate(small_config(**{"model.attention_impl": "jax", "model.position": "alibi",
                           "model.attention_dropout": 0.1}))
