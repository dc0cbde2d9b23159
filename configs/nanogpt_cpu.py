"""nanoGPT's CPU recipe for character-level Shakespeare, in lmjax.

Same model and schedule as nanoGPT's `config/train_shakespeare_char.py` with its README's CPU overrides:
4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, lr 1e-3 with 100 warmup steps and cosine
decay to 1e-4, AdamW (0.9, 0.99), weight decay 0.1, clipping at 1.0, dropout 0, no biases, tied embeddings, and
training windows at uniform random offsets.

The argument is a text file (nanoGPT's is tiny shakespeare); with none, the embedded corpus is used:
  python -m lmjax.main --config=configs/nanogpt_cpu.py:path/to/input.txt --workdir=runs/shakespeare
The file is one document whose last 10% is the validation split, as in nanoGPT's prepare.py.
"""

from lmjax.config import base_config


def get_config(path: str = ""):
  c = base_config()
  if path:
    c.data.source = "files"
    c.data.paths = path
    c.data.document_split = "file"
  c.data.validation_fraction = 0.1
  c.data.sampling = "random"  # nanoGPT draws each row at a random offset of the training text
  c.data.seq_len = 64
  c.tokenizer.kind = "char"
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.model.max_len = 64
  c.model.use_bias = False
  c.model.dropout = 0.0
  c.optim.learning_rate = 1e-3
  c.optim.min_learning_rate = 1e-4
  c.optim.warmup_steps = 100
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0
  c.train.batch_size = 12
  c.train.num_steps = 2000
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 1000
  c.train.eval_batches = 0  # the whole validation split
  c.train.eval_batch_size = 64
  c.train.sample_length = 300
  return c
