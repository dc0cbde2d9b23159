"""A small BERT (masked LM + next-sentence prediction) on the corpus that ships with lmjax: about a minute on a
2-core CPU.

  python -m lmjax.main --config=configs/bert_tiny.py --workdir=runs/bert_tiny

Character-level, so masked tokens are letters to fill in from both sides. Rotary positions rather than BERT's
learned table: a masked token carries no information of its own, so everything it predicts arrives by attention,
and with a learned table the model first has to discover "look at my neighbours". With learned positions this
config sat at the unigram loss (MLM accuracy ~0.28) until step ~700; with RoPE it is past that by step 200 and
reaches MLM accuracy 0.57 at step 600 (always guessing a space: 0.175). Next-sentence prediction stays at chance
at this size and step count (on documents with distinct vocabularies, tests/test_bert.py, it reaches ~0.9).
"""

from lmjax.config import base_config


def get_config():
  c = base_config()
  c.task = "mlm"
  c.data.source = "embedded"
  c.data.seq_len = 64
  c.tokenizer.kind = "char"
  c.model.name = "bert"
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 64
  c.model.position = "rope"
  c.model.pre_norm = False  # BERT is post-norm
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 2e-4
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.01
  c.train.batch_size = 32
  c.train.num_steps = 600
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  c.train.eval_batches = 16
  c.train.num_samples = 0
  return c
