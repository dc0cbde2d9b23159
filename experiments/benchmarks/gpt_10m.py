"""A 10.8M-parameter GPT: nanoGPT's shakespeare-char GPU model shape (6 layers, 6 heads, width 384, context 256)
with lmjax's 263-id byte vocabulary, batch 8 so that a step takes about a second on a 2-core CPU.

  python experiments/benchmarks/benchmark.py --config=experiments/benchmarks/gpt_10m.py
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.seq_len = 256
  c.tokenizer.kind = "byte"
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.d_model = 384
  c.model.mlp_dim = 1536
  c.model.max_len = 256
  c.train.batch_size = 8
  return c
