r"""Writes a distillation run's teacher top-k logits once, for offline training (lmjax/distill/offline.py).

  python -m lmjax.distill.precompute --config=configs/distill_gpt.py --workdir=runs/distill_gpt \
      --config.distill.offline_logits_dir=runs/teacher_top32 [--config.distill.top_k=32] [--num_batches=N]

Takes the same --config (and overrides) as the student's training command and the student's --workdir (for its
tokenizer and prepared data), runs the teacher (distill.teacher_workdir) over the first train.num_steps batches of
the student's training stream, and stores the distill.top_k largest logits of every distilled position as float16
with their token ids. The student then trains with the same command line, without running the teacher.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lmjax import console, prepare
from lmjax.cli import describe_command, fail, parse_flags
from lmjax.config import ConfigError
from lmjax.config_validation import validate
from lmjax.distill import offline
from lmjax.distill.heads import HEADS
from lmjax.distill.teacher import check_tokenizer, open_teacher, restore_params
from lmjax.registry import TASKS

def precompute(config: ml_collections.ConfigDict, workdir: str | Path, num_batches: int = 0) -> Path:
  """Writes config.distill.offline_logits_dir (complete or not at all) and returns it."""
  validate(config)
  k = config.distill
  task_class = TASKS.get(config.task)
  offline_capable = [n for n, c in TASKS.items() if c.objective() in offline.OBJECTIVES and c.objective() != n]
  if config.task not in offline_capable or not k.offline_logits_dir or not k.teacher_workdir:
    raise ConfigError(f"config.distill.offline_logits_dir and distill.teacher_workdir must both be set, with task "
                      f"{' or '.join(map(repr, offline_capable))}, to precompute teacher logits")
  base_class = TASKS.get(task_class.objective())
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tokenizer = prepare.prepare_tokenizer(config, workdir, base_class)
  teacher = open_teacher(config, base_class)
  check_tokenizer(config, teacher, tokenizer)
  data = base_class.prepare_data(config, tokenizer, prepare.data_dir_of(config, workdir))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  params = restore_params(teacher, jax.tree_util.tree_map(lambda _: device, teacher.abstract))
  distilled_heads = HEADS[base_class.registered_name].from_config(config)
  teacher_heads = HEADS[base_class.registered_name].from_config(teacher.config)  # whole logits: top-k needs them

  @jax.jit
  def top_k(params, batch):
    out = teacher_heads.run(teacher.model, params, batch, deterministic=True)[0]
    distilled = distilled_heads.heads(out, batch)  # the heads the student distils (e.g. no NSP without mlm.nsp)
    return {name: jax.lax.top_k(logits, min(k.top_k, logits.shape[-1]))
            for name, (logits, _) in teacher_heads.heads(out, batch).items() if name in distilled}

  n = num_batches or config.train.num_steps
  target = Path(k.offline_logits_dir)
  tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  stream, arrays, meta_heads = iter(data.train_dataset(0, 1)), {}, {}
  for i in range(n):
    out = jax.device_get(top_k(params, next(stream)))
    for name, (values, indices) in out.items():
      if name not in arrays:
        index_dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
        shape = (n, *values.shape)
        arrays[name] = (np.lib.format.open_memmap(tmp / f"{name}_values.npy", "w+", np.float16, shape),
                        np.lib.format.open_memmap(tmp / f"{name}_indices.npy", "w+", index_dtype, shape))
        meta_heads[name] = {"shape": list(shape[1:]), "index_dtype": np.dtype(index_dtype).name}
      arrays[name][0][i] = values.astype(np.float16)
      arrays[name][1][i] = indices
    if (i + 1) % 100 == 0 or i + 1 == n:
      logging.info("precomputed %d/%d batches", i + 1, n)
  for values, indices in arrays.values():
    values.flush()
    indices.flush()
  meta = {"num_batches": n, "top_k": k.top_k, "heads": meta_heads, "tokenizer_fingerprint": tokenizer.fingerprint(),
          "teacher_workdir": str(teacher.run.workdir), "teacher_step": teacher.step,
          "stream": offline.stream_fields(config)}
  (tmp / offline.META).write_text(json.dumps(meta, indent=1))
  if target.exists():
    shutil.rmtree(target)
  tmp.rename(target)
  return target


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  try:
    path = precompute(_CONFIG.value, _WORKDIR.value, _NUM_BATCHES.value)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    fail(str(e))
  print(f"wrote {path}")


def run() -> None:
  """The `lmjax-distill-precompute` command."""
  # Defined only when run as a program: tests import `precompute` beside other CLIs that also define --config.
  global _CONFIG, _WORKDIR, _NUM_BATCHES  # pylint: disable=global-statement,global-variable-undefined
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The student's config file.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The student's workdir (tokenizer and prepared data).")
  _NUM_BATCHES = flags.DEFINE_integer("num_batches", 0, "Batches to precompute; 0: train.num_steps.")
  flags.mark_flags_as_required(["config", "workdir"])
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
