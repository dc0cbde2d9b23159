r"""What distillation costs per train step: the student's jitted train call alone and with the teacher inside it,
timed alternately on the same machine (10 steps per call as in config.py; best of 5 calls after a warm-up).

  python experiments/distillation/step_cost.py   # needs the teacher at runs/distill/teacher
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
  import jax
  from lmjax import programs, sharding
  from lmjax.state import create_train_state
  spec = importlib.util.spec_from_file_location("distill_config", Path(__file__).with_name("config.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  calls = {}
  for variant in ("student", "kd", "teacher"):
    config = module.get_config(variant)
    progs = programs.build_without_data(config, 80, devices=jax.devices()[:1])
    with sharding.activate(progs.mesh, progs.rules):
      if progs.frozen_shardings is not None:
        progs = progs.with_frozen(progs.task.load_frozen(progs.frozen_shardings))
      state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                                 progs.state_shardings)
      shapes = progs.abstract_train_batches(config)
      batch = {k: np.random.default_rng(0).integers(1, 80, s.shape).astype(s.dtype) for k, s in shapes.items()}
      batch = sharding.global_batch(batch, progs.mesh, progs.train_batch_spec)
      state, _ = progs.train_fn(state, batch)
      calls[variant] = [progs.train_fn, state, batch, float("inf")]
  for _ in range(5):
    for entry in calls.values():
      fn, state, batch, best = entry
      start = time.perf_counter()
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
      entry[1], entry[3] = state, min(best, time.perf_counter() - start)
  base = calls["student"][3] / 10
  print("| train step of | ms/step | relative to the student alone |\n|---|---|---|")
  for name, label in (("student", "student alone (2 x 128)"), ("kd", "student + teacher forward (distillation)"),
                      ("teacher", "teacher alone (4 x 192)")):
    ms = calls[name][3] / 10
    print(f"| {label} | {1000 * ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
  main()
