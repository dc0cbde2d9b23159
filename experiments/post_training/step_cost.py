r"""What LoRA saves per train step: the jitted train call of full fine-tuning and of LoRA at each rank, for SFT and
DPO, timed alternately in one process (10 steps per call as in config.py; best of 5 calls after a warm-up).

  python experiments/post_training/step_cost.py runs/post data/post_training   # needs runs/post/sft_full
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_call_timing  # pylint: disable=wrong-import-position


def main() -> None:
  runs, data = (sys.argv[1:] + ["runs/post", "data/post_training"])[:2]
  module = train_call_timing.load_config_module(Path(__file__).with_name("config.py"))
  configs = {v: module.get_config(f"{v},{runs},{data}") for v in (*module.SFT, *module.DPO)}
  seconds = train_call_timing.best_call_seconds(configs, vocab_size=263)
  print("| train step of | ms/step | tokens/s | relative to full fine-tuning |\n|---|---|---|---|")
  for variants in (module.SFT, module.DPO):
    base = seconds[next(iter(variants))]
    for name in variants:
      c = configs[name]
      tokens = c.train.steps_per_call * c.train.batch_size * c.data.seq_len * (2 if c.task == "dpo" else 1)
      print(f"| {name} | {100 * seconds[name]:.1f} | {tokens / seconds[name]:,.0f} | {seconds[name] / base:.2f}x |")


if __name__ == "__main__":
  main()
