"""Smoke test: a two-layer model that trains in seconds. Used by the tests and for checking a setup.

`python -m lmjax.main --config=configs/tiny.py --workdir=/tmp/tiny`
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.seq_len = 32
  c.tokenizer.kind = "char"
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.d_model = 32
  c.model.mlp_dim = 64
  c.model.max_len = 32
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 5
  c.train.batch_size = 8
  c.train.num_steps = 40
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.checkpoint_every = 20
  c.train.eval_batches = 4
  c.train.sample_length = 40
  c.train.async_checkpoints = False
  return c
