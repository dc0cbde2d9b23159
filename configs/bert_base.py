"""BERT-base (110M parameters): 12 layers, 12 heads, width 768, MLP 3072, 512 positions. For accelerators.

Pretraining as in Devlin et al. (2019), phase one: sequences of 128 tokens, at most 20 predictions each, batch
256, AdamW at 1e-4 with 10k warmup steps and linear decay, dropout 0.1. The argument names a prepared TFDS text
dataset with whole documents (default English Wikipedia); the vocabulary is a 30,522-piece SentencePiece BPE
trained on it, BERT's vocabulary size. Phase two (10% of the steps at 512 tokens, 80 predictions) is the same
config with --config.data.seq_len=512 --config.mlm.max_predictions=80 --config.train.allow_config_change=True.
  python -m lmjax.main --config=configs/bert_base.py --workdir=runs/bert_base --config.data.data_dir=$TFDS_DIR
"""

from lmjax.config import base_config


def get_config(tfds_name: str = "wikipedia/20230601.en"):
  c = base_config()
  c.task = "mlm"
  c.data.source = "tfds"
  c.data.tfds_name = tfds_name
  c.data.train_split = "train[:99%]"
  c.data.eval_split = "train[99%:]"
  c.data.seq_len = 128
  c.tokenizer.kind = "bpe"
  c.tokenizer.vocab_size = 30522
  c.model.name = "bert"
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.d_model = 768
  c.model.mlp_dim = 3072
  c.model.max_len = 512
  c.model.position = "learned"
  c.model.pre_norm = False
  c.model.activation = "gelu"
  c.model.type_vocab_size = 2
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.1
  c.model.dtype = "bfloat16"
  c.mlm.max_predictions = 20
  c.optim.learning_rate = 1e-4
  c.optim.schedule = "linear"
  c.optim.min_learning_rate = 0.0
  c.optim.warmup_steps = 10_000
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.01
  c.train.batch_size = 256
  c.train.num_steps = 1_000_000
  c.train.log_every = 1000
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.eval_batches = 50
  c.train.num_samples = 0
  return c
