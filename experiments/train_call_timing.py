"""The jitted train call of several configs, compiled side by side and timed alternately in one process, so that
the machine's load falls on every variant alike (the step-cost scripts of the studies use it)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np


def load_config_module(path: Path) -> ModuleType:
  spec = importlib.util.spec_from_file_location(f"{path.parent.name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def random_batch(shapes: dict[str, Any], vocab_size: int) -> dict[str, np.ndarray]:
  """Token ids in [1, vocab_size) for the integer arrays, ones for the rest (masks and weights)."""
  rng = np.random.default_rng(0)
  return {k: (rng.integers(1, vocab_size, s.shape) if s.dtype == np.int32 else np.ones(s.shape)).astype(s.dtype)
          for k, s in shapes.items()}


def best_call_seconds(configs: dict[str, Any], vocab_size: int, repeats: int = 5) -> dict[str, float]:
  """{name: the best of `repeats` train calls, in seconds}, after one warm-up call each; one device."""
  import jax
  from lmjax import programs, sharding
  from lmjax.state import create_train_state
  calls: dict[str, list] = {}
  for name, config in configs.items():
    progs = programs.build_without_data(config, vocab_size, devices=jax.devices()[:1])
    with sharding.activate(progs.mesh, progs.rules):
      if progs.frozen_shardings is not None:
        progs = progs.with_frozen(progs.task.load_frozen(progs.frozen_shardings))
      state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                                 progs.state_shardings)
      batch = sharding.global_batch(random_batch(progs.abstract_train_batches(config), vocab_size), progs.mesh,
                                    progs.train_batch_spec)
      state, _ = progs.train_fn(state, batch)
      calls[name] = [progs.train_fn, state, batch]
  best = {name: float("inf") for name in calls}
  for _ in range(repeats):
    for name, entry in calls.items():
      fn, state, batch = entry
      start = time.perf_counter()
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
      entry[1], best[name] = state, min(best[name], time.perf_counter() - start)
  return best
