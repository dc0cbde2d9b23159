r"""Training-step throughput, model FLOPs utilization and memory of one config on the devices JAX sees.

  python experiments/benchmarks/benchmark.py --config=configs/gpt2_small.py \
      --config.train.batch_size=16 --config.model.attention_impl=jax --steps=20

Compiles exactly the train step that `lmjax.main` would run for the config (`lmjax.programs.build`), feeds it
random token batches that are already on the devices (no tokenizer, no data, no input pipeline in the timing), and
prints a markdown table row:

  compile s    lowering (tracing to StableHLO) + XLA compilation of the train call, timed separately.
  step ms      median / mean wall time per optimizer step over --steps timed steps, after --warmup steps; each
               call is waited on (block_until_ready), and a call of train.steps_per_call steps counts as that many.
  tokens/s     train.batch_size * data.seq_len / median step time, all devices together.
  TFLOP/s      model FLOPs per token * tokens/s, as the model family counts them (ModelConfig.flops_per_token in
               lmjax/models/); for the Transformer the nanoGPT / PaLM (appendix B) convention:
                 FLOPs per token = 6 * N + 12 * n_layers * d_model * seq_len
               N counts the parameters that multiply every token: all parameters except the learned position
               table (a lookup), and, when embeddings are untied, except the input token table too (the lm_head
               does the output matmul). With tied embeddings (the default) the one token table is counted once, for
               the logits matmul. 6 = forward (2) + backward (4) multiply-adds; 12 * L * D * T is the attention
               scores and weighted sum, forward and backward, over the full T x T square as nanoGPT and PaLM count
               it (no discount for the causal mask). Rematerialized recomputation is not model FLOPs, so remat lowers
               this number: it is MFU, not hardware FLOPs utilization. The feed-forward LM and the LSTM count 6 * N;
               families that count nothing (the n-gram, BERT's heads) show '-'.
  MFU          TFLOP/s / (peak TFLOP/s per device * devices). The peak is --peak_tflops, or the dense bf16 tensor
               peak from the table below by device kind, also for float32 compute (so a float32 MFU reads low). On
               CPU there is no table entry and MFU is '-' unless --peak_tflops is given.
  peak memory  GPU/TPU: the largest memory_stats()['peak_bytes_in_use'] over the devices, after the run
               ('device peak'). Elsewhere: the compiled step's memory_analysis(), argument + output + temp - alias
               bytes per device ('compiled estimate').

Run several variants of one config and get one table with --compare; each variant runs in its own process (its
own compile, its own device memory peak):

  python experiments/benchmarks/benchmark.py --config=configs/default.py \
      --compare='model.remat=none; model.remat=full; model.remat=save_dots; train.microbatches=4'
"""

from __future__ import annotations

import json
import math
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lmjax import programs, sharding  # noqa: E402
from lmjax.config_validation import validate  # noqa: E402
from lmjax.models import model_config  # noqa: E402
from lmjax.data.tokenizers import NUM_SPECIAL  # noqa: E402
from lmjax.state import count_params, create_train_state  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/gpt2_small.py[:arg].",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed optimizer steps (rounded up to whole train.steps_per_call calls).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation (the first call included).")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "Vocabulary size; 0: config.tokenizer.vocab_size when set, else the "
                              f"byte tokenizer's {NUM_SPECIAL + 256} (char vocabularies depend on the corpus).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device for MFU; 0: from the built-in table.")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Also write the row(s) as JSON to this file.")
_MARKDOWN = flags.DEFINE_boolean("markdown", True, "Print the markdown table.")
_HEADER = flags.DEFINE_boolean("header", True, "Print the table's header lines; --noheader prints only the row, to "
                               "append runs to one table.")
_COMPARE = flags.DEFINE_string("compare", "", "Variants separated by ';', each a space-separated list of field=value "
                               "overrides on top of --config (an empty variant is the config as given). Each runs "
                               "in its own process; one table is printed.")
flags.mark_flag_as_required("config")

# Dense (no sparsity) bf16 tensor-core / MXU peaks per device, TFLOP/s, from the vendors' datasheets. Matched in
# order against jax.Device.device_kind, so the PCIe H100 comes before the generic one.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM, e.g. 'NVIDIA H100 80GB HBM3'
    ("H200", 989.0),
    ("A100", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p reports itself as 'TPU v5'
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v6e", 918.0),
)

# Shown as table columns, so left out of the 'config' column's list of overrides.
_COLUMN_FIELDS = ("model.dtype", "model.remat", "model.attention_impl", "train.batch_size", "data.seq_len")
GIB = 2.0 ** 30


def table_peak_tflops(device_kind: str) -> float | None:
  for key, tflops in PEAK_BF16_TFLOPS:
    if key.lower() in device_kind.lower():
      return tflops
  return None


def command_line_overrides(argv: list[str]) -> list[str]:
  """'--config.model.remat=full' -> 'model.remat=full', in command-line order."""
  return [a[len("--config."):] for a in argv if a.startswith("--config.")]


def config_label(argv: list[str]) -> str:
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:  # '--config PATH'
    spec = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else "?"
  path, _, arg = spec.partition(":")
  label = Path(path).stem + (f":{arg}" if arg else "")
  # Shown without the section ('model.num_layers=6' -> 'num_layers=6') to keep the column narrow.
  extra = [o.split(".", 1)[-1] for o in command_line_overrides(argv) if o.split("=", 1)[0] not in _COLUMN_FIELDS]
  return label + (f" ({', '.join(extra)})" if extra else "")


def matmul_params(params: Any, tie_embeddings: bool) -> int:
  """N of the FLOPs formula: parameters that multiply every token (see the module docstring)."""
  total = count_params(params)
  if "embedding" in params.get("positions", {}):
    total -= int(np.prod(params["positions"]["embedding"].shape))
  if not tie_embeddings and "embedding" in params.get("embed", {}):
    total -= int(np.prod(params["embed"]["embedding"].shape))
  return total


def flops_per_token(config: Any, vocab_size: int, params: Any) -> float | None:
  """The model family's own count (lmjax/models/: ModelConfig.flops_per_token), the one lmjax.report uses."""
  return model_config(config, vocab_size).flops_per_token(params, config.data.seq_len)


def random_batches(config: Any, vocab_size: int, calls: int, mesh, spec) -> list[dict[str, jax.Array]]:
  """Device-resident [S, B, L] batches of uniform random tokens, one document per row."""
  t, L = config.train, config.data.seq_len
  rng = np.random.default_rng(config.seed)
  out = []
  for _ in range(calls):
    tokens = rng.integers(0, vocab_size, size=(t.steps_per_call, t.batch_size, L + 1), dtype=np.int32)
    shape = tokens[..., 1:].shape
    local = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:],
             "segment_ids": np.ones(shape, np.int32),
             "positions": np.broadcast_to(np.arange(L, dtype=np.int32), shape).copy(),
             "loss_mask": np.ones(shape, np.float32)}
    out.append(sharding.global_batch(local, mesh, spec))
  return out


def measure(config: Any, argv: list[str]) -> dict[str, Any]:
  validate(config)
  vocab_size = _VOCAB.value or config.tokenizer.vocab_size or NUM_SPECIAL + 256
  t, m = config.train, config.model
  per_call = t.steps_per_call
  warmup_calls = max(1, math.ceil(_WARMUP.value / per_call))
  timed_calls = max(1, math.ceil(_STEPS.value / per_call))
  devices = jax.devices()

  progs = programs.build_without_data(config, vocab_size)
  with sharding.activate(progs.mesh, progs.rules):
    abstract_state = progs.abstract_state(config)
    start = time.perf_counter()
    lowered = progs.train_fn.lower(abstract_state, progs.abstract_train_batches(config), *progs.frozen_args())
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    state = create_train_state(progs.model, progs.optimizer, config.seed, progs.task.init_args(),
                               progs.state_shardings)
    # Two batches alternate: distinct inputs without timing a host-to-device copy per step.
    batches = random_batches(config, vocab_size, 2, progs.mesh, progs.train_batch_spec)
    start = time.perf_counter()
    state, metrics = compiled(state, batches[0])
    jax.block_until_ready((state, metrics))
    first_call_s = time.perf_counter() - start
    for i in range(1, warmup_calls):
      state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready((state, metrics))
    call_s = []
    for i in range(timed_calls):
      start = time.perf_counter()
      state, metrics = compiled(state, batches[i % 2])
      jax.block_until_ready((state, metrics))
      call_s.append(time.perf_counter() - start)
    final_loss = float(np.asarray(metrics["loss"])[-1])

  step_s = [s / per_call for s in call_s]
  median_s, mean_s = statistics.median(step_s), statistics.fmean(step_s)
  tokens_per_step = t.batch_size * config.data.seq_len
  tokens_per_s = tokens_per_step / median_s
  n_params = count_params(abstract_state.params)
  n_matmul = matmul_params(abstract_state.params, m.tie_embeddings)
  fpt = flops_per_token(config, vocab_size, abstract_state.params)
  achieved_tflops = None if fpt is None else fpt * tokens_per_s / 1e12

  kind = devices[0].device_kind
  peak_tflops = _PEAK.value or table_peak_tflops(kind)
  mfu = None if achieved_tflops is None or not peak_tflops else achieved_tflops / (peak_tflops * len(devices))

  analysis = compiled.memory_analysis()
  estimate = None
  if analysis is not None:
    estimate = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                - analysis.alias_size_in_bytes)
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  device_peak = max((s.get("peak_bytes_in_use", 0) for s in stats), default=0) or None
  memory, source = (device_peak, "device peak") if device_peak else (estimate, "compiled estimate")

  return {
      "config": config_label(argv), "overrides": command_line_overrides(argv),
      "command": " ".join(shlex.quote(a) for a in ["python", sys.argv[0], *argv]),
      "platform": devices[0].platform, "device_kind": kind, "num_devices": len(devices),
      "mesh": dict(progs.mesh.shape), "jax_version": jax.__version__,
      "params": n_params, "matmul_params": n_matmul, "vocab_size": vocab_size,
      "batch_size": t.batch_size, "seq_len": config.data.seq_len, "microbatches": t.microbatches,
      "steps_per_call": per_call, "dtype": m.dtype, "param_dtype": m.param_dtype, "remat": m.remat,
      "attention_impl": m.attention_impl,
      "lower_s": lower_s, "compile_s": compile_s, "first_call_s": first_call_s,
      "timed_steps": timed_calls * per_call, "warmup_steps": warmup_calls * per_call,
      "step_ms_median": median_s * 1e3, "step_ms_mean": mean_s * 1e3,
      "step_ms_min": min(step_s) * 1e3, "step_ms_max": max(step_s) * 1e3,
      "tokens_per_s": tokens_per_s, "flops_per_token": fpt, "achieved_tflops": achieved_tflops,
      "peak_tflops_per_device": peak_tflops, "mfu": mfu,
      "memory_bytes": memory, "memory_source": source, "device_peak_bytes": device_peak,
      "compiled_estimate_bytes": estimate, "final_loss": final_loss,
      # Host memory of this process (KiB on Linux): on CPU a check of the compiled estimate, compile included.
      "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }


HEADER = ("| config | devices | params | batch x seq | dtype | remat | attention | compile s (lower + XLA) | "
          "step ms (median / mean) | tokens/s | TFLOP/s | MFU | peak memory GiB (source) |")
SEPARATOR = "|" + "---|" * HEADER.count(" | ") + "---|"


def _ms(x: float) -> str:
  return f"{x:,.2f}" if x < 10 else f"{x:,.1f}"


def markdown_row(r: dict[str, Any]) -> str:
  tflops = "-" if r["achieved_tflops"] is None else f"{r['achieved_tflops']:.3g}"
  mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
  memory = "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / GIB:.4g} ({r['memory_source']})"
  return (f"| {r['config']} | {r['num_devices']} x {r['device_kind']} | {r['params']:,} | "
          f"{r['batch_size']} x {r['seq_len']} | {r['dtype']} | {r['remat']} | {r['attention_impl']} | "
          f"{r['lower_s'] + r['compile_s']:.1f} ({r['lower_s']:.1f} + {r['compile_s']:.1f}) | "
          f"{_ms(r['step_ms_median'])} / {_ms(r['step_ms_mean'])} | {r['tokens_per_s']:,.0f} | {tflops} | {mfu} | "
          f"{memory} |")


def print_table(rows: list[dict[str, Any]]) -> None:
  if not _MARKDOWN.value:
    return
  if _HEADER.value:
    print(HEADER)
    print(SEPARATOR)
  for r in rows:
    print(markdown_row(r))


def run_variants(argv: list[str]) -> list[dict[str, Any]]:
  """Each variant in a child process of this script, so compile caches and memory peaks do not carry over.

  This process never touches a device: on GPU it would otherwise reserve most of the memory the children need.
  A variant's overrides come after the shared ones on the child's command line, and the last value of a flag wins.
  """
  base = [a for a in argv[1:] if not a.startswith(("--compare", "--json_out", "--markdown", "--nomarkdown"))]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, variant in enumerate(_COMPARE.value.split(";")):
      out = Path(tmp) / f"{i}.json"
      cmd = [sys.executable, str(Path(__file__).resolve()), *base,
             *[f"--config.{o}" for o in variant.split()], f"--json_out={out}", "--nomarkdown"]
      print("$", " ".join(shlex.quote(a) for a in cmd), flush=True)
      subprocess.run(cmd, check=True)
      rows.extend(json.loads(out.read_text()))
  return rows


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if _COMPARE.value:
    rows = run_variants(sys.argv)
  else:
    row = measure(_CONFIG.value, sys.argv[1:])
    rows = [row]
    fpt = row["flops_per_token"]
    print(f"{row['config']}: {row['num_devices']} x {row['device_kind']} (mesh {row['mesh']}), "
          f"{row['params']:,} parameters (N = {row['matmul_params']:,} in the FLOPs formula), vocab "
          f"{row['vocab_size']:,}, {row['microbatches']} microbatch(es), {row['steps_per_call']} step(s) per call")
    print(f"compile: lower {row['lower_s']:.2f} s + XLA {row['compile_s']:.2f} s; first call {row['first_call_s']:.2f} s")
    print(f"step: median {row['step_ms_median']:.2f} ms, mean {row['step_ms_mean']:.2f} ms, min "
          f"{row['step_ms_min']:.2f}, max {row['step_ms_max']:.2f} over {row['timed_steps']} steps; "
          f"{row['tokens_per_s']:,.0f} tokens/s; final loss {row['final_loss']:.3f}")
    if fpt is not None:
      peak = row["peak_tflops_per_device"]
      print(f"model FLOPs/token {fpt:.4g} (the model family's count; for a Transformer 6 * "
            f"{row['matmul_params']:,} + 12 * L * D * {row['seq_len']}); "
            f"achieved {row['achieved_tflops']:.4g} TFLOP/s; peak "
            + (f"{peak:g} TFLOP/s per device ({'--peak_tflops' if _PEAK.value else 'dense bf16, built-in table'})"
               if peak else "unknown for this device (pass --peak_tflops)"))
    memory = lambda b: "-" if b is None else f"{b / GIB:.3f} GiB"
    print(f"memory: device peak {memory(row['device_peak_bytes'])}, compiled estimate "
          f"{memory(row['compiled_estimate_bytes'])}, process peak RSS {memory(row['process_peak_rss_bytes'])}\n",
          flush=True)
  if _JSON_OUT.value:
    Path(_JSON_OUT.value).write_text(json.dumps(rows, indent=1) + "\n")
  print_table(rows)


if __name__ == "__main__":
  app.run(main)
