"""Peak host memory (RSS) of importing a sharded Llama checkpoint, against the checkpoint's size.

Writes a random Llama checkpoint of about --mb megabytes in --shards safetensors files (transformers' layout, no
torch needed), then imports it in a fresh process on --devices simulated CPU devices with an fsdp mesh and reports
that process's peak RSS. On CPU the "devices" are host memory, so the placed parameters (and the optimizer moments
the step-0 train state holds, 2x more) are resident too: the figure to compare with the largest shard is the peak
above the baseline and above what the placed state itself occupies.

  python experiments/hf_checkpoints/import_memory.py --mb=400 --shards=4 --devices=8
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_checkpoint(d: Path, mb: float, shards: int) -> int:
  from safetensors.numpy import save_file
  D, F, H, K, V = 512, 1536, 8, 2, 8000
  per_layer = 4 * (2 * D * D + 2 * D * D // 4) + 4 * 3 * D * F
  layers = max(1, int((mb * 1e6 - 8 * V * D) / per_layer))
  tensors = {"model.embed_tokens.weight": (V, D), "lm_head.weight": (V, D), "model.norm.weight": (D,)}
  for i in range(layers):
    p = f"model.layers.{i}."
    tensors |= {p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (D * K // H, D),
                p + "self_attn.v_proj.weight": (D * K // H, D), p + "self_attn.o_proj.weight": (D, D),
                p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D), p + "mlp.down_proj.weight": (D, F),
                p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)}
  names = list(tensors)
  rng = np.random.default_rng(0)
  weight_map = {}
  for s in range(shards):
    part = names[s::shards]
    name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    save_file({n: rng.standard_normal(tensors[n], np.float32) * 0.02 for n in part}, str(d / name),
              metadata={"format": "pt"})
    weight_map |= {n: name for n in part}
  (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": V, "hidden_size": D,
                                             "intermediate_size": F, "num_hidden_layers": layers,
                                             "num_attention_heads": H, "num_key_value_heads": K}))
  vocab = {f"t{i}": i for i in range(V - 3)} | {"<unk>": V - 3, "<s>": V - 2, "</s>": V - 1}
  (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab,
                                                                            "unk_token": "<unk>"},
                                                "pre_tokenizer": {"type": "Whitespace"}, "added_tokens": []}))
  (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
  return layers


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def after(phases: dict[str, float], name: str, fn):
  """fn, recording the process's peak RSS so far when it returns under phases[name]."""
  def wrapped(*args, **kwargs):
    out = fn(*args, **kwargs)
    phases[name] = round(peak_rss_mib(), 1)
    return out
  return wrapped


def child(hf_dir: str, workdir: str) -> None:
  from lmjax import checkpoint
  from lmjax.config import base_config
  from lmjax.hf import import_checkpoint as importer
  from lmjax.hf.files import CheckpointWeights
  base = base_config()
  base.mesh.data, base.mesh.fsdp = 1, -1
  base.train.batch_size = 64
  base_rss = peak_rss_mib()
  phases: dict[str, float] = {}  # peak RSS when each phase ends (the peak is cumulative)
  importer.load_params = after(phases, "peak_after_reading_mib", importer.load_params)
  importer._train_state = after(phases, "peak_after_train_state_mib", importer._train_state)  # pylint: disable=protected-access
  checkpoint.Checkpointer.save = after(phases, "peak_after_checkpoint_mib", checkpoint.Checkpointer.save)
  result = importer.import_checkpoint(hf_dir, workdir, base)
  peak = peak_rss_mib()
  weights = CheckpointWeights(Path(hf_dir))
  total = sum(p.stat().st_size for p in weights.files) / 2**20
  state = 3 * result.num_params * 4 / 2**20  # params + two Adam moments, float32, resident on the CPU "devices"
  print(json.dumps({"checkpoint_mib": round(total, 1), "largest_shard_mib": round(weights.largest_file_bytes / 2**20, 1),
                    "params": result.num_params, "baseline_rss_mib": round(base_rss, 1), "peak_rss_mib": round(peak, 1),
                    "placed_state_mib": round(state, 1), **phases,
                    "peak_above_baseline_and_state_mib": round(peak - base_rss - state, 1)}))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--mb", type=float, default=400)
  parser.add_argument("--shards", type=int, default=4)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--child", nargs=2)
  args = parser.parse_args()
  if args.child:
    child(*args.child)
    return
  tmp = Path(tempfile.mkdtemp())
  (tmp / "ckpt").mkdir()
  write_checkpoint(tmp / "ckpt", args.mb, args.shards)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  out = subprocess.run([sys.executable, __file__, "--child", str(tmp / "ckpt"), str(tmp / "run")], env=env,
                       capture_output=True, text=True, check=True)
  print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
