r"""Memory per device of full fine-tuning against LoRA, from lmjax.aot's compile of the exact train step.

  python experiments/post_training/lora_memory.py --num_devices=8 [--shapes=gpt2_small,llama_1b] [--ranks=8,64] \
      [--remat=full]

For each model shape it compiles the step of task='causal_lm' (the step SFT runs: same model, loss and batch
layout) for a simulated mesh of --num_devices devices (2-way data x FSDP over the rest, the layout a fine-tune of a
model this size would use), once training every weight and once per LoRA rank (adapters on every attention and MLP
projection, base frozen), and prints parameters, optimizer state, the whole state and the total (state, batch,
temporaries) per device. The figures are XLA's CPU compiler's: buffer sizes and shardings are exact, temporaries an
estimate.
"""

import os
import sys


def _devices_first() -> None:
  count = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--num_devices=")), "8")
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
  os.environ["JAX_PLATFORMS"] = "cpu"


_devices_first()

import argparse  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lmjax.memory_check import check  # pylint: disable=wrong-import-position
from lmjax.config import base_config  # pylint: disable=wrong-import-position


def gpt2_small(c):
  """GPT-2 small, 124M: configs/gpt2_small.py's model, context 1024, bfloat16 compute."""
  from configs.gpt2_small import get_config  # pylint: disable=import-outside-toplevel
  g = get_config()
  c.model.update(g.model.to_dict())
  c.data.seq_len = 1024
  return c, 50304


def llama_1b(c):
  """The Llama 3.2 1B shape (1.24B): 16 layers, width 2048, 32 query and 8 key/value heads, SwiGLU 8192, RMSNorm,
  RoPE, no biases, tied embeddings, vocabulary 128,256; context 2048, bfloat16 compute."""
  m = c.model
  m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.mlp_dim = 16, 2048, 32, 8, 8192
  m.position, m.rope_base, m.norm, m.norm_eps, m.activation = "rope", 500000.0, "rmsnorm", 1e-5, "swiglu"
  m.use_bias, m.tie_embeddings, m.max_len, m.dtype, m.dropout = False, True, 2048, "bfloat16", 0.0
  c.data.seq_len = 2048
  return c, 128256


SHAPES = {"gpt2_small": gpt2_small, "llama_1b": llama_1b}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_devices", type=int, default=8)
  parser.add_argument("--shapes", default="gpt2_small,llama_1b")
  parser.add_argument("--ranks", default="8,64")
  parser.add_argument("--batch_per_device", type=int, default=1)
  parser.add_argument("--remat", default="none", help="model.remat: 'none', 'full' or 'save_dots'")
  args = parser.parse_args()
  n = jax.device_count()
  print(f"{n} simulated devices (mesh data=2 x fsdp={n // 2}), batch {args.batch_per_device} sequence per device, "
        f"AdamW (float32 moments), model.remat={args.remat}\n")
  print("| model | training | params | trainable | params/device GiB | optimizer state/device GiB | "
        "state/device GiB | temporaries/device GiB | total/device GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for shape in args.shapes.split(","):
    for rank in [0, *map(int, args.ranks.split(","))]:
      c = base_config()
      c, vocab = SHAPES[shape](c)
      c.tokenizer.vocab_size = vocab
      c.mesh.data, c.mesh.fsdp = 2, n // 2
      c.train.batch_size = args.batch_per_device * n
      c.model.remat = args.remat
      c.finetune.lora.rank = rank
      c.finetune.lora.alpha = float(2 * rank) if rank else 16.0
      r = check(c, vocab)
      trainable = r["trainable"] if rank else r["params"]
      label = f"LoRA r={rank}" if rank else "full"
      print(f"| {shape} | {label} | {r['params'] / 1e6:,.1f}M | {trainable / 1e6:,.2f}M | {r['params_gib']:.3f} | "
            f"{r['opt_state_gib']:.3f} | {r['state_gib']:.3f} | {r['temp_gib']:.3f} | {r['total_gib']:.3f} |",
            flush=True)


if __name__ == "__main__":
  main()
