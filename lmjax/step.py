"""Pure train and eval steps: (state, batch) -> (state, metrics). No I/O; jitted by the caller.

Every step also takes an optional `frozen` argument: parameters the task reads but never trains (a distillation
teacher). None for most tasks, which then see exactly the calls they always did; otherwise it is passed on as the
task's last positional argument, outside the gradient and the optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lmjax.state import TrainState


def _frozen_args(frozen: Any) -> tuple[Any, ...]:
  return () if frozen is None else (frozen,)


def accumulated_grads(params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, task: Any,
                      microbatches: int, frozen: Any = None) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
  """The large batch's loss and gradients, computed one microbatch at a time to bound activation memory.

  Each microbatch contributes its summed token loss, and the total is divided by all tokens of the batch, so the
  result is the large batch's token-mean, not a mean of microbatch means (they differ when padding differs).
  Microbatch m takes rows m, m + M, m + 2M, ...: with rows sharded over devices, every device keeps working on its
  own rows and nothing moves between devices.
  """
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1)
  micro = jax.tree_util.tree_map(split, batch)

  def summed_loss(p, mb, r):
    loss, aux = task.loss(p, mb, r, *_frozen_args(frozen))
    return loss * aux["tokens"], aux

  # A task's other metrics (per-head losses, say) are averaged with the loss's weights.
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  extra_shapes = {k: v for k, v in jax.eval_shape(task.loss, params, first, rng, *_frozen_args(frozen))[1].items()
                  if k not in ("loss", "tokens")}

  def body(carry, inputs):
    grads_sum, loss_sum, tokens, extras = carry
    index, mb = inputs
    (loss_m, aux), grads = jax.value_and_grad(summed_loss, has_aux=True)(params, mb, jax.random.fold_in(rng, index))
    grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
    extras = {k: v + aux[k] * aux["tokens"] for k, v in extras.items()}
    return (grads_sum, loss_sum + loss_m, tokens + aux["tokens"], extras), None

  zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  extras = {k: jnp.zeros(s.shape, jnp.float32) for k, s in extra_shapes.items()}
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), extras)
  (grads_sum, loss_sum, tokens, extras), _ = jax.lax.scan(body, init, (jnp.arange(microbatches), micro))
  denominator = jnp.maximum(tokens, 1.0)
  grads = jax.tree_util.tree_map(lambda g, p: (g / denominator).astype(p.dtype), grads_sum, params)
  loss = loss_sum / denominator
  return (loss, {**{k: v / denominator for k, v in extras.items()}, "loss": loss, "tokens": tokens}), grads


def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point leaf of the tree is free of NaN and inf (a scalar bool; integer leaves such as
  optimizer step counts always are)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def train_step(state: TrainState, batch: dict[str, jax.Array], frozen: Any = None, *, task: Any,
               optimizer: optax.GradientTransformation,
               microbatches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  rng = jax.random.fold_in(state.rng, state.step)
  if microbatches == 1:
    # Differentiated with respect to the first argument only: frozen parameters get no gradient.
    (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, rng, *_frozen_args(frozen))
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
  return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), task.eval_sums(params, batch, *_frozen_args(frozen)))


def predict_step(params: Any, batch: dict[str, jax.Array], frozen: Any = None, *, task: Any) -> dict[str, jax.Array]:
  """The task's per-example predictions, with the batch's example indices so rows are matched to examples."""
  return {**task.predict(params, batch, *_frozen_args(frozen)), "index": batch["index"]}
