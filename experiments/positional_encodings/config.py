"""Position encodings: which of the six does a small character-level GPT learn best with at its training context,
and which keep working at twice and four times that context? Three seeds each.

A 4-layer, width-64 GPT (4 heads, MLP 256: 0.21M parameters, a quarter of configs/default.py's; 1000 steps) on
the embedded corpus, trained
on 128-character windows and evaluated on the first quarter of the validation split (data.eval_split=
'validation[:25%]', 78,000 characters) whole, at 128, 256 and 512 characters (splits `eval_len256`,
`eval_len512`), so that the three lengths score exactly the same characters. model.max_len is 512 for every point, so the learned table has rows for positions
128-511; training never reaches them (they get no gradient), which is what learned positions do when a model is
run past its training length. Every encoding trains at the same learning rate (no tuning), so the validation split
is reported as it is.

  python -m lmjax.sweep --config=experiments/positional_encodings/config.py \
      --workdir=runs/positional_encodings --parallel=1
  python -m lmjax.report runs/positional_encodings --metric=loss --baseline=position=learned
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.data.eval_split = "validation[:25%]"  # scored whole at each length: the same characters three times
  c.tokenizer.kind = "char"
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 64
  c.model.mlp_dim = 256
  c.model.max_len = 512  # rows 128..511 of a learned table exist but are never trained
  c.model.position = "learned"
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 2e-4
  c.optim.warmup_steps = 100
  c.train.batch_size = 16
  c.train.num_steps = 1000
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.eval_batches = 0  # the whole of data.eval_split, so all lengths score the same target tokens
  c.train.extra_eval_seq_lens = "256,512"
  c.train.sample_length = 200
  c.train.num_samples = 1
  c.train.async_checkpoints = False
  return c


def get_hyper(h):
  return h.product([h.sweep("model.position", ["none", "sinusoidal", "learned", "rope", "alibi", "t5"]),
                    h.seeds(3)])
