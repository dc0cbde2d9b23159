"""English -> German on software UI strings: the gettext catalogs of five Python packages, a small encoder-decoder
trained on a 2-core CPU (experiments/translation/README.md has the result).

  python experiments/translation/prepare_data.py --out=data/po_en_de
  python -m lmjax.main --config=configs/translation_po.py --workdir=runs/translation_po

`configs/translation_po.py:DIR` reads DIR/{train,valid,test}.tsv instead of data/po_en_de. A joint 4000-piece
unigram vocabulary over both sides, shared embeddings, packed rows; BLEU and chrF of beam-search translations of
the validation and test pairs at the end (about 11 minutes in all on the shared 2-core CPU).
"""

from lmjax.config import base_config


def get_config(data_dir: str = "data/po_en_de"):
  c = base_config()
  c.task = "seq2seq"
  c.data.source = "files"
  c.data.paths = f"{data_dir}/train.tsv"
  c.data.seq_len = 32
  c.seq2seq.eval_paths = f"{data_dir}/valid.tsv"
  c.seq2seq.test_paths = f"{data_dir}/test.tsv"
  c.seq2seq.source_max_len = 32
  c.seq2seq.target_max_len = 32
  c.seq2seq.label_smoothing = 0.1
  c.seq2seq.pack = True  # UI strings are short (median 7 pieces): 2.5 pairs per row on average
  c.seq2seq.beam_size = 4
  c.seq2seq.length_penalty = 0.6
  c.seq2seq.eval_decode_examples = 1000
  c.tokenizer.kind = "unigram"
  c.tokenizer.vocab_size = 4000
  c.model.name = "encdec"
  c.model.num_layers = 3
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 64
  c.model.position = "sinusoidal"
  c.model.dropout = 0.1
  c.model.share_embeddings = True
  c.optim.learning_rate = 2e-3
  c.optim.min_learning_rate = 5e-5
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 0.01
  c.train.batch_size = 32
  c.train.num_steps = 2400
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 2400
  c.train.checkpoint_every = 800
  c.train.eval_batches = 0
  c.train.num_samples = 0
  return c
