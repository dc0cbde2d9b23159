r"""What distillation costs per train step: the student's jitted train call alone and with the teacher inside it,
timed alternately on the same machine (10 steps per call as in config.py; best of 5 calls after a warm-up).

  python experiments/distillation/step_cost.py   # needs the teacher at runs/distill/teacher
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_call_timing  # pylint: disable=wrong-import-position


def main() -> None:
  module = train_call_timing.load_config_module(Path(__file__).with_name("config.py"))
  variants = {v: module.get_config(v) for v in ("student", "kd", "teacher")}
  seconds = train_call_timing.best_call_seconds(variants, vocab_size=80)
  base = seconds["student"] / 10
  print("| train step of | ms/step | relative to the student alone |\n|---|---|---|")
  for name, label in (("student", "student alone (2 x 128)"), ("kd", "student + teacher forward (distillation)"),
                      ("teacher", "teacher alone (4 x 192)")):
    ms = seconds[name] / 10
    print(f"| {label} | {1000 * ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
  main()
