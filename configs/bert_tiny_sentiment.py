"""Fine-tunes configs/bert_tiny.py's encoder on Rotten Tomatoes review sentiment (fresh / rotten).

  python experiments/bert_pretrain_finetune/prepare_data.py                 # data/rotten_tomatoes/*.tsv
  python -m lmjax.main --config=configs/bert_tiny_sentiment.py --workdir=runs/rt_scratch
  python -m lmjax.main --config=configs/bert_tiny_sentiment.py --workdir=runs/rt_pretrained \
      --config.finetune.init_from=runs/bert_tiny

The argument after the file name is the data folder: --config=configs/bert_tiny_sentiment.py:/path/to/folder.
The model and tokenizer sections are bert_tiny's, as init_from requires; without init_from the same encoder starts
from scratch, with the same character vocabulary (built from the embedded corpus, as in pretraining).
"""

from configs import bert_tiny


def get_config(data_dir: str = "data/rotten_tomatoes"):
  c = bert_tiny.get_config()
  c.task = "classification"
  c.finetune.train_file = f"{data_dir}/train.tsv"
  c.finetune.eval_file = f"{data_dir}/validation.tsv"
  c.finetune.text_fields = "sentence"
  c.finetune.label_field = "label"
  c.finetune.labels = "fresh,rotten"  # what sorting gives too; set so that lmjax.aot can compile without the data
  c.data.seq_len = 128  # characters: 63% of the validation reviews fit whole (rotary positions have no length limit)
  c.model.dropout = 0.1
  c.optim.learning_rate = 1e-3
  c.optim.min_learning_rate = 1e-5
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.01
  c.train.batch_size = 32
  c.train.num_steps = 1000  # about 2.8 epochs of the 11,432 training reviews
  c.train.steps_per_call = 10
  c.train.log_every = 100
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  c.train.eval_batches = 0
  c.train.eval_batch_size = 64
  return c
