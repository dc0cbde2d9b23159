"""Pure train and eval steps: (state, batch) -> (state, metrics). No I/O; jitted by the caller.

Every step also takes a `frozen` argument: parameters the task reads but never trains (a distillation teacher),
None for most tasks. It is passed on to the task's loss, eval sums and predictions, outside the gradient and the
optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lmjax.state import TrainState, all_finite


class _Trained:
  """The parameters a step differentiates: all of them, or all but the task's 'frozen' optimizer group.

  A frozen parameter is a constant of the differentiation, so its gradient is never computed and no gradient or
  accumulation buffer of its size exists (with LoRA, that is every base weight); the optimizer still receives a
  full gradient tree, zeros where frozen, which its frozen group discards."""

  def __init__(self, task: Any, params: Any):
    groups = task.param_groups(params)
    self.leaves, self.treedef = jax.tree_util.tree_flatten(params)
    self.is_frozen = ([False] * len(self.leaves) if groups is None
                      else [g == "frozen" for g in jax.tree_util.tree_leaves(groups)])

  def select(self) -> list[jax.Array]:
    return [p for p, f in zip(self.leaves, self.is_frozen) if not f]

  def params(self, trained: list[jax.Array]) -> Any:
    it = iter(trained)
    return self.treedef.unflatten([p if f else next(it) for p, f in zip(self.leaves, self.is_frozen)])

  def grads(self, trained_grads: list[jax.Array]) -> Any:
    it = iter(trained_grads)
    return self.treedef.unflatten([jnp.zeros_like(p) if f else next(it) for p, f in zip(self.leaves, self.is_frozen)])


def loss_and_grads(params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, task: Any,
                   frozen: Any = None) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
  """value_and_grad of the task's loss with respect to the parameters it trains (frozen ones read as zeros).
  Differentiated with respect to `params` only: the `frozen` argument (a teacher, a reference) gets no gradient."""
  trained = _Trained(task, params)
  if not any(trained.is_frozen):
    return jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng, frozen)
  loss_of = lambda leaves: task.loss(trained.params(leaves), batch, rng, frozen)
  out, grads = jax.value_and_grad(loss_of, has_aux=True)(trained.select())
  return out, trained.grads(grads)


def accumulated_grads(params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, task: Any,
                      microbatches: int, frozen: Any = None) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
  """The large batch's loss and gradients, computed one microbatch at a time to bound activation memory.

  Each microbatch contributes its summed token loss, and the total is divided by all tokens of the batch, so the
  result is the large batch's token-mean, not a mean of microbatch means (they differ when padding differs).
  Microbatch m takes rows m, m + M, m + 2M, ...: with rows sharded over devices, every device keeps working on its
  own rows and nothing moves between devices. Only trained parameters are differentiated and accumulated.
  """
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1)
  micro = jax.tree_util.tree_map(split, batch)
  trained = _Trained(task, params)

  def summed_loss(leaves, mb, r):
    loss, aux = task.loss(trained.params(leaves), mb, r, frozen)
    return loss * aux["tokens"], aux

  # A task's other metrics (per-head losses, say) are averaged with the loss's weights.
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  extra_shapes = {k: v for k, v in jax.eval_shape(task.loss, params, first, rng, frozen)[1].items()
                  if k not in ("loss", "tokens")}

  def body(carry, inputs):
    grads_sum, loss_sum, tokens, extras = carry
    index, mb = inputs
    (loss_m, aux), grads = jax.value_and_grad(summed_loss, has_aux=True)(trained.select(), mb,
                                                                          jax.random.fold_in(rng, index))
    grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
    extras = {k: v + aux[k] * aux["tokens"] for k, v in extras.items()}
    return (grads_sum, loss_sum + loss_m, tokens + aux["tokens"], extras), None

  zeros = [jnp.zeros(p.shape, jnp.float32) for p in trained.select()]
  extras = {k: jnp.zeros(s.shape, jnp.float32) for k, s in extra_shapes.items()}
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), extras)
  (grads_sum, loss_sum, tokens, extras), _ = jax.lax.scan(body, init, (jnp.arange(microbatches), micro))
  denominator = jnp.maximum(tokens, 1.0)
  grads = trained.grads([(g / denominator).astype(p.dtype) for g, p in zip(grads_sum, trained.select())])
  loss = loss_sum / denominator
  return (loss, {**{k: v / denominator for k, v in extras.items()}, "loss": loss, "tokens": tokens}), grads


def train_step(state: TrainState, batch: dict[str, jax.Array], frozen: Any = None, *, task: Any,
               optimizer: optax.GradientTransformation,
               microbatches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  rng = jax.random.fold_in(state.rng, state.step)
  if microbatches == 1:
    (loss, aux), grads = loss_and_grads(state.params, batch, rng, task=task, frozen=frozen)
  else:
    (loss, aux), grads = accumulated_grads(state.params, batch, rng, task=task, microbatches=microbatches,
                                           frozen=frozen)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  # A step whose loss, gradients, new parameters or new optimizer state are not finite leaves parameters and
  # optimizer state untouched; the data and step counter still advance, so the offending batch is skipped rather
  # than retried forever. Checking the results too catches what finite gradients can still produce: a NaN or inf
  # learning rate, an update or moment that overflows.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params) & all_finite(opt_state)
  # One conditional picks the whole new or old state: an elementwise select of every leaf instead would have to
  # wait for the check and doubles the step's compile time on a CPU.
  params, opt_state = jax.lax.cond(finite, lambda new, old: new, lambda new, old: old,
                                   (params, opt_state), (state.params, state.opt_state))
  skipped = 1 - finite.astype(jnp.int32)
  metrics = dict(aux, grad_norm=grad_norm, skipped=skipped)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       nonfinite_streak=(state.nonfinite_streak + 1) * skipped,
                       skipped_steps=state.skipped_steps + skipped), metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], frozen: Any = None, *, task: Any,
                optimizer: optax.GradientTransformation,
                microbatches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """Several steps in one call: `batches` has a leading steps axis [S, B, L]. Metrics come back as [S]."""
  def body(s, batch):
    return train_step(s, batch, frozen, task=task, optimizer=optimizer, microbatches=microbatches)
  return jax.lax.scan(body, state, batches)


def eval_step(params: Any, batch: dict[str, jax.Array], frozen: Any = None, *, task: Any) -> dict[str, jax.Array]:
  return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), task.eval_sums(params, batch, frozen))


def predict_step(params: Any, batch: dict[str, jax.Array], frozen: Any = None, *, task: Any) -> dict[str, jax.Array]:
  """The task's per-example predictions, with the batch's example indices so rows are matched to examples."""
  return {**task.predict(params, batch, frozen), "index": batch["index"]}
