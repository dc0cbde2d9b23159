r"""Import a local Hugging Face GPT-2 or BERT checkpoint as an lmjax run.

  python -m lmjax.hf.import_checkpoint --hf_dir=checkpoints/gpt2 --workdir=runs/gpt2
  python -m lmjax.hf.import_checkpoint --hf_dir=checkpoints/bert-base-uncased --workdir=runs/bert \
      --config=configs/bert_tiny.py --config.train.num_steps=1000

Writes a normal workdir: config.json (the model section derived from the checkpoint's config.json; everything else
from --config, or lmjax's defaults), tokenizer/ (the checkpoint's own vocabulary, see lmjax/hf/tokenizers.py) and
checkpoints/0/ (a train state at step 0 holding the imported parameters), so `lmjax.generate`, `init_from` and
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
from lmjax.hf.architectures import for_hf_config
from lmjax.hf.files import CONFIG_FILE, HfError, checkpoint_dir, read_config, read_weights


@dataclasses.dataclass(frozen=True)
class Imported:
  workdir: Path
  config: Any  # ml_collections.ConfigDict
  tokenizer: Any
  fresh: list[str]  # lmjax parameter subtrees the checkpoint did not have (freshly initialized)
  unused: list[str]  # HF weights with no lmjax counterpart
  num_params: int


def derive_config(hf: dict[str, Any], hf_dir: Path, vocab_size: int, base: Any = None) -> Any:
  """The lmjax config of the imported model: `base` (default: lmjax's defaults) with the model section and the
  tokenizer kind replaced, and the task set to the model's pretraining objective unless `base` trains this model."""
  from lmjax.config import base_config, validate  # pylint: disable=import-outside-toplevel
  from lmjax.registry import MODELS, TASKS  # pylint: disable=import-outside-toplevel
  arch = for_hf_config(hf, hf_dir / CONFIG_FILE)
  config = base_config() if base is None else base
  for field, value in arch.convert.model_fields(hf).items():
    config.model[field] = value
  config.tokenizer.kind = arch.tokenizer_kind
  config.tokenizer.vocab_size = vocab_size
  if config.task not in TASKS or not TASKS.get(config.task).trains(MODELS.get(arch.model_name)):
    config.task = arch.task
  config.data.seq_len = min(config.data.seq_len, config.model.max_len)
  if config.task == "mlm" and config.model.type_vocab_size < 2:
    config.mlm.nsp = False  # next-sentence pairs need segment types A and B
  validate(config)
  return config


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _check_shapes(imported: dict[str, Any], abstract: dict[str, Any]) -> list[str]:
  """Checks every imported array against the lmjax model's parameter shapes; returns the top-level subtrees the
  checkpoint lacks."""
  got, want = _flat(imported), _flat(abstract)
  extra = sorted(set(got) - set(want))
  if extra:
    raise HfError(f"the converted checkpoint has parameters the lmjax model lacks ({', '.join(extra[:3])}); "
                  f"its config.json does not describe its weights")
  for name, value in got.items():
    if tuple(value.shape) != tuple(want[name].shape):
      raise HfError(f"weight {name}: the checkpoint has shape {tuple(value.shape)}, its config.json implies "
                    f"{tuple(want[name].shape)}")
  partial = sorted(k for k in want if k not in got and k.split("/")[0] in imported)
  if partial:
    raise HfError(f"the checkpoint lacks parameter {partial[0]} of a part it has; its config.json does not describe "
                  f"its weights")
  return sorted(k for k in abstract if k not in imported)


def _train_state(model: Any, optimizer: Any, seed: int, init_args: Any, imported: dict[str, Any]) -> tuple[Any, list]:
  """The TrainState at step 0 that training would have created, with the imported parameters in it.

  Built without running or compiling the model's initialization (a large model's init compiles for a long time):
  shapes come from tracing, and a part the checkpoint lacks (a BERT head) starts the way lmjax initializes its
  parameters: kernels and embeddings normal(model.init_std), biases 0, norm scales 1. The state's structure is
  checked against the one the trainer restores into.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lmjax.state import TrainState, abstract_train_state  # pylint: disable=import-outside-toplevel
  abstract = abstract_train_state(model, optimizer, seed, init_args)
  fresh = _check_shapes(imported, abstract.params)
  train_rng = jax.random.split(jax.random.PRNGKey(seed))[1]  # as lmjax.state initializes
  rng = np.random.default_rng(seed)

  def initial(path, leaf) -> np.ndarray:
    name = getattr(path[-1], "key", "")
    if name in ("kernel", "embedding"):
      return rng.normal(0.0, model.cfg.init_std, leaf.shape)
    return np.full(leaf.shape, 1.0 if name == "scale" else 0.0)

  params = {**abstract.params, **imported}
  params |= {k: jax.tree_util.tree_map_with_path(initial, abstract.params[k]) for k in fresh}
  params = jax.tree_util.tree_map(lambda x, a: jnp.asarray(np.asarray(x, a.dtype)), params, abstract.params)
  zero = jnp.zeros((), jnp.int32)
  # Jitted: run eagerly, every differently shaped moment would compile an operation of its own.
  state = TrainState(step=zero, params=params, opt_state=jax.jit(optimizer.init)(params), rng=train_rng,
                     nonfinite_streak=zero, skipped_steps=zero)
  if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(abstract):
    raise HfError("the imported train state does not have the structure lmjax trains; this is a bug in lmjax.hf")
  return state, fresh


def import_checkpoint(hf_dir: str | Path, workdir: str | Path, base_config: Any = None) -> Imported:
  """Reads the HF checkpoint and writes the lmjax workdir; raises HfError (one line) on anything unusable."""
  from lmjax.checkpoint import Checkpointer, has_checkpoints  # pylint: disable=import-outside-toplevel
  from lmjax.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from lmjax.state import count_params  # pylint: disable=import-outside-toplevel
  from lmjax.registry import TASKS  # pylint: disable=import-outside-toplevel
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
  fields = arch.convert.model_fields(hf)  # checks the architecture before reading any weights
  tokenizer = arch.read_tokenizer(hf_dir, int(hf.get("vocab_size", 0)))
  config = derive_config(hf, hf_dir, tokenizer.vocab_size, base_config)
  imported, unused = arch.convert.import_params(read_weights(hf_dir), fields, tokenizer.vocab_map)

  task = TASKS.get(config.task).create(config, VocabInfo(tokenizer.vocab_size))
  optimizer = make_optimizer(config.optim, config.train.num_steps)
  state, fresh = _train_state(task.model, optimizer, config.seed, task.init_args(), imported)

  workdir.mkdir(parents=True, exist_ok=True)
  check_and_record_config(config, workdir, has_checkpoint=False)
  tokenizer.save(workdir / "tokenizer")
  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints, every=1, async_save=False)
  checkpointer.save(0, state, force=True)
  checkpointer.close()
  return Imported(workdir, config, tokenizer, fresh, unused, count_params(state.params))


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
