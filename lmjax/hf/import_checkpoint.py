r"""Import a local Hugging Face checkpoint (GPT-2, BERT, Llama, Mistral, Qwen2, Gemma, T5) as an lmjax run.

  python -m lmjax.hf.import_checkpoint --hf_dir=checkpoints/gpt2 --workdir=runs/gpt2
  python -m lmjax.hf.import_checkpoint --hf_dir=checkpoints/bert-base-uncased --workdir=runs/bert \
      --config=configs/bert_tiny.py --config.train.num_steps=1000

Writes a normal workdir: config.json (the model section derived from the checkpoint's config.json; everything else
from --config, or lmjax's defaults), tokenizer/ (the checkpoint's own vocabulary, see lmjax/hf/tokenizers.py) and
checkpoints/0/ (a train state at step 0 holding the imported parameters, sharded over the config's mesh) and
hf_config.json (the checkpoint's own config.json, which export writes back), so `lmjax.generate`, `init_from` and
`lmjax.main` with the same config continue from it. The importer never downloads: fetch a hub checkpoint first
(`huggingface-cli download gpt2 --local-dir checkpoints/gpt2`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lmjax import console
from lmjax.hf.adapter import Plan
from lmjax.hf.architectures import for_hf_config
from lmjax.hf.files import (CONFIG_FILE, HF_CONFIG_FILE, WEIGHT_FILES, CheckpointWeights, HfError, checkpoint_dir,
                            read_config, write_json)
from lmjax.hf.vocab import ROLES


@dataclasses.dataclass(frozen=True)
class Imported:
  workdir: Path
  config: Any  # ml_collections.ConfigDict
  tokenizer: Any
  fresh: list[str]  # lmjax parameter subtrees the checkpoint did not have (freshly initialized)
  unused: list[str]  # HF weights with no lmjax counterpart
  num_params: int


def derive_config(hf: dict[str, Any], hf_dir: Path, tokenizer: Any, base: Any = None,
                  names: set[str] = frozenset()) -> Any:
  """The lmjax config of the imported model: `base` (default: lmjax's defaults) with the model section and the
  tokenizer kind replaced, and the task set to the model's pretraining objective unless `base` trains this model.
  model.logit_mask lists the lmjax specials the checkpoint's vocabulary lacks, so that the model's distribution is
  the checkpoint's own."""
  from lmjax.config import base_config  # pylint: disable=import-outside-toplevel
  from lmjax.config_validation import validate  # pylint: disable=import-outside-toplevel
  from lmjax.models import logit_mask  # pylint: disable=import-outside-toplevel
  from lmjax.registry import MODELS, TASKS  # pylint: disable=import-outside-toplevel
  arch = for_hf_config(hf, hf_dir / CONFIG_FILE)
  config = base_config() if base is None else base
  for field, value in arch.model_fields(hf, names).items():
    config.model[field] = value
  owned = tokenizer.vocab_map.owned
  config.model.logit_mask = logit_mask.to_field(i for i, role in enumerate(ROLES) if role not in owned)
  config.tokenizer.kind = tokenizer.kind
  config.tokenizer.vocab_size = tokenizer.vocab_size
  if config.task not in TASKS or not TASKS.get(config.task).trains(MODELS.get(arch.model_name)):
    config.task = arch.task
  config.data.seq_len = min(config.data.seq_len, config.model.max_len)
  if config.task == "mlm" and config.model.type_vocab_size < 2:
    config.mlm.nsp = False  # next-sentence pairs need segment types A and B
  validate(config)
  return config


def _check_plan(plan: Plan, abstract: dict[str, Any]) -> list[str]:
  """Checks the planned parameters against the lmjax model's; returns the top-level subtrees the checkpoint lacks."""
  want = _flat(abstract)
  extra = sorted(set(plan.entries) - set(want))
  if extra:
    raise HfError(f"the converted checkpoint has parameters the lmjax model lacks ({', '.join(extra[:3])}); "
                  f"its config.json does not describe its weights")
  have = {path.split("/")[0] for path in plan.entries}
  partial = sorted(k for k in want if k not in plan.entries and k.split("/")[0] in have)
  if partial:
    raise HfError(f"the checkpoint lacks parameter {partial[0]} of a part it has; its config.json does not describe "
                  f"its weights")
  return sorted(k for k in abstract if k not in have)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = out
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return out


def _place(value: np.ndarray, target: Any) -> Any:
  """A host array onto the devices with the target's sharding: each device copies only its own block."""
  import jax  # pylint: disable=import-outside-toplevel
  value = np.asarray(value, target.dtype)
  return jax.make_array_from_callback(value.shape, target.sharding, lambda index: value[index])


def load_params(weights: CheckpointWeights, plan: Plan, abstract: dict[str, Any], seed: int, init_std: float,
                fresh: list[str]) -> dict[str, Any]:
  """The parameters, each read, converted and placed on its sharding in turn (the host holds one at a time). A part
  the checkpoint lacks (a BERT head) starts the way lmjax initializes its parameters: kernels and embeddings
  normal(model.init_std), biases 0, norm scales 1."""
  targets = _flat(abstract)
  out = {}
  for path, entry in plan.entries.items():
    value = entry.make(*(weights.read(name) for name in entry.sources))
    if tuple(value.shape) != tuple(targets[path].shape):
      raise HfError(f"weight {path}: the checkpoint has shape {tuple(value.shape)}, its config.json implies "
                    f"{tuple(targets[path].shape)}")
    out[path] = _place(value, targets[path])
    del value
  rng = np.random.default_rng(seed)
  for path, target in targets.items():
    if path.split("/")[0] in fresh:
      name = path.rsplit("/", 1)[-1]
      if name in ("kernel", "embedding"):
        value = rng.normal(0.0, init_std, target.shape)
      else:
        value = np.full(target.shape, 1.0 if name == "scale" else 0.0)
      out[path] = _place(value, target)
  return _nested(out)


def _train_state(progs: Any, config: Any, params: dict[str, Any]) -> Any:
  """The TrainState at step 0 that training would have created, with the imported parameters in it, sharded as the
  trainer shards it. Built without running or compiling the model's initialization (a large model's init compiles
  for a long time); the structure is checked against the one the trainer restores into."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lmjax.state import TrainState  # pylint: disable=import-outside-toplevel
  shardings = progs.state_shardings
  train_rng = jax.random.split(jax.random.PRNGKey(config.seed))[1]  # as lmjax.state initializes
  opt_state = jax.jit(progs.optimizer.init, out_shardings=shardings.opt_state)(params)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, opt_state=opt_state, rng=train_rng, nonfinite_streak=zero,
                     skipped_steps=zero)
  if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(progs.abstract_state(config)):
    raise HfError("the imported train state does not have the structure lmjax trains; this is a bug in lmjax.hf")
  return state


def import_checkpoint(hf_dir: str | Path, workdir: str | Path, base_config: Any = None) -> Imported:
  """Reads the HF checkpoint and writes the lmjax workdir; raises HfError (one line) on anything unusable.

  The model is placed on the mesh of the config's mesh section over every device, so a checkpoint larger than one
  device's memory imports as it will train; the host holds one tensor at a time."""
  from lmjax import programs, sharding  # pylint: disable=import-outside-toplevel
  from lmjax.checkpoint import Checkpointer, has_checkpoints  # pylint: disable=import-outside-toplevel
  from lmjax.registry import TASKS  # pylint: disable=import-outside-toplevel
  from lmjax.state import count_params  # pylint: disable=import-outside-toplevel
  from lmjax.tasks.base import VocabInfo  # pylint: disable=import-outside-toplevel
  from lmjax.workdir import check_and_record_config  # pylint: disable=import-outside-toplevel

  hf_dir, workdir = checkpoint_dir(hf_dir), Path(workdir)
  if base_config is not None and base_config.finetune.lora.rank:
    raise HfError(f"config.finetune.lora.rank={base_config.finetune.lora.rank}: an import writes the checkpoint's own "
                  f"model; train adapters in a run that starts from it (finetune.init_from={str(workdir)!r})")
  if has_checkpoints(workdir / "checkpoints"):
    raise HfError(f"--workdir={workdir} already holds checkpoints; import into a new directory")
  hf = read_config(hf_dir)
  arch = for_hf_config(hf, hf_dir / CONFIG_FILE)
  weights = CheckpointWeights(hf_dir) if any((hf_dir / n).is_file() for n in WEIGHT_FILES) else None
  fields = arch.model_fields(hf, weights.names if weights else set())  # the architecture, before anything else
  tokenizer = arch.read_tokenizer(hf_dir, int(hf.get("vocab_size", 0)))
  if weights is None:
    weights = CheckpointWeights(hf_dir)  # the one-line error naming the weight files
  config = derive_config(hf, hf_dir, tokenizer, base_config, weights.names)
  plan = Plan(weights.names, arch.family)
  arch.plan(plan, fields, tokenizer.vocab_map)

  # The trainer's shardings; the batch is not checked against the mesh, since importing runs no step.
  task = TASKS.get(config.task).create(config, VocabInfo(tokenizer.vocab_size))
  progs = programs.build(config, task, sharding.make_mesh(config.mesh))
  with sharding.activate(progs.mesh, progs.rules):
    abstract = progs.abstract_state(config).params
    fresh = _check_plan(plan, abstract)
    params = load_params(weights, plan, abstract, config.seed, config.model.init_std, fresh)
    state = _train_state(progs, config, params)

  workdir.mkdir(parents=True, exist_ok=True)
  check_and_record_config(config, workdir, has_checkpoint=False)
  tokenizer.save(workdir / "tokenizer")
  write_json(workdir / HF_CONFIG_FILE, hf)  # what export writes back (the model type, ids of special tokens)
  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints, every=1, async_save=False)
  checkpointer.save(0, state, force=True)
  checkpointer.close()
  return Imported(workdir, config, tokenizer, fresh, plan.unused(), count_params(state.params))


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from lmjax.cli import fail  # pylint: disable=import-outside-toplevel
  from lmjax.config import ConfigError  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  f = flags.FLAGS
  try:
    result = import_checkpoint(f.hf_dir, f.workdir, f.config)
  except (HfError, ConfigError) as e:
    fail(str(e))
  m = result.config.model
  print(f"imported {m.name}: {m.num_layers} layers, width {m.d_model}, {m.num_heads} heads, context {m.max_len}, "
        f"{result.num_params:,} parameters, vocabulary {result.tokenizer.vocab_size} ({result.tokenizer.kind}: "
        f"specials moved to ids 0..6)", file=sys.stderr)
  if result.fresh:
    print(f"note: the checkpoint has no {', '.join(result.fresh)}; those start from a fresh initialization",
          file=sys.stderr)
  if result.unused:
    shown = ", ".join(result.unused[:5]) + (", ..." if len(result.unused) > 5 else "")
    print(f"note: {len(result.unused)} checkpoint weights have no lmjax counterpart and were skipped: {shown}",
          file=sys.stderr)
  print(f"wrote {result.workdir} (config.json, tokenizer/, checkpoints/0)", file=sys.stderr)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("hf_dir", None, "A local Hugging Face checkpoint directory (config.json, weights, tokenizer).")
  flags.DEFINE_string("workdir", None, "The lmjax run directory to create.")
  config_flags.DEFINE_config_file("config", None, "Optional config file for everything but the model and tokenizer "
                                  "(data, optimizer, training), e.g. configs/default.py; default: lmjax's defaults.")
  flags.mark_flags_as_required(["hf_dir", "workdir"])


def run() -> None:
  """The `lmjax-import` command."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from lmjax.cli import describe_command, parse_flags  # pylint: disable=import-outside-toplevel
  _define_flags()
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
