"""The optax chain from config.optim: schedule, clipping, Adam/AdamW with a weight-decay mask."""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine or linear decay to min_learning_rate at decay_steps, or constant."""
  peak, floor = optim.learning_rate, optim.min_learning_rate
  warmup = optim.warmup_steps
  decay_steps = max(optim.decay_steps or num_steps, warmup + 1)
  warmup_fn = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  if optim.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif optim.schedule == "linear":
    after = optax.linear_schedule(peak, floor, decay_steps - warmup)
  else:
    after = optax.cosine_decay_schedule(peak, decay_steps - warmup, alpha=floor / peak)
  return optax.join_schedules([warmup_fn, after], [warmup])


def decay_mask(kind: str):
  """Which parameters get weight decay: 'matrices' (rank >= 2: kernels, embeddings), 'all' or 'none'."""
  if kind == "all":
    return None
  if kind == "none":
    return lambda params: jax.tree_util.tree_map(lambda _: False, params)
  return lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def _adam(optim: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  if optim.name == "adam":
    return optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  wd = optim.weight_decay if optim.decay_mask != "none" else 0.0
  return optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=wd,
                     mask=decay_mask(optim.decay_mask))


# Parameter groups a task may assign (`param_groups`): trained at the scheduled rate, at `head_lr_multiplier` times
# it (a new fine-tuning head), or not at all (frozen: no update, no weight decay, no optimizer moments).
GROUPS = ("body", "head", "frozen")


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int, param_groups: Callable[[Any], Any] | None = None,
                   head_lr_multiplier: float = 1.0) -> optax.GradientTransformation:
  """The optax chain. `param_groups(params)` gives each parameter one of GROUPS; without it all are 'body'."""
  schedule = learning_rate_schedule(optim, num_steps)
  parts = []
  if param_groups is not None:
    # Zeroed before clipping, so frozen parameters' gradients do not count towards the clipped global norm.
    frozen = lambda params: jax.tree_util.tree_map(lambda g: g == "frozen", param_groups(params))
    parts.append(optax.masked(optax.set_to_zero(), frozen))
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if param_groups is None:
    parts.append(_adam(optim, schedule))
  else:
    head_schedule = lambda step: head_lr_multiplier * schedule(step)
    parts.append(optax.multi_transform({"body": _adam(optim, schedule), "head": _adam(optim, head_schedule),
                                        "frozen": optax.set_to_zero()}, param_groups))
  return optax.chain(*parts)
