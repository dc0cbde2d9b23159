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
  (_, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, rng)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(aux, grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], *, task: Any,
                optimizer: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """Several steps in one call: `batches` has a leading steps axis [S, B, L]. Metrics come back as [S]."""
  def body(s, batch):
    return train_step(s, batch, task=task, optimizer=optimizer)
  return jax.lax.scan(body, state, batches)


def eval_step(params: Any, batch: dict[str, jax.Array], *, task: Any) -> dict[str, jax.Array]:
  return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), task.eval_sums(params, batch))
