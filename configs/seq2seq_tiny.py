"""A tiny encoder-decoder for smoke tests: a few hundred steps on a CPU learn a synthetic transduction.

  python -m lmjax.main --config=configs/seq2seq_tiny.py:pairs.tsv --workdir=/tmp/s2s

The argument is a TSV of `source<TAB>target` pairs (tests/test_seq2seq.py writes reversed letter strings); 10% of
them are held out for validation, which is decoded with beam search and scored with SacreBLEU at each eval.
"""

from lmjax.config import base_config


def get_config(paths: str = "pairs.tsv"):
  c = base_config()
  c.task = "seq2seq"
  c.data.source = "files"
  c.data.paths = paths
  c.data.seq_len = 24
  c.tokenizer.kind = "char"
  c.seq2seq.source_max_len = 24
  c.seq2seq.target_max_len = 24
  c.seq2seq.label_smoothing = 0.0
  c.seq2seq.beam_size = 2
  c.seq2seq.bleu_tokenize = "char"  # the synthetic targets are strings of characters without spaces
  c.seq2seq.eval_decode_examples = 64
  c.model.name = "encdec"
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_model = 64
  c.model.mlp_dim = 128
  c.model.max_len = 32
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  c.train.batch_size = 32
  c.train.num_steps = 800
  c.train.steps_per_call = 50
  c.train.log_every = 100
  c.train.eval_every = 800
  c.train.checkpoint_every = 800
  c.train.eval_batches = 2
  c.train.num_samples = 0
  c.train.plot = False
  c.train.tensorboard = False
  c.train.async_checkpoints = False
  return c
