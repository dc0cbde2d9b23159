"""Summarizing Debian package descriptions: the encoder-decoder against a decoder-only GPT, each tuned, 3 seeds.

The pairs come from experiments/summarization/prepare_data.py (long description -> one-line synopsis, split by
source package). Both models read the same sentencepiece unigram tokens (2,000 ids, trained on the train pairs),
the description cut to 96 tokens and the synopsis to 24, and are trained for 1500 steps of 16 pairs (0.44 of an
epoch) with label-smoothed cross-entropy on the synopsis tokens. The encoder-decoder (task='seq2seq') reads the
description with a bidirectional encoder; the GPT (task='seq2seq_lm') reads `<bos> description <sep>` and
continues with the synopsis. At the last step both decode the first 500 pairs of the validation split
('eval', chooses the learning rate) and of the test split ('test', reported) with beam search (4 beams, length
penalty 0.6) and score ROUGE-1/2/L; the losses are over every pair of both splits.

  python experiments/summarization/prepare_data.py                     # data/debian_descriptions/*.tsv
  python -m lmjax.sweep --config=experiments/summarization/config.py:tune --workdir=runs/summarization
  python -m lmjax.report runs/summarization --select=eval/rougeL
  python -m lmjax.sweep --config=experiments/summarization/config.py:final --workdir=runs/summarization
  python -m lmjax.report runs/summarization --select=eval/rougeL --metric=rougeL \\
      "--baseline=name=encdec,task=seq2seq,layers=2,lr=0.002"
  python -m lmjax.sweep --config=experiments/summarization/config.py:long --workdir=runs/summarization
  python experiments/summarization/lead_baseline.py --examples=500     # the lead-sentence baseline's ROUGE
"""

from lmjax.config import base_config

DATA = "data/debian_descriptions"


def get_config(arg: str = ""):
  del arg  # the sweep's phase (tune, final) changes the points, not the config
  c = base_config()
  c.task = "seq2seq"
  c.data.source = "files"
  c.data.paths = f"{DATA}/train.tsv"
  c.seq2seq.eval_paths = f"{DATA}/validation.tsv"  # chooses the learning rates
  c.seq2seq.test_paths = f"{DATA}/test.tsv"  # reported; never used for a choice
  c.data.seq_len = 128
  c.tokenizer.kind = "unigram"
  c.tokenizer.vocab_size = 2000
  c.tokenizer.max_training_chars = 5_000_000
  c.seq2seq.source_max_len = 96
  c.seq2seq.target_max_len = 24
  c.seq2seq.label_smoothing = 0.1
  c.seq2seq.beam_size = 4
  c.seq2seq.length_penalty = 0.6
  c.seq2seq.metrics = "rouge"
  c.seq2seq.eval_decode_examples = 500
  c.model.name = "encdec"
  c.model.num_layers = 2  # encoder layers; the decoder has as many (model.num_decoder_layers=0)
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 128  # the GPT's rows: <bos>, 95 description tokens, <sep>, up to 24 decoded tokens
  c.model.position = "learned"
  c.model.dropout = 0.1
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 1e-4
  c.optim.warmup_steps = 200
  c.train.batch_size = 16
  c.train.num_steps = 1500
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 1500  # decoding 1,000 pairs by beam search is most of a run's eval cost: once, at the end
  c.train.checkpoint_every = 750
  c.train.keep_checkpoints = 1
  c.train.eval_batches = 0  # the loss over every validation and test pair; ROUGE over the first 500
  c.train.eval_batch_size = 50
  c.train.num_samples = 0
  c.train.async_checkpoints = False
  return c


def architectures(h):
  """The encoder-decoder (2 + 2 layers) and a 4-layer GPT, both width 128 (parameter counts in the README)."""
  return h.zip([h.sweep("model.name", ["encdec", "gpt"]), h.sweep("task", ["seq2seq", "seq2seq_lm"]),
                h.sweep("model.num_layers", [2, 4])])


LEARNING_RATES = [1e-3, 2e-3, 4e-3]


def get_hyper(h):
  if h.arg == "tune":
    return h.product([h.tune(architectures(h), learning_rate=LEARNING_RATES), h.seeds(1)])
  if h.arg not in ("final", "long"):
    raise ValueError("give the phase: --config=experiments/summarization/config.py:tune (or :final, :long)")
  # selection.json also lists the :long run's group; the 1500-step protocol's choices are those without it
  chosen = [p for p in h.selected() if "train.num_steps" not in p]
  if h.arg == "final":
    return h.product([chosen, h.seeds(3)])
  # long: the encoder-decoder's chosen rate for 4x the steps: does more training make it read?
  encdec = [p for p in chosen if p["model.name"] == "encdec"]
  return h.product([encdec, h.sweep("train.num_steps", [6000]), h.sweep("train.eval_every", [3000]), h.seeds(1)])
