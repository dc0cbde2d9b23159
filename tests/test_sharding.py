"""Sharded training on 8 simulated CPU devices equals the single-device run, for every mesh layout.

Also: parameters land with the declared shardings, gradient accumulation equals the large batch, remat and
mixed precision change memory and speed but not the math (within float tolerance), and a mesh that does not fit
the devices or the batch is refused before anything compiles.
"""

import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmjax import programs, sharding, train
from lmjax.config import ConfigError, base_config
from lmjax.state import create_train_state

VOCAB = 64


def small_config(mesh=None, **model):
  c = base_config()
  c.model.update(num_layers=2, num_heads=4, d_model=32, mlp_dim=64, max_len=16)
  c.model.update(model)
  c.data.seq_len = 16
  c.train.update(batch_size=8, num_steps=10)
  c.optim.update(learning_rate=1e-2, warmup_steps=0)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  c.mesh.update(mesh or {})
  return c


def random_batches(steps, batch=8, length=16, seed=0):
  """One random batch repeated for `steps` calls ([S, B, L]), with two documents per row and an uneven loss mask
  as packing produces. Repeating it lets a few steps visibly lower the loss."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(0, VOCAB, (1, batch, length), dtype=np.int32)
  cut = rng.integers(1, length, (1, batch, 1))
  ids = np.arange(length)[None, None]
  segment_ids = np.where(ids < cut, 1, 2).astype(np.int32)
  positions = np.where(ids < cut, ids, ids - cut).astype(np.int32)
  loss_mask = (rng.random((1, batch, length)) < 0.8).astype(np.float32)
  targets = rng.integers(0, VOCAB, (1, batch, length), dtype=np.int32)
  one = {"inputs": inputs, "targets": targets, "segment_ids": segment_ids, "positions": positions,
         "loss_mask": loss_mask}
  return {k: np.repeat(v, steps, axis=0) for k, v in one.items()}


def train_a_few_steps(config, devices, batches, calls=3):
  progs = programs.build_without_data(config, VOCAB, devices=devices)
  with sharding.activate(progs.mesh, progs.rules):
    state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                               progs.state_shardings)
    losses = []
    for i in range(calls):
      one_call = {k: v[i:i + 1] for k, v in batches.items()}
      state, metrics = progs.train_fn(state, sharding.global_batch(one_call, progs.mesh, progs.train_batch_spec))
      losses.append(float(metrics["loss"][0]))
  return np.asarray(losses), jax.device_get(state.params), state


def assert_trees_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def single_device_run():
  return train_a_few_steps(small_config(), jax.devices()[:1], random_batches(3))


@pytest.mark.parametrize("mesh", [dict(data=8), dict(data=1, fsdp=8), dict(data=1, tensor=4, fsdp=2),
                                  dict(data=2, fsdp=2, tensor=2), dict(data=4, tensor=2)],
                         ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_sharded_training_matches_one_device(single_device_run, mesh):
  ref_losses, ref_params, _ = single_device_run
  losses, params, state = train_a_few_steps(small_config(mesh), jax.devices(), random_batches(3))
  assert len(state.params["layer_0"]["mlp"]["wi"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < losses[0]  # it trained, so the comparison covers real updates
  # Adam divides by the gradient's own scale, so a coordinate whose gradient is ~0 moves by ~lr whatever the last
  # float digits of that gradient are: sharded reductions (reordered sums) may shift such a parameter by ~lr * 1e-3.
  assert_trees_close(params, ref_params, atol=5e-5)


def test_parameters_and_optimizer_moments_have_the_declared_shardings():
  progs = programs.build_without_data(small_config(dict(data=2, fsdp=2, tensor=2)), VOCAB)
  with sharding.activate(progs.mesh, progs.rules):
    state = create_train_state(progs.model, progs.optimizer, 0, progs.task.init_args(), progs.state_shardings)
  layer = state.params["layer_0"]
  expected = {("attn", "qkv", "kernel"): P("fsdp", None, "tensor", None),  # [D, 3, H, d]
              ("attn", "out", "kernel"): P("tensor", None, "fsdp"),  # [H, d, D]
              ("mlp", "wi", "kernel"): P("fsdp", "tensor"),  # [D, F]
              ("mlp", "wo", "kernel"): P("tensor", "fsdp"),  # [F, D]
              ("ln_mlp", "scale"): P("fsdp")}
  adam_mu = state.opt_state[1][0].mu["layer_0"]
  for (module, *rest), spec in expected.items():
    param, moment = layer[module], adam_mu[module]
    for key in rest:
      param, moment = param[key], moment[key]
    assert param.sharding.spec == spec, (module, rest)
    assert moment.sharding.spec == spec, (module, rest)
  embedding = state.params["embed"]["embedding"]
  assert embedding.sharding.spec == P("tensor", "fsdp")
  # Each device holds only its shard: a [64, 32] table over tensor=2 x fsdp=2 is [32, 16] per device.
  assert embedding.addressable_shards[0].data.shape == (32, 16)


def test_a_dimension_the_mesh_does_not_divide_is_replicated():
  progs = programs.build_without_data(small_config(dict(data=2, fsdp=2, tensor=2)), VOCAB + 1)
  assert progs.state_shardings.params["embed"]["embedding"].spec == P(None, "fsdp")


def test_gradient_accumulation_equals_the_large_batch(single_device_run):
  ref_losses, ref_params, _ = single_device_run
  config = small_config()
  config.train.microbatches = 4
  losses, params, _ = train_a_few_steps(config, jax.devices()[:1], random_batches(3))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_trees_close(params, ref_params, atol=2e-5)


def test_gradient_accumulation_on_a_mesh(single_device_run):
  ref_losses, ref_params, _ = single_device_run
  config = small_config(dict(data=2, fsdp=2, tensor=2))
  config.train.microbatches = 2
  losses, params, _ = train_a_few_steps(config, jax.devices(), random_batches(3))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert_trees_close(params, ref_params, atol=2e-5)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_does_not_change_the_result(single_device_run, policy):
  ref_losses, ref_params, _ = single_device_run
  losses, params, _ = train_a_few_steps(small_config(remat=policy), jax.devices()[:1], random_batches(3))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  assert_trees_close(params, ref_params, atol=1e-6)


def test_remat_recomputes_in_the_backward_pass():
  """With remat the compiled step contains the forward matmuls twice: a check that the policy is really applied."""
  def dot_count(policy):
    config = small_config(remat=policy)
    progs = programs.build_without_data(config, VOCAB, devices=jax.devices()[:1])
    with sharding.activate(progs.mesh, progs.rules):
      hlo = progs.train_fn.lower(progs.abstract_state(config), progs.abstract_train_batches(config)).as_text()
    return hlo.count("dot_general")
  assert dot_count("full") > dot_count("none")


def test_bfloat16_compute_keeps_float32_parameters_and_tracks_float32(single_device_run):
  ref_losses, _, _ = single_device_run
  losses, params, _ = train_a_few_steps(small_config(dtype="bfloat16"), jax.devices()[:1], random_batches(3))
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-2)
  assert not np.array_equal(losses, ref_losses)  # the compute really ran in bfloat16


def test_mesh_sizes_are_resolved_and_checked():
  c = base_config().mesh
  c.update(data=-1, fsdp=2, tensor=2)
  assert sharding.mesh_shape(c, 8) == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}
  with pytest.raises(ConfigError, match=r"config.mesh .*6 devices are not divisible by 4"):
    sharding.mesh_shape(c, 6)
  c.update(data=2)
  with pytest.raises(ConfigError, match=r"has 8 devices but 4 are available"):
    sharding.mesh_shape(c, 4)


def test_a_batch_the_mesh_cannot_split_is_refused_before_any_work(tmp_path):
  config = small_config(dict(data=8))
  config.train.batch_size = 12
  with pytest.raises(ConfigError, match=r"config.train.batch_size=12 .* multiple of 8") as error:
    train.train_and_evaluate(config, tmp_path / "run")
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run").exists()  # refused before the workdir, the data or the compiler were touched


def test_train_and_evaluate_spans_the_devices_it_is_given(tmp_path):
  """devices= narrows the mesh to a subset (the one-device runs of the other test files rely on it): a 2-device
  mesh is refused on all 8 devices, before the workdir exists, and trains on 2 of them, which config.json records.
  That a result does not depend on the mesh is test_sharded_training_matches_one_device's."""
  config = small_config(dict(data=2))
  config.train.update(num_steps=2, log_every=1, eval_every=2, checkpoint_every=2, eval_batches=1, num_samples=0,
                      plot=False, tensorboard=False)
  with pytest.raises(ConfigError, match=r"has 2 devices but 8 are available"):
    train.train_and_evaluate(config, tmp_path / "refused")
  assert not (tmp_path / "refused").exists()
  final = train.train_and_evaluate(config, tmp_path / "two", devices=jax.devices()[:2])
  assert np.isfinite(final["loss"]) and (tmp_path / "two" / "checkpoints" / "2").is_dir()
  assert json.loads((tmp_path / "two" / "config.json").read_text())["provenance"]["device_count"] == 2
