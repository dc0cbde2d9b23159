"""Pure train and eval steps: (state, batch) -> (state, metrics). No I/O; jitted by the caller."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lmjax.state import TrainState


def train_step(state: TrainState, batch: dict[str, jax.Array], *, task: Any,
               optimizer: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, rng)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  # A step whose loss or gradients are not finite leaves parameters and optimizer state untouched; the data and
  # step counter still advance, so the offending batch is skipped rather than retried forever.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_new = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  skipped = 1 - finite.astype(jnp.int32)
  metrics = dict(aux, grad_norm=grad_norm, skipped=skipped)
  return state.replace(step=state.step + 1, params=keep_new(params, state.params),
                       opt_state=keep_new(opt_state, state.opt_state),
                       nonfinite_streak=(state.nonfinite_streak + 1) * skipped,
                       skipped_steps=state.skipped_steps + skipped), metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], *, task: Any,
                optimizer: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """Several steps in one call: `batches` has a leading steps axis [S, B, L]. Metrics come back as [S]."""
  def body(s, batch):
    return train_step(s, batch, task=task, optimizer=optimizer)
  return jax.lax.scan(body, state, batches)


def eval_step(params: Any, batch: dict[str, jax.Array], *, task: Any) -> dict[str, jax.Array]:
  return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), task.eval_sums(params, batch))
