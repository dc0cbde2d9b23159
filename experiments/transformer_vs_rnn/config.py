"""Architectures at matched size: Kneser-Ney n-grams, a feed-forward LM, an LSTM and a GPT on the same data.

Character-level, embedded corpus, 128-character windows, the same 40 x 16 validation windows as configs/default.py
for every point. The three neural models have 0.61-0.62M parameters each and train for the same 1500 steps of 16
windows; the n-gram models (orders 3, 5, 7) are counted in one pass over the training split.

  python -m lmjax.sweep --config=experiments/transformer_vs_rnn/config.py --workdir=runs/transformer_vs_rnn \
      --parallel=1
  python -m lmjax.report runs/transformer_vs_rnn --metric=bits_per_char
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.tokenizer.kind = "char"
  c.model.name = "gpt"
  c.model.num_layers = 3
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 128
  c.model.position = "learned"
  c.model.activation = "gelu"
  c.model.ffnn_context = 16  # feed-forward LM only
  c.model.dropout = 0.0
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 2e-4
  c.optim.warmup_steps = 100
  c.train.batch_size = 16
  c.train.num_steps = 1500
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.eval_batches = 40  # with batch 16: the validation windows of configs/default.py, ngram.py, ffnn.py, lstm.py
  c.train.sample_length = 200
  c.train.num_samples = 1
  c.train.async_checkpoints = False
  return c


def get_hyper(h):
  # Sizes and learning rates per model: the GPT of configs/default.py with 3 layers instead of 4, the LSTM of
  # configs/lstm.py, the feed-forward LM of configs/ffnn.py with a hidden layer of 544 instead of 512, so that all
  # three have 606-622 thousand parameters. init_std is the embedding scale (1.0 for the unnormalized baselines).
  neural = h.zip([
      h.sweep("model.name", ["ffnn", "lstm", "gpt"]),
      h.sweep("model.num_layers", [1, 2, 3]),
      h.sweep("model.d_model", [64, 192, 128]),
      h.sweep("model.mlp_dim", [544, 512, 512]),
      h.sweep("model.tie_embeddings", [False, True, True]),
      h.sweep("model.init_std", [1.0, 1.0, 0.02]),
      h.sweep("optim.learning_rate", [2e-3, 3e-3, 2e-3]),
      h.sweep("optim.min_learning_rate", [2e-4, 3e-4, 2e-4]),
  ])
  ngrams = h.zip([h.sweep("model.name", ["ngram"] * 3), h.sweep("model.ngram_order", [3, 5, 7])])
  return ngrams + neural
