"""Train state and its sharded initialization.

The state is first traced with `jax.eval_shape`: shapes, dtypes and the logical axis names every parameter (and,
through it, every optimizer moment) carries, with nothing allocated. Those names give each leaf a NamedSharding,
and the real initialization is one jitted call with those `out_shardings`, so every device creates only its own
shard: a model larger than one device's memory never exists whole anywhere.

`init_args` are the example inputs `model.init` is traced with (a task's `init_args()`): a tuple of
positional arguments, or one array for a model that takes only tokens. Only their shapes and dtypes matter.
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
  nonfinite_streak: jax.Array  # int32: consecutive steps skipped because the loss, gradients or update were not finite
  skipped_steps: jax.Array  # int32: all such steps of the run


InitArgs = tuple[jax.Array, ...] | jax.Array


def _as_tuple(init_args: InitArgs) -> tuple[jax.Array, ...]:
  return init_args if isinstance(init_args, tuple) else (init_args,)


def boxed_params(model: nn.Module, init_args: InitArgs) -> Any:
  """The parameters' shapes, still in their nn.Partitioned boxes (logical axis names), nothing allocated."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *_as_tuple(init_args)))["params"]


def abstract_params(model: nn.Module, init_args: InitArgs) -> tuple[Any, Any]:
  """(ShapeDtypeStructs, logical PartitionSpecs) of a model's parameters, nothing allocated."""
  boxed = boxed_params(model, init_args)
  return strip_boxes(boxed), nn.get_partition_spec(boxed)


def param_axes(model: nn.Module, init_args: InitArgs) -> Any:
  """The logical axis names of every parameter, e.g. ('embed', 'mlp'), as a pytree of PartitionSpecs."""
  return nn.get_partition_spec(boxed_params(model, init_args))


def _init_boxed(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                init_args: InitArgs) -> TrainState:
  """The state with parameters still wrapped in nn.Partitioned boxes, so optimizer moments inherit their names."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_rng, *_as_tuple(init_args))["params"]
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=optimizer.init(params), rng=train_rng,
                    nonfinite_streak=zero, skipped_steps=zero)


def strip_boxes(tree: Any) -> Any:
  """The values inside nn.Partitioned boxes. (nn.meta.unbox would also add sharding constraints, which only make
  sense on traced arrays, not on the shape structs of eval_shape.)"""
  return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                                is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def state_shardings(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                    init_args: InitArgs, mesh: Any, rules: Any) -> TrainState:
  """A NamedSharding per state leaf, from the logical axes of the parameters and config.mesh.rules."""
  from lmjax import sharding  # plain JAX; imported here to keep this module's import light
  boxed = jax.eval_shape(lambda: _init_boxed(model, optimizer, seed, init_args))
  return sharding.tree_shardings(strip_boxes(boxed), nn.get_partition_spec(boxed), mesh, rules)


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                       init_args: InitArgs, shardings: Any = None) -> TrainState:
  """Initialized state; with `shardings` (from state_shardings) each device materializes only its shard."""
  init = lambda: strip_boxes(_init_boxed(model, optimizer, seed, init_args))
  return jax.jit(init, out_shardings=shardings)()


def abstract_train_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
                         init_args: InitArgs, shardings: Any = None) -> TrainState:
  """Shapes, dtypes and (given) shardings only: the restore target for a checkpoint, which restores sharded."""
  shapes = jax.eval_shape(lambda: strip_boxes(_init_boxed(model, optimizer, seed, init_args)))
  if shardings is None:
    return shapes
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point leaf of the tree is free of NaN and inf (a scalar bool; integer leaves such as
  optimizer step counts always are)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)
