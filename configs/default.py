"""The README's first command: a small character-level GPT on the corpus that ships with lmjax.

About five minutes on a 2-core CPU. `python -m lmjax.main --config=configs/default.py --workdir=runs/default`
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.tokenizer.kind = "char"
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 128
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 2e-4
  c.optim.warmup_steps = 100
  c.train.batch_size = 16
  c.train.num_steps = 2500
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.eval_batches = 40
  c.train.sample_length = 300
  return c
