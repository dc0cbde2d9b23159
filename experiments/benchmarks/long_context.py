r"""Per-device memory of GPT-2 small's train step at long context, by XLA's compiled estimate (lmjax.aot).

  python experiments/benchmarks/long_context.py [--lengths=1024,4096,16384,32768] [--variants=xla,flash,ring8]

For each context length and variant it runs `python -m lmjax.aot` in a child process (each with its own count of
simulated devices) on configs/gpt2_small.py with batch 1 per sequence, model.max_len = the context (a learned
position table that long), and prints one markdown table:

  xla     model.attention_impl=xla, the whole [tokens, V] logits (today's default computation)
  flash   model.attention_impl=flash and train.loss_chunk_tokens=4096
  ring8   the same with mesh.sequence=8 on 8 simulated devices (context parallelism, ring attention)

The figures are XLA:CPU's buffer assignment for the compiled step (arguments + outputs + temporaries - donated
aliases, per device); an accelerator's compiler fuses and schedules differently, so treat them as estimates.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "xla": (1, ["--config.model.attention_impl=xla"]),
    "flash": (1, ["--config.model.attention_impl=flash", "--config.train.loss_chunk_tokens=4096"]),
    "ring8": (8, ["--config.model.attention_impl=ring", "--config.train.loss_chunk_tokens=4096",
                  "--config.mesh.data=1", "--config.mesh.sequence=8"]),
}


def aot_row(length: int, variant: str, extra: list[str]) -> dict[str, str]:
  devices, flags = VARIANTS[variant]
  cmd = [sys.executable, "-m", "lmjax.aot", f"--config={REPO}/configs/gpt2_small.py", f"--num_devices={devices}",
         f"--config.data.seq_len={length}", f"--config.model.max_len={length}", "--config.train.batch_size=1",
         *flags, *extra]
  print("$", " ".join(cmd[1:]), file=sys.stderr, flush=True)
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if out.returncode:
    return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
  header, _, row = [line for line in out.stdout.splitlines() if line.startswith("|")][:3]
  names = [c.strip() for c in header.strip("|").split("|")]
  return dict(zip(names, (c.strip() for c in row.strip("|").split("|"))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="1024,4096,16384,32768")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--extra", default="", help="more --config overrides for every run, space-separated")
  args = parser.parse_args()
  print("| context | variant | devices | params | state/device GiB | temp/device GiB | total/device GiB | "
        "compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for length in (int(x) for x in args.lengths.split(",")):
    for variant in args.variants.split(","):
      r = aot_row(length, variant, args.extra.split())
      if "error" in r:
        print(f"| {length:,} | {variant} | | | | | {re.sub(r'[|]', '/', r['error'])[:120]} | |", flush=True)
        continue
      print(f"| {length:,} | {variant} | {r['devices']} | {r['params']} | {r['state/device GiB']} | "
            f"{r['temp/device GiB']} | {r['total/device GiB']} | {r['compile s']} |", flush=True)


if __name__ == "__main__":
  main()
