"""What a run prepares in its workdir before anything compiles: where its data caches go, and its tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import ml_collections

from lmjax.data.tokenizers import Tokenizer, build_tokenizer
from lmjax.registry import TASKS


def adopt_tokenizer(source: Path, workdir: Path) -> None:
  """Another run's saved tokenizer becomes this run's (unless it has one already), so token ids mean the same."""
  target = Path(workdir) / "tokenizer"
  if target.exists():
    return
  tmp = Path(workdir) / f".tokenizer.tmp{os.getpid()}"
  shutil.copytree(source, tmp)
  tmp.rename(target)


def data_dir_of(config: ml_collections.ConfigDict, workdir: Path) -> Path:
  return Path(config.data.data_dir) if config.data.data_dir else Path(workdir) / "data"


def prepare_tokenizer(config: ml_collections.ConfigDict, workdir: Path, task_class: Any = None) -> Tokenizer:
  """Trained (or collected) once on the texts the task names (by default the training split's documents), then
  loaded from workdir/tokenizer. `task_class` defaults to the configured task's."""
  data_dir = data_dir_of(config, workdir)
  task_class = task_class or TASKS.get(config.task)
  return build_tokenizer(config.tokenizer.kind, lambda: task_class.tokenizer_texts(config, data_dir),
                         Path(workdir) / "tokenizer", vocab_size=config.tokenizer.vocab_size,
                         max_training_chars=config.tokenizer.max_training_chars)
