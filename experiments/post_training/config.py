"""Configs of the post-training study: pretrain, SFT (full or LoRA), DPO (full or LoRA).

  python -m lmjax.main --config=experiments/post_training/config.py:pretrain --workdir=runs/post/pretrain
  python -m lmjax.main --config=experiments/post_training/config.py:sft_lora8 --workdir=runs/post/sft_lora8

The argument names the run; RUNS (the directory of the runs, default runs/post) and DATA (the output of
make_data.py, default data/post_training) come after it: `config.py:sft_full,runs/post,data/post_training`.
"""

from configs.default import get_config as default_config

SFT = {"sft_full": 0, "sft_lora8": 8, "sft_lora32": 32}
DPO = {"dpo_full": 0, "dpo_lora8": 8}


def get_config(arg: str = "pretrain"):
  name, runs, data = (arg.split(",") + ["runs/post", "data/post_training"])[:3]
  c = default_config()
  c.tokenizer.kind = "byte"  # every character of any instruction has an id (the corpus lacks '#', for one)
  if name == "pretrain":
    return c
  c.finetune.lora.rank = SFT.get(name, DPO.get(name, 0))
  c.finetune.lora.alpha = 2.0 * c.finetune.lora.rank if c.finetune.lora.rank else 16.0
  c.model.dropout = 0.0
  c.optim.update(warmup_steps=50, min_learning_rate=0.0, weight_decay=0.0)
  c.train.update(batch_size=16, steps_per_call=10, log_every=50, eval_every=200, checkpoint_every=200,
                 eval_batches=0, num_samples=5, sample_length=40, sample_temperature=0.0)
  if name in SFT:
    c.task = "sft"
    c.finetune.update(init_from=f"{runs}/pretrain", train_file=f"{data}/sft_train.jsonl",
                      eval_file=f"{data}/sft_eval.jsonl")
    c.optim.learning_rate = 2e-3 if c.finetune.lora.rank else 5e-4
    c.train.num_steps = 1000
    return c
  if name in DPO:
    c.task = "dpo"
    c.finetune.update(init_from=f"{runs}/sft_full", train_file=f"{data}/dpo_train.jsonl",
                      eval_file=f"{data}/dpo_eval.jsonl")
    c.dpo.beta = 0.1
    c.optim.learning_rate = 1e-3 if c.finetune.lora.rank else 2e-4
    c.train.update(num_steps=400, eval_every=100, checkpoint_every=100)
    return c
  raise ValueError(f"unknown run {name!r}: pretrain, {', '.join(SFT)}, {', '.join(DPO)}")
