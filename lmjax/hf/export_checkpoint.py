r"""Export a trained lmjax run as a Hugging Face checkpoint directory (GPT-2, BERT, Llama, Mistral, Qwen2, Gemma
or T5, whichever represents its model section).

  python -m lmjax.hf.export_checkpoint --workdir=runs/gpt2 --out_dir=exported/gpt2 [--step=N]
  python -m lmjax.hf.export_checkpoint --workdir=runs/sft_lora --out_dir=exported/adapter --lora=adapter

Writes config.json, model.safetensors and, when the run's tokenizer was imported from Hugging Face, the tokenizer
files, with embedding rows moved back to the HF ids (lmjax/hf/vocab.py). An imported run goes back to the model
type it came from (its hf_config.json); a native one to the first architecture that represents it (a GPT with
rope, RMSNorm and SwiGLU is a Llama). A run with an lmjax tokenizer (char, byte, bpe, unigram) exports its weights
with lmjax ids as the HF ids; transformers has no matching tokenizer, so the CLI says to encode text with lmjax's.
A model no architecture represents (alibi positions, a post-norm GPT, ...) is refused with a one-line error naming
the config field.

A run that trained LoRA adapters (finetune.lora.rank > 0) exports, by --lora: `merged` (default), the adapters
folded into the weights, a plain checkpoint of the model the run computes; `base`, its frozen base weights alone;
`adapter`, the adapters alone in PEFT's format (adapter_config.json, adapter_model.safetensors; lmjax/hf/peft.py),
which `peft` loads onto the exported base.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lmjax import console
from lmjax.hf.architectures import for_export
from lmjax.hf.files import CONFIG_FILE, HF_CONFIG_FILE, HfError, read_json, write_json, write_weights
from lmjax.hf.vocab import ROLES, VocabMap

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # PEFT's, as lmjax.hf.peft writes them
LORA_MODES = ("merged", "base", "adapter")


@dataclasses.dataclass(frozen=True)
class Exported:
  out_dir: Path
  step: int
  architecture: str
  tokenizer_files: list[str]  # empty for an lmjax-native tokenizer
  tokenizer_kind: str
  lora: str = ""  # how a LoRA run was exported (LORA_MODES); '' for a run without adapters
  adapter_modules: int = 0  # with lora='adapter': the PEFT modules written


def _tokenizer_files(tokenizer: Any, out_dir: Path, model: Any) -> list[str]:
  """Writes the HF tokenizer files of an imported tokenizer; returns their names ([] for lmjax's own kinds)."""
  if tokenizer.kind in ("hf_tokenizer", "hf_sentencepiece"):
    files = tokenizer.hf_files()  # the checkpoint's own files, tokenizer_config.json and chat template included
    for name, data in files.items():
      (out_dir / name).write_bytes(data)
    return list(files)
  if tokenizer.kind not in ("hf_bpe", "hf_wordpiece"):
    return []
  config, files = tokenizer._state()  # pylint: disable=protected-access
  for name, data in files.items():
    (out_dir / name).write_bytes(data)
  specials = dict(config["special_tokens"])
  settings: dict[str, Any] = {"model_max_length": model.max_len, **specials}
  if tokenizer.kind == "hf_bpe":
    settings |= {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False}
  else:
    settings |= {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.do_lower_case,
                 "strip_accents": tokenizer.strip_accents, "tokenize_chinese_chars": tokenizer.tokenize_chinese_chars}
  write_json(out_dir / "tokenizer_config.json", settings)
  write_json(out_dir / "special_tokens_map.json", specials)
  return [*files, "tokenizer_config.json", "special_tokens_map.json"]


def _native_specials(out_dir: Path, vocab: VocabMap) -> None:
  """An lmjax tokenizer's special ids, for people wiring up their own tokenizer."""
  write_json(out_dir / "lmjax_special_ids.json", {f"<{role}>": vocab.owned[role] for role in ROLES})


def export_run(workdir: str | Path, out_dir: str | Path, step: int | None = None, lora_mode: str = "merged",
               base_model: str = "") -> Exported:
  """Raises HfError (one line) when the run cannot be represented or read, RunError for a bad workdir."""
  import jax  # pylint: disable=import-outside-toplevel
  from lmjax.hf import peft  # pylint: disable=import-outside-toplevel
  from lmjax.models import family, lora  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import open_run  # pylint: disable=import-outside-toplevel

  if lora_mode not in LORA_MODES:
    raise HfError(f"--lora={lora_mode!r} is invalid: choose one of {', '.join(LORA_MODES)}")
  out_dir = Path(out_dir)
  marker = peft.CONFIG_FILE if lora_mode == "adapter" else CONFIG_FILE
  if (out_dir / marker).exists():
    raise HfError(f"--out_dir={out_dir} already holds a checkpoint ({marker}); choose a new directory")
  run = open_run(workdir)
  model = run.config.model
  original = read_json(Path(workdir) / HF_CONFIG_FILE)  # an imported run's checkpoint config, if it is one
  arch = for_export(model, original.get("model_type"))
  settings = lora.LoraSettings.from_config(run.config)
  if settings is None and lora_mode != "merged":
    raise HfError(f"--lora={lora_mode} exports a LoRA run's parts, but {workdir} trained no adapters "
                  f"(finetune.lora.rank=0); export it without --lora")
  params, step = run.load_params(step)
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  tokenizer = run.tokenizer
  vocab = tokenizer.vocab_map or VocabMap.identity(tokenizer.vocab_size)
  fields = model.to_dict()
  out_dir.mkdir(parents=True, exist_ok=True)
  if lora_mode == "adapter":
    config, tensors = peft.export_adapters(params, settings, arch, fields, vocab, arch.weight_layout,
                                           family(model.name).interface, base_model)
    write_weights(out_dir, tensors, peft.WEIGHTS_FILE)
    write_json(out_dir / peft.CONFIG_FILE, config)  # last: its presence marks a complete export
    return Exported(out_dir, step, arch.model_type, [], tokenizer.kind, lora_mode, len(config["target_modules"]))
  if settings is not None:
    params = lora.merge(params, settings.scale) if lora_mode == "merged" else lora.strip(params)
  weights = arch.export_params(params, fields, vocab)
  write_weights(out_dir, weights)
  files = _tokenizer_files(tokenizer, out_dir, model)
  if not files:
    _native_specials(out_dir, vocab)
  # config.json last: its presence marks a complete export.
  write_json(out_dir / CONFIG_FILE, arch.export_config(fields, vocab))
  return Exported(out_dir, step, arch.model_type, files, tokenizer.kind, lora_mode if settings is not None else "")


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from lmjax.cli import fail  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import RunError  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  f = flags.FLAGS
  try:
    result = export_run(f.workdir, f.out_dir, f.step, f.lora, f.base_model)
  except (HfError, RunError) as e:
    fail(str(e))
  for line in report(result, f.workdir):
    print(line, file=sys.stderr)


def report(result: Exported, workdir: str | Path) -> list[str]:
  """What the CLI prints: where the checkpoint went, and whether transformers can tokenize for it."""
  if result.lora == "adapter":
    return [f"exported the LoRA adapters of {workdir} (checkpoint step {result.step}, {result.adapter_modules} "
            f"modules) in PEFT's format to {result.out_dir}: {', '.join(ADAPTER_FILES)}; load them onto "
            f"the base Hugging Face {result.architecture} with peft.PeftModel.from_pretrained(base, "
            f"'{result.out_dir}')"]
  files = ["config.json", "model.safetensors", *result.tokenizer_files]
  lines = [f"exported {workdir} (checkpoint step {result.step}) as Hugging Face {result.architecture} to "
           f"{result.out_dir}: {', '.join(files)}"]
  if not result.tokenizer_files:
    lines.append(f"note: the run's tokenizer is lmjax-specific (kind {result.tokenizer_kind!r}) and has no "
                 f"transformers equivalent; the model's token ids are lmjax's (specials in lmjax_special_ids.json): "
                 f"encode text with lmjax.data.tokenizers.load_tokenizer('{Path(workdir) / 'tokenizer'}')")
  return lines


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "The lmjax run to export (config.json, tokenizer/, checkpoints/).")
  flags.DEFINE_string("out_dir", None, "The Hugging Face checkpoint directory to create.")
  flags.DEFINE_integer("step", None, "Checkpoint step to export; default the latest.")
  flags.DEFINE_enum("lora", "merged", LORA_MODES, "A LoRA run: the adapters merged into the weights, the frozen "
                    "base weights alone, or the adapters alone in PEFT's format.")
  flags.DEFINE_string("base_model", "", "With --lora=adapter: base_model_name_or_path written in adapter_config.json "
                      "(the Hugging Face checkpoint the adapters belong on).")
  flags.mark_flags_as_required(["workdir", "out_dir"])


def run() -> None:
  """The `lmjax-export` command."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from lmjax.cli import describe_command, parse_flags  # pylint: disable=import-outside-toplevel
  _define_flags()
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
