"""Baseline: a character-level 5-gram model with interpolated Kneser-Ney smoothing on the embedded corpus.

Counted in one pass over the training split (seconds, no gradient steps), then scored on the same validation
windows as configs/default.py, so its bits per character compare directly with the GPT's. The argument sets n:
  python -m lmjax.main --config=configs/ngram.py --workdir=runs/ngram
  python -m lmjax.main --config=configs/ngram.py:3 --workdir=runs/trigram
"""

from lmjax.config import base_config


def get_config(order: str = ""):
  c = base_config()
  c.data.source = "embedded"
  c.data.seq_len = 128
  c.tokenizer.kind = "char"
  c.model.name = "ngram"
  c.model.ngram_order = int(order) if order else 5
  c.model.max_len = 128
  c.train.batch_size = 16  # the evaluation batch: the same windows as configs/default.py
  c.train.eval_batches = 40
  c.train.sample_length = 300
  return c
