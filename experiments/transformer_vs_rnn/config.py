"""Architectures at matched size and compute: Kneser-Ney n-grams, a feed-forward LM, an LSTM and a GPT, each tuned.

Character-level, embedded corpus, 128-character windows. The validation split (the last 10% of the chapters) is
cut in two: its first half ('eval', data.eval_split='validation[:50%]') chooses each model's learning rate, its
second half ('test', data.test_split='validation[50%:]') is reported and never used for a choice. The three neural
models have 0.25M parameters each (249-250 thousand) and train for 3000 steps of 16 windows (1.6 epochs); the
n-gram models (orders 3, 5, 7) are counted in one pass and have no seed to vary.

  # 1. tune: every neural model on its grid of learning rates (LEARNING_RATES), seed 0 (FILE:tune)
  python -m lmjax.sweep --config=experiments/transformer_vs_rnn/config.py:tune --workdir=runs/transformer_vs_rnn
  # 2. choose each model's learning rate on eval/bits_per_char; writes runs/transformer_vs_rnn/selection.json
  python -m lmjax.report runs/transformer_vs_rnn --select=eval/bits_per_char
  # 3. the chosen settings under seeds 0, 1, 2 (seed 0 is the tuning run, already finished), and the n-grams
  python -m lmjax.sweep --config=experiments/transformer_vs_rnn/config.py:final --workdir=runs/transformer_vs_rnn
  # 4. the report: each model's chosen setting, its test split, mean and 95% CI over the seeds, against the GPT
  python -m lmjax.report runs/transformer_vs_rnn --select=eval/bits_per_char --metric=bits_per_char \\
      --baseline=name=gpt
  # 5. each chosen rate for 4x the steps (LONG_STEPS), seeds 0-2: do the curves flatten, does the order hold?
  python -m lmjax.sweep --config=experiments/transformer_vs_rnn/config.py:long --workdir=runs/transformer_vs_rnn
  # then name=gpt matches two groups: give the baseline in full (the README's command), ending ",steps=12000"
"""

from lmjax.config import base_config


def get_config(arg: str = ""):
  del arg  # the sweep's phase (tune, final) changes the points, not the config
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.data.eval_split = "validation[:50%]"  # chooses the learning rates
  c.data.test_split = "validation[50%:]"  # reported; never used for a choice
  c.tokenizer.kind = "char"
  c.model.name = "gpt"
  c.model.num_layers = 3
  c.model.num_heads = 4
  c.model.d_model = 80
  c.model.mlp_dim = 320
  c.model.max_len = 128
  c.model.position = "learned"
  c.model.activation = "gelu"
  c.model.ffnn_context = 16  # feed-forward LM only
  c.model.dropout = 0.0
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 1e-4
  c.optim.warmup_steps = 200
  c.train.batch_size = 16
  c.train.num_steps = 3000
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.train.eval_batches = 0  # each half of the validation split whole: 1,207 and 1,244 windows
  c.train.sample_length = 200
  c.train.num_samples = 1
  c.train.async_checkpoints = False
  return c


def architectures(h):
  """The three neural models at 249-250 thousand parameters: a 3-layer GPT of width 80 (4 heads, MLP 320, learned
  positions, tied embeddings: 250,320), a 2-layer LSTM of width 122 (tied: 248,880), and a feed-forward LM reading
  16 characters of width 32 through one 416-wide hidden layer (untied: 249,328). init_std is the embedding scale
  (1.0 for the baselines, whose inputs nothing normalizes)."""
  return h.zip([
      h.sweep("model.name", ["ffnn", "lstm", "gpt"]),
      h.sweep("model.num_layers", [1, 2, 3]),
      h.sweep("model.d_model", [32, 122, 80]),
      h.sweep("model.mlp_dim", [416, 320, 320]),
      h.sweep("model.tie_embeddings", [False, True, True]),
      h.sweep("model.init_std", [1.0, 1.0, 0.02]),
  ])


# Factor-2 grids. They were 1.5e-3 to 6e-3 (around the 2e-3 to 3e-3 of the earlier study) until every neural model
# chose its top rate; they grew upward until no model's choice sat on the edge of its own grid.
_GRID = [1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2]
LEARNING_RATES = {"ffnn": _GRID + [4.8e-2], "lstm": _GRID + [4.8e-2], "gpt": _GRID}
LONG_STEPS = 12000


def get_hyper(h):
  ngrams = h.zip([h.sweep("model.name", ["ngram"] * 3), h.sweep("model.ngram_order", [3, 5, 7])])
  if h.arg == "tune":
    models = architectures(h)
    tuned = [p for m in models for p in h.tune([m], learning_rate=LEARNING_RATES[m["model.name"]])]
    return h.product([tuned, h.seeds(1)])
  if h.arg == "ngrams":  # counted in seconds, with nothing to tune or seed; also part of the final sweep
    return ngrams
  if h.arg not in ("final", "long"):
    raise ValueError("give the phase: --config=experiments/transformer_vs_rnn/config.py:tune "
                     "(or :ngrams, :final, :long)")
  # selection.json lists the n-grams and the :long runs' groups too; the 3000-step choices are the rest
  neural = [p for p in h.selected() if p["model.name"] != "ngram" and "train.num_steps" not in p]
  if h.arg == "final":
    return h.product([neural, h.seeds(3)]) + ngrams
  # long: each model's chosen rate for 4x the steps (6.4 epochs): do the curves flatten, does the order hold?
  # The README reports all three seeds; rerunning the phase skips the finished points.
  return h.product([neural, h.sweep("train.num_steps", [LONG_STEPS]), h.seeds(3)])
