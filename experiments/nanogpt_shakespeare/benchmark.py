r"""lmjax and nanoGPT trained with nanoGPT's CPU Shakespeare recipe, one after the other on the same machine.

  python experiments/nanogpt_shakespeare/benchmark.py --text=PATH/tinyshakespeare.txt \
      --nanogpt_dir=PATH/nanoGPT --torch_python=PATH/bin/python [--nanogpt_compile] [--peer] [--peer_compile] \
      [--rounds=N]

Prints a markdown table: final validation loss, median milliseconds per training step (evaluation excluded),
training tokens per second, and wall time. nanoGPT is not part of lmjax: pass a checkout of it and a Python
that has torch; it is left out of the table when --nanogpt_dir is not given. --peer runs torch_peer.py (the same
recipe written in PyTorch, eager; --peer_compile also under torch.compile) with the same Python, for machines
without a nanoGPT checkout. --rounds=N repeats the whole sequence N times, alternating the systems, so a shared
machine's changing load falls on all of them; the table has one row per system and round.

lmjax keeps its prepared data in --data_dir (outside the run's workdir, as nanoGPT keeps its .bin files) and its
compiled programs in the persistent compilation cache, so a rerun measures training, not preparation: the first
round of a fresh machine includes both (its wall time says so).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, max_iters=2000, lr_decay_iters=2000,
              dropout=0.0)
TOKENS_PER_STEP = RECIPE["block_size"] * RECIPE["batch_size"]


def run_lmjax(text: Path, workdir: Path, extra: list[str], data_dir: Path | None = None) -> dict:
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "-m", "lmjax.main", f"--config={REPO}/configs/nanogpt_cpu.py:{text}", f"--workdir={workdir}",
         *([f"--config.data.data_dir={data_dir}"] if data_dir else []), *extra]
  print("$", " ".join(cmd), flush=True)
  start = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=REPO)
  wall = time.perf_counter() - start
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  ms = statistics.median(1000.0 / r["steps_per_s"] for r in train[1:])  # the first interval follows compilation
  return {"system": "lmjax", "val_loss": evals[-1]["loss"], "val_loss_20_batches": float("nan"), "ms_per_step": ms,
          "wall_s": wall}


# nanoGPT's own estimate averages 20 random batches; this scores its final checkpoint on every validation token,
# in consecutive windows of the context length, as lmjax's evaluation does.
_NANOGPT_FULL_VALIDATION = """
import sys, numpy as np, torch
from model import GPT, GPTConfig
ckpt = torch.load(sys.argv[1] + '/ckpt.pt', map_location='cpu')
model = GPT(GPTConfig(**ckpt['model_args']))
model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
model.eval()
val = np.memmap('data/shakespeare_char/val.bin', dtype=np.uint16, mode='r').astype(np.int64)
L = ckpt['model_args']['block_size']
starts = np.arange(0, len(val) - 1, L)
total, count = 0.0, 0
with torch.no_grad():
  for s in starts:
    n = min(L, len(val) - 1 - s)
    _, loss = model(torch.from_numpy(val[s:s + n])[None], torch.from_numpy(val[s + 1:s + n + 1])[None])
    total, count = total + loss.item() * n, count + n
print(total / count)
"""


def run_nanogpt(text: Path, nanogpt_dir: Path, python: str, compile_model: bool = False) -> dict:
  data_dir = nanogpt_dir / "data" / "shakespeare_char"
  if not (data_dir / "val.bin").exists() or (data_dir / "input.txt").read_bytes() != text.read_bytes():
    shutil.copy(text, data_dir / "input.txt")  # prepare.py downloads only when input.txt is missing
    subprocess.run([python, "prepare.py"], check=True, cwd=data_dir)
  out_dir = tempfile.mkdtemp(prefix="nanogpt-out-")
  cmd = [python, "train.py", "config/train_shakespeare_char.py", "--device=cpu", f"--compile={compile_model}", "--eval_iters=20",
         "--log_interval=1", "--always_save_checkpoint=True",
         f"--out_dir={out_dir}", *[f"--{k}={v}" for k, v in RECIPE.items()]]
  print("$", " ".join(cmd), flush=True)
  start = time.perf_counter()
  log = subprocess.run(cmd, check=True, cwd=nanogpt_dir, capture_output=True, text=True).stdout
  wall = time.perf_counter() - start
  full_val_loss = float(subprocess.run([python, "-c", _NANOGPT_FULL_VALIDATION, out_dir], check=True, cwd=nanogpt_dir,
                                       capture_output=True, text=True).stdout.split()[-1])
  shutil.rmtree(out_dir, ignore_errors=True)
  times = step_times(log)  # iter 0 and eval iters include extra work
  val_loss = float(re.findall(r"val loss ([\d.]+)", log)[-1])
  return {"system": f"nanoGPT ({'torch.compile' if compile_model else 'PyTorch eager'})", "val_loss": full_val_loss, "val_loss_20_batches": val_loss,
          "ms_per_step": statistics.median(times), "wall_s": wall}


def step_times(log: str) -> list[float]:
  """nanoGPT's per-iteration times from its log, without iteration 0 and the iterations that evaluated."""
  eval_iters = {int(m.group(1)) for m in re.finditer(r"^step (\d+):", log, re.M)}
  return [float(m.group(2)) for m in re.finditer(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", log, re.M)
          if int(m.group(1)) > 0 and int(m.group(1)) not in eval_iters]


def run_peer(text: Path, python: str, compile_model: bool) -> dict:
  """torch_peer.py: the recipe in PyTorch (not nanoGPT), timed as nanoGPT times itself."""
  cmd = [python, str(Path(__file__).with_name("torch_peer.py")), f"--text={text}",
         *(["--compile"] if compile_model else [])]
  print("$", " ".join(cmd), flush=True)
  start = time.perf_counter()
  log = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  wall = time.perf_counter() - start
  return {"system": f"PyTorch peer ({'torch.compile' if compile_model else 'eager'})",
          "val_loss": float(re.findall(r"full val loss ([\d.]+)", log)[-1]),
          "val_loss_20_batches": float(re.findall(r"val loss ([\d.]+)", log)[-1]),
          "ms_per_step": statistics.median(step_times(log)), "wall_s": wall}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--text", type=Path, required=True, help="tiny shakespeare input.txt")
  parser.add_argument("--nanogpt_dir", type=Path, help="a nanoGPT checkout")
  parser.add_argument("--torch_python", default=sys.executable, help="a Python with torch, for nanoGPT")
  parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lmjax-nanogpt-benchmark")
  parser.add_argument("--data_dir", type=Path, default=Path(tempfile.gettempdir()) / "lmjax-nanogpt-benchmark-data",
                      help="lmjax's prepared data, kept between runs ('' to prepare inside the workdir each time)")
  parser.add_argument("--nanogpt_compile", action="store_true",
                      help="also run nanoGPT with --compile=True (needs a C++ compiler for torch.compile's CPU code)")
  parser.add_argument("--peer", action="store_true", help="also run torch_peer.py (PyTorch eager)")
  parser.add_argument("--peer_compile", action="store_true", help="also run torch_peer.py under torch.compile")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("lmjax_flags", nargs="*", help="extra lmjax flags, e.g. --config.train.steps_per_call=1")
  args = parser.parse_args()

  text = args.text.resolve()
  data_dir = args.data_dir if str(args.data_dir) else None
  rows = []
  for round_ in range(1, args.rounds + 1):
    group = [run_lmjax(text, args.workdir, args.lmjax_flags, data_dir)]
    if args.nanogpt_dir:
      group.append(run_nanogpt(text, args.nanogpt_dir.resolve(), args.torch_python))
      if args.nanogpt_compile:
        group.append(run_nanogpt(text, args.nanogpt_dir.resolve(), args.torch_python, compile_model=True))
    if args.peer:
      group.append(run_peer(text, args.torch_python, False))
    if args.peer_compile:
      group.append(run_peer(text, args.torch_python, True))
    base = group[1 if len(group) > 1 else 0]["ms_per_step"]  # nanoGPT, else the eager peer
    rows.extend({**r, "round": round_, "base": base} for r in group)
  print("\n| round | system | val loss (all tokens) | val loss (20-batch estimate) | ms/step (median) | "
        "train tokens/s | wall time (s) | speed vs the round's eager PyTorch row |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    estimate = "" if r["val_loss_20_batches"] != r["val_loss_20_batches"] else f"{r['val_loss_20_batches']:.4f}"
    print(f"| {r['round']} | {r['system']} | {r['val_loss']:.4f} | {estimate} | {r['ms_per_step']:.1f} | "
          f"{TOKENS_PER_STEP / r['ms_per_step'] * 1000:,.0f} | {r['wall_s']:.0f} | "
          f"{r['base'] / r['ms_per_step']:.2f}x |")


if __name__ == "__main__":
  main()
