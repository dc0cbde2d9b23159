"""A config file that reads an existing run's config.json: `--config=lmjax/hf/workdir_config.py:RUN`.

An imported run's config did not come from a file in configs/, so continue training it (the same model, tokenizer
and data; change steps, learning rate, logging with --config.* overrides) with

  python -m lmjax.main --config=lmjax/hf/workdir_config.py:runs/gpt2 --workdir=runs/gpt2 --config.train.num_steps=1000
"""

from lmjax.saved_run import load_config


def get_config(workdir: str):
  return load_config(workdir)
