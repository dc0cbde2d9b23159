"""Baseline: a two-layer LSTM language model on the embedded corpus, character-level.

Width 192, tied embeddings, windows of 128 characters with the state reset at each document start; a few minutes
on a 2-core CPU, evaluated on the same validation windows as configs/default.py.
  python -m lmjax.main --config=configs/lstm.py --workdir=runs/lstm
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.tokenizer.kind = "char"
  c.model.name = "lstm"
  c.model.num_layers = 2
  c.model.d_model = 192
  c.model.max_len = 128
  c.model.init_std = 1.0  # embedding scale: without normalization, 0.02 learns slowly
  c.model.dropout = 0.0
  c.model.tie_embeddings = True
  c.optim.learning_rate = 3e-3
  c.optim.min_learning_rate = 3e-4
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
