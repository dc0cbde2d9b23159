r"""What LoRA saves per train step: the jitted train call of full fine-tuning and of LoRA at each rank, for SFT and
DPO, timed alternately in one process (10 steps per call as in config.py; best of 5 calls after a warm-up).

  python experiments/post_training/step_cost.py runs/post data/post_training   # needs runs/post/sft_full
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
  runs, data = (sys.argv[1:] + ["runs/post", "data/post_training"])[:2]
  spec = importlib.util.spec_from_file_location("post_config", Path(__file__).with_name("config.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  calls = {}
  for variant in (*module.SFT, *module.DPO):
    config = module.get_config(f"{variant},{runs},{data}")
    progs = programs.build_without_data(config, 263, devices=jax.devices()[:1])
    with sharding.activate(progs.mesh, progs.rules):
      if progs.frozen_shardings is not None:
        progs = progs.with_frozen(progs.task.load_frozen(progs.frozen_shardings))
      state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                                 progs.state_shardings)
      shapes = progs.abstract_train_batches(config)
      rng = np.random.default_rng(0)
      batch = {k: (rng.integers(1, 263, s.shape) if s.dtype == np.int32 else np.ones(s.shape)).astype(s.dtype)
               for k, s in shapes.items()}
      batch = sharding.global_batch(batch, progs.mesh, progs.train_batch_spec)
      state, _ = progs.train_fn(state, batch)
      tokens = config.train.steps_per_call * config.train.batch_size * config.data.seq_len * (
          2 if config.task == "dpo" else 1)
      calls[variant] = [progs.train_fn, state, batch, float("inf"), tokens]
  for _ in range(5):
    for entry in calls.values():
      fn, state, batch, best, _ = entry
      start = time.perf_counter()
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
      entry[1], entry[3] = state, min(best, time.perf_counter() - start)
  print("| train step of | ms/step | tokens/s | relative to full fine-tuning |\n|---|---|---|---|")
  for variants in (module.SFT, module.DPO):
    base = calls[next(iter(variants))][3]
    for name in variants:
      seconds, tokens = calls[name][3], calls[name][4]
      print(f"| {name} | {100 * seconds:.1f} | {tokens / seconds:,.0f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
  main()
