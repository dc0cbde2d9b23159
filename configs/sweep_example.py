"""A sweep: which position encoding does a small character-level GPT learn best with? About a minute per point on
a 2-core CPU.

`python -m lmjax.sweep --config=configs/sweep_example.py --workdir=runs/positions` runs one point per value of
model.position; `python -m lmjax.report runs/positions` compares them. `get_config` alone is an ordinary config.
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 64
  c.tokenizer.kind = "char"
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.d_model = 64
  c.model.mlp_dim = 256
  c.model.max_len = 64
  c.optim.learning_rate = 3e-3
  c.optim.min_learning_rate = 3e-4
  c.optim.warmup_steps = 50
  c.train.batch_size = 16
  c.train.num_steps = 600
  c.train.steps_per_call = 10
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.train.eval_batches = 20
  c.train.sample_length = 100
  c.train.async_checkpoints = False
  return c


def get_hyper(h):
  # h.product([...]) would cross this with other sweeps, h.zip([...]) would step through several in lockstep.
  return h.sweep("model.position", ["learned", "sinusoidal", "rope", "alibi"])
