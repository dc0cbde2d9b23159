"""Train state and its initialization.

Parameters are created through `jax.eval_shape` first, so the structure (and the logical axis names each
parameter carries) is known without allocating anything; the real initialization is then one jitted call.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct


class TrainState(struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data; per-step keys are fold_in(rng, step), so resuming replays the same randomness
  nonfinite_streak: jax.Array  # int32: consecutive steps skipped because the loss or gradients were not finite
  skipped_steps: jax.Array  # int32: all such steps of the run


def param_axes(model: nn.Module, sample_tokens_BL: jax.Array) -> Any:
  """The logical axis names of every parameter, e.g. ('embed', 'mlp'), as a pytree of PartitionSpecs."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample_tokens_BL))["params"]
  return nn.get_partition_spec(boxed)


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                       sample_tokens_BL: jax.Array) -> TrainState:
  def init() -> TrainState:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = nn.meta.unbox(model.init(init_rng, sample_tokens_BL)["params"])
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=optimizer.init(params), rng=train_rng,
                      nonfinite_streak=zero, skipped_steps=zero)
  return jax.jit(init)()


def abstract_train_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                         sample_tokens_BL: jax.Array) -> TrainState:
  """Shapes and dtypes only: the restore target for a checkpoint."""
  return jax.eval_shape(lambda: create_train_state(model, optimizer, seed, sample_tokens_BL))


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
