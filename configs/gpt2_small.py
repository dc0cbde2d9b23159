"""GPT-2 small (124M parameters): 12 layers, 12 heads, width 768, context 1024. For accelerators.

The argument names a prepared TFDS text dataset (default lm1b); vocabulary: a 50,304-piece SentencePiece BPE
(GPT-2's 50,257 rounded up to a multiple of 64) trained on it.
  python -m lmjax.main --config=configs/gpt2_small.py:lm1b --workdir=runs/gpt2 --config.data.data_dir=$TFDS_DIR
"""

from lmjax.config import base_config


def get_config(tfds_name: str = "lm1b"):
  c = base_config()
  c.data.source = "tfds"
  c.data.tfds_name = tfds_name
  c.data.eval_split = "test" if tfds_name == "lm1b" else "validation"
  c.data.seq_len = 1024
  c.tokenizer.kind = "bpe"
  c.tokenizer.vocab_size = 50304
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.d_model = 768
  c.model.mlp_dim = 3072
  c.model.max_len = 1024
  c.model.dropout = 0.0
  c.model.dtype = "bfloat16"
  c.optim.learning_rate = 6e-4
  c.optim.min_learning_rate = 6e-5
  c.optim.warmup_steps = 2000
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.1
  c.train.batch_size = 64
  c.train.num_steps = 100_000
  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  c.train.eval_batches = 50
  return c
