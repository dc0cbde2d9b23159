"""The compiled programs of a run: model, task, optimizer, mesh, state shardings and the jitted steps.

Built in one place from the config so that training, the benchmark and the ahead-of-time check compile exactly
the same step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lmjax import sharding
from lmjax.optim import make_optimizer
from lmjax.state import abstract_train_state, state_shardings
from lmjax.step import eval_step, predict_step, train_steps
from lmjax.tasks import get_task


@dataclasses.dataclass(frozen=True)
class Programs:
  model: Any
  task: Any  # a lmjax.tasks.base.Task
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  rules: sharding.Rules
  state_shardings: Any  # a TrainState of NamedShardings
  train_batch_spec: jax.sharding.PartitionSpec  # [S, B, ...]: steps per call, batch, the rest
  eval_batch_spec: jax.sharding.PartitionSpec  # [B, ...]
  train_fn: Any  # (state, batches [S, B, ...]) -> (state, metrics [S])
  eval_fn: Any  # (params, batch [B, ...]) -> summed eval statistics
  predict_fn: Any = None  # (params, batch [B, ...]) -> per-example predictions (replicated), for tasks with `predict`
  # Tasks with frozen parameters (task.frozen_spec(), e.g. a distillation teacher): their shardings, by the same
  # logical rules; the jitted steps then take them as a last argument, (state, batches, frozen) and so on.
  frozen_shardings: Any = None
  frozen: Any = None  # the loaded frozen parameters, once `with_frozen` has bound them

  def with_frozen(self, frozen: Any) -> "Programs":
    """These programs with the frozen parameters bound as the steps' last argument (a jit argument each call,
    never a constant compiled into the program), so callers keep calling train_fn(state, batches)."""
    train_fn, eval_fn, predict_fn = self.train_fn, self.eval_fn, self.predict_fn
    return dataclasses.replace(
        self, frozen=frozen, train_fn=lambda state, batches: train_fn(state, batches, frozen),
        eval_fn=lambda params, batch: eval_fn(params, batch, frozen),
        predict_fn=None if predict_fn is None else lambda params, batch: predict_fn(params, batch, frozen))

  def sample_tokens(self, seq_len: int) -> jax.Array:
    """Tokens to initialize a model that takes only tokens (the causal LMs); `task.init_args` is the general form."""
    return jnp.zeros((1, seq_len), jnp.int32)

  def abstract_state(self, config: ml_collections.ConfigDict) -> Any:
    return abstract_train_state(self.model, self.optimizer, config.seed, self.task.init_args(config),
                                self.state_shardings)

  def abstract_train_batches(self, config: ml_collections.ConfigDict, steps: int | None = None) -> dict[str, Any]:
    """Shapes of one train call's input, for compiling without data."""
    leading = steps or config.train.steps_per_call
    sharded = jax.sharding.NamedSharding(self.mesh, self.train_batch_spec)
    return {k: jax.ShapeDtypeStruct((leading, *s.shape), s.dtype, sharding=sharded)
            for k, s in self.task.abstract_batch(config, config.train.batch_size).items()}


def build(config: ml_collections.ConfigDict, vocab_size: int, *, token_bytes_V: np.ndarray | None = None,
          token_chars_V: np.ndarray | None = None, devices: Sequence[jax.Device] | None = None,
          data: Any = None) -> Programs:
  """Everything a run compiles. Call (and use the jitted functions) inside `sharding.activate(mesh, rules)`.

  `data` (the run's TaskData, None when compiling without data) lets a task size its model from the data, e.g. a
  classifier's number of classes."""
  t = config.train
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.mesh)
  sharding.check_batch_fits(config, mesh, rules)
  as_array = lambda x: None if x is None else jnp.asarray(x)
  task = get_task(config.task).create(config, vocab_size, token_bytes_V=as_array(token_bytes_V),
                                      token_chars_V=as_array(token_chars_V), data=data)
  model = task.model
  optimizer = make_optimizer(config.optim, t.num_steps, getattr(task, "param_groups", None),
                             config.finetune.head_lr_multiplier)
  with sharding.activate(mesh, rules):
    shardings = state_shardings(model, optimizer, config.seed, task.init_args(config), mesh, rules)
  frozen_spec = task.frozen_spec() if hasattr(task, "frozen_spec") else None
  frozen_shardings = None if frozen_spec is None else sharding.tree_shardings(*frozen_spec, mesh, rules)
  frozen_in = () if frozen_shardings is None else (frozen_shardings,)
  train_spec, eval_spec = sharding.batch_spec(rules, leading=1), sharding.batch_spec(rules)
  named = lambda spec: jax.sharding.NamedSharding(mesh, spec)
  train_fn = jax.jit(functools.partial(train_steps, task=task, optimizer=optimizer, microbatches=t.microbatches),
                     in_shardings=(shardings, named(train_spec), *frozen_in), out_shardings=(shardings, None),
                     donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, task=task),
                    in_shardings=(shardings.params, named(eval_spec), *frozen_in))
  predict_fn = None
  if hasattr(task, "predict"):
    # Replicated outputs: every process reads all predictions of a batch, whatever rows it fed.
    predict_fn = jax.jit(functools.partial(predict_step, task=task),
                         in_shardings=(shardings.params, named(eval_spec), *frozen_in),
                         out_shardings=named(jax.sharding.PartitionSpec()))
  return Programs(model=model, task=task, optimizer=optimizer, mesh=mesh, rules=rules, state_shardings=shardings,
                  train_batch_spec=train_spec, eval_batch_spec=eval_spec, train_fn=train_fn, eval_fn=eval_fn,
                  predict_fn=predict_fn, frozen_shardings=frozen_shardings)
