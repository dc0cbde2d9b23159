"""Baseline: a feed-forward neural language model (Bengio et al., 2003) on the embedded corpus, character-level.

Each character is predicted from the embeddings of the previous 16 through one hidden layer; a few minutes on a
2-core CPU, evaluated on the same validation windows as configs/default.py.
  python -m lmjax.main --config=configs/ffnn.py --workdir=runs/ffnn
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.tokenizer.kind = "char"
  c.model.name = "ffnn"
  c.model.ffnn_context = 16
  c.model.num_layers = 1
  c.model.d_model = 64
  c.model.mlp_dim = 512
  c.model.max_len = 128
  c.model.init_std = 1.0  # embedding scale: without normalization, 0.02 learns slowly
  c.model.activation = "gelu"
  c.model.tie_embeddings = False
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
