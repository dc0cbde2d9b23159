"""Supervised fine-tuning on chat data (task='sft'): next-token loss on the assistant's replies only.

Examples come from JSONL files (finetune.train_file, finetune.eval_file: a path, glob or comma-separated list) or a
prepared TFDS dataset (finetune.tfds_name with finetune.train_split / eval_split), one record each:
{"messages": [{"role", "content"}, ...]} rendered with the chat template `sft.chat_template`, or {"prompt",
"completion"} used as written (lmjax/data/chat_examples.py). The loss is on the assistant tokens (the completion)
and the <eos> after them; with `sft.pack` several examples share a row, separated by segment ids, so that no
attention and no loss crosses examples (lmjax/data/packing.py). An example longer than data.seq_len + 1 tokens is
cut to fit (dropped when none of its trained tokens is left), and the counts are logged.

Batches are causal_lm's, so the model, the loss, the eval metrics (over the trained tokens of the held-out split)
and LoRA (finetune.lora) are the causal LM task's. At each eval the trainer also writes the model's answers to the
first train.num_samples held-out prompts beside the data's own answers (workdir/samples/step_NNNNNN.txt, .jsonl).
Starting from a pretrained or imported decoder: finetune.init_from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Iterable

import grain
import ml_collections
import numpy as np
from absl import logging

from lmjax import config as config_lib
from lmjax.data import chat_examples, example_arrays, packing, records
from lmjax.data.chat import ChatTemplate
from lmjax.data.example_arrays import Arrays
from lmjax.data.text_files import DataError
from lmjax.data.tokenizers import Tokenizer
from lmjax.registry import TASKS
from lmjax.tasks.base import Batch, SamplePrompt, TaskData
from lmjax.tasks.causal_lm import CausalLmTask


def _validate(cfg: ml_collections.ConfigDict) -> None:
  spec = cfg.sft.chat_template
  if not spec.strip():
    config_lib.fail("sft.chat_template", spec, f"choose {' or '.join(map(repr, chat_examples.TEMPLATE_CHOICES))}, "
                    f"or give a tokenizer_config.json or Jinja template file")


config_lib.register_section("sft", {
    # 'auto': the chat template kept with the tokenizer of finetune.init_from's run, else 'builtin' (lmjax's
    # "### Role:" turns); or a path to a Hugging Face tokenizer_config.json or to a Jinja template file.
    "chat_template": "auto",
    "pack": True,  # several examples per row (segment ids keep them apart); False: one example per row
}, _validate)


def check_example_fields(config: ml_collections.ConfigDict) -> None:
  """What SFT and DPO need of the finetune section: where their examples come from."""
  f = config.finetune
  if not f.tfds_name:
    for field in ("train_file", "eval_file"):
      if not f[field].strip():
        config_lib.fail(f"finetune.{field}", f[field], f"task={config.task!r} reads its examples from JSONL files: "
                        f"set finetune.train_file and finetune.eval_file (or finetune.tfds_name)")
  config_lib.at_least(config, "finetune.eval_examples", 0)
  config_lib.at_least(config, "finetune.init_step", 0)
  config_lib.at_least(config, "data.seq_len", 4)


def template_of(config: ml_collections.ConfigDict) -> ChatTemplate:
  """The chat template of sft.chat_template ('auto' looks beside the tokenizer of finetune.init_from's run)."""
  start = Path(config.finetune.init_from) / "tokenizer" if config.finetune.init_from else None
  return chat_examples.resolve_template(config.sft.chat_template, start)


def split_records(config: ml_collections.ConfigDict, which: str, data_dir: Path) -> list[records.Record]:
  """The train or eval records of a post-training task (finetune.{which}_file or the TFDS split)."""
  f = config.finetune
  found = records.open_records(files=f[f"{which}_file"], tfds_name=f.tfds_name, split=f[f"{which}_split"],
                               data_dir=data_dir, field=f"finetune.{which}_file")
  return found[:f.eval_examples] if which == "eval" and f.eval_examples else found


@dataclasses.dataclass(frozen=True)
class ExampleRowsData(TaskData):
  """Rows of post-training examples (packed chats, or preference pairs): shuffled epochs of the train rows, and the
  held-out prompts answered at each eval. Subclasses say how their eval rows are batched."""
  config: ml_collections.ConfigDict
  train: Arrays
  eval: Arrays
  summary: str
  prompts: tuple[SamplePrompt, ...] = ()

  def train_dataset(self, process_index: int, process_count: int) -> grain.IterDataset:
    return example_arrays.train_dataset(self.train, self.config.train.batch_size, self.config.data.shuffle_seed,
                                        process_index, process_count)

  def sample_prompts(self) -> list[SamplePrompt]:
    return list(self.prompts)


@dataclasses.dataclass(frozen=True)
class SftData(ExampleRowsData):
  """Packed rows of the train and eval examples, and the held-out prompts answered at each eval."""

  def eval_sets(self, process_index: int, process_count: int) -> dict[str, list[Batch]]:
    t = self.config.train
    batches = example_arrays.eval_batches(self.eval, t.eval_batch_size or t.batch_size, 0, process_index,
                                          process_count)
    for batch in batches:  # rows that pad the last batch count for nothing
      index = batch.pop("index")
      batch["loss_mask"] = np.where((index >= 0)[:, None], batch["loss_mask"], 0.0).astype(np.float32)
    return {"eval": batches}


def encode_split(config: ml_collections.ConfigDict, found: list[records.Record], template: ChatTemplate,
                 tokenizer: Tokenizer, which: str) -> tuple[list[chat_examples.Encoded], Arrays]:
  """(the encoded examples, their packed rows). An example longer than a row (data.seq_len + 1 tokens) is cut to
  fit, and dropped when nothing it trains on is left; both are logged."""
  width = config.data.seq_len + 1
  encoded = [chat_examples.encode(chat_examples.sft_pieces(r, template), tokenizer) for r in found]
  kept = [e for e in encoded if e.trained[:width].any()]
  cut = sum(len(e.ids) > width for e in encoded)
  if cut:
    logging.warning("%d of the %d %s examples are longer than data.seq_len + 1 = %d tokens (the longest: %d): cut to "
                    "fit, and the %d with nothing left to train on dropped; raise data.seq_len to keep them whole.",
                    cut, len(encoded), which, width, max(len(e.ids) for e in encoded), len(encoded) - len(kept))
  if not kept:
    raise DataError(f"none of the {len(encoded)} {which} examples has a trained token within data.seq_len + 1 = "
                    f"{width} tokens; raise data.seq_len")
  return kept, packing.pack(kept, config.data.seq_len, config.sft.pack)


@TASKS.register("sft")
@dataclasses.dataclass(frozen=True)
class SftTask(CausalLmTask):
  """causal_lm's model, batches, loss and metrics, on packed chat examples with the loss on the replies."""
  evaluates_other_lengths: ClassVar[bool] = False
  sections: ClassVar[tuple[str, ...]] = ("finetune", "sft")

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    check_example_fields(config)

  @classmethod
  def tokenizer_texts(cls, config: ml_collections.ConfigDict, data_dir: Path) -> Iterable[str]:
    """A new tokenizer learns the text of the training examples as the template renders them."""
    template = template_of(config)
    for record in split_records(config, "train", data_dir):
      yield "".join(p.text for p in chat_examples.sft_pieces(record, template))

  @classmethod
  def prepare_data(cls, config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: Path) -> SftData:
    template = template_of(config)
    train_encoded, train = encode_split(config, split_records(config, "train", data_dir), template, tokenizer,
                                        "train")
    eval_encoded, eval_ = encode_split(config, split_records(config, "eval", data_dir), template, tokenizer, "eval")
    trained = int(train["loss_mask"].sum())
    summary = (f"{len(train_encoded)} train examples in {len(train['inputs'])} rows ({trained} trained tokens), "
               f"{len(eval_encoded)} eval examples in {len(eval_['inputs'])} rows; chat template {template.name}")
    prompts = tuple(SamplePrompt(e.prompt_text, tuple(int(i) for i in e.prompt_ids), e.reference)
                    for e in eval_encoded[:config.train.num_samples])
    return SftData(config, train, eval_, summary, prompts)
