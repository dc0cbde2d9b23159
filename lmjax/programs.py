"""The compiled programs of a run: optimizer, state shardings and the jitted steps, around a task and a mesh.

Built in one place from the config so that training, the benchmark and the ahead-of-time check compile exactly
the same step. The mesh is made once by the caller (`sharding.make_mesh`) and passed in.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import ml_collections
import optax

from lmjax import sharding
from lmjax.optim import make_optimizer
from lmjax.registry import TASKS
from lmjax.state import abstract_train_state, boxed_params, state_shardings
from lmjax.step import eval_step, predict_step, train_steps
from lmjax.tasks.base import Task, VocabInfo


@dataclasses.dataclass(frozen=True)
class Programs:
  task: Task
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  rules: sharding.Rules
  state_shardings: Any  # a TrainState of NamedShardings
  train_batch_spec: jax.sharding.PartitionSpec  # [S, B, ...]: steps per call, batch, the rest
  eval_batch_spec: jax.sharding.PartitionSpec  # [B, ...]
  train_fn: Any  # (state, batches [S, B, ...]) -> (state, metrics [S])
  eval_fn: Any  # (params, batch [B, ...]) -> summed eval statistics
  predict_fn: Any  # (params, batch [B, ...]) -> per-example predictions (replicated); None unless task.predicts
  # Tasks with frozen parameters (task.frozen_spec(), e.g. a distillation teacher): their shardings, by the same
  # logical rules; the jitted steps then take them as a last argument, (state, batches, frozen) and so on, until
  # `with_frozen` binds them.
  frozen_shardings: Any = None
  frozen: Any = None  # the loaded frozen parameters, once `with_frozen` has bound them

  @property
  def model(self) -> Any:
    return self.task.model

  def with_frozen(self, frozen: Any) -> "Programs":
    """These programs with the frozen parameters bound as the steps' last argument (a jit argument each call,
    never a constant compiled into the program), so callers keep calling train_fn(state, batches). Without frozen
    parameters (None), the programs themselves."""
    if frozen is None:
      return self
    train_fn, eval_fn, predict_fn = self.train_fn, self.eval_fn, self.predict_fn
    return dataclasses.replace(
        self, frozen=frozen, train_fn=lambda state, batches: train_fn(state, batches, frozen),
        eval_fn=lambda params, batch: eval_fn(params, batch, frozen),
        predict_fn=None if predict_fn is None else lambda params, batch: predict_fn(params, batch, frozen))

  def frozen_args(self) -> tuple[Any, ...]:
    """The extra arguments of the unbound steps when compiling without data: the frozen parameters' shapes."""
    return () if self.frozen_shardings is None else (self.abstract_frozen(),)

  def abstract_state(self, config: ml_collections.ConfigDict) -> Any:
    return abstract_train_state(self.model, self.optimizer, config.seed, self.task.init_args(), self.state_shardings)

  def abstract_train_batches(self, config: ml_collections.ConfigDict, steps: int | None = None) -> dict[str, Any]:
    """Shapes of one train call's input, for compiling without data."""
    leading = steps or config.train.steps_per_call
    sharded = jax.sharding.NamedSharding(self.mesh, self.train_batch_spec)
    return {k: jax.ShapeDtypeStruct((leading, *s.shape), s.dtype, sharding=sharded)
            for k, s in self.task.abstract_batch(config.train.batch_size).items()}

  def abstract_frozen(self) -> Any:
    """Shapes of the frozen parameters (None without any), for compiling without loading them."""
    spec = self.task.frozen_spec()
    if spec is None:
      return None
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), spec[0],
                                  self.frozen_shardings)


def build(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh) -> Programs:
  """Everything a run compiles for `task` on `mesh`. Call (and use the jitted functions) inside
  `sharding.activate(mesh, rules)`."""
  t = config.train
  rules = sharding.logical_rules(config.mesh)
  # A task with optimizer groups returns them for the abstract parameters too; None means one group.
  groups = task.param_groups(boxed_params(task.model, task.init_args()))
  optimizer = make_optimizer(config.optim, t.num_steps, None if groups is None else task.param_groups,
                             config.finetune.head_lr_multiplier)
  with sharding.activate(mesh, rules):
    shardings = state_shardings(task.model, optimizer, config.seed, task.init_args(), mesh, rules)
  frozen_spec = task.frozen_spec()
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
  if task.predicts:
    # Replicated outputs: every process reads all predictions of a batch, whatever rows it fed.
    predict_fn = jax.jit(functools.partial(predict_step, task=task),
                         in_shardings=(shardings.params, named(eval_spec), *frozen_in),
                         out_shardings=named(jax.sharding.PartitionSpec()))
  return Programs(task=task, optimizer=optimizer, mesh=mesh, rules=rules, state_shardings=shardings,
                  train_batch_spec=train_spec, eval_batch_spec=eval_spec, train_fn=train_fn, eval_fn=eval_fn,
                  predict_fn=predict_fn, frozen_shardings=frozen_shardings)


def build_without_data(config: ml_collections.ConfigDict, vocab_size: int, *,
                       devices: Sequence[jax.Device] | None = None) -> Programs:
  """The programs of a config compiled without its data (lmjax.aot, benchmarks): the task is created from the
  config alone, on a mesh over `devices` (default: all)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_fits(config, mesh, sharding.logical_rules(config.mesh))
  task = TASKS.get(config.task).create(config, VocabInfo(vocab_size))
  return build(config, task, mesh)
