r"""Generate text from a trained run, and write sample sheets for people to judge.

  python -m lmjax.generate --workdir=runs/default --prompt="And God said" --num_samples=3 --top_p=0.9
  python -m lmjax.generate --workdir=runs/default --input=prompts.txt --num_samples=4 --temperature=0.8 \
      --sheet=top_p09
  python -m lmjax.generate --workdir=runs/default --prompt="In the beginning" --beam_size=4 --length_penalty=0.6
  python -m lmjax.generate --workdir=runs/qwen2 --chat --system="Be brief." --user="Hi!" --temperature=0

Reads the run's config.json, tokenizer and the latest checkpoint's parameters (or --step's), generates
--num_samples continuations of every prompt (one batch, decoded over a key/value cache), and prints them. With
--sheet=NAME it also writes workdir/samples/NAME.md (the settings, then each prompt with its samples) and NAME.jsonl
(one record per sample). Without --prompt or --input it samples from the start of a document (an empty prompt).
With --chat it answers a conversation (--system and repeated --user flags, or a --messages JSONL file) rendered
with the run's chat template, an imported checkpoint's own or lmjax's built-in one (lmjax/data/chat.py), and
prints the assistant's reply.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

from lmjax import console
from lmjax.cli import describe_command, fail, parse_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's directory: config.json, tokenizer/ and checkpoints/.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
_INPUT = flags.DEFINE_string("input", "", "A UTF-8 file with one prompt per line (instead of --prompt).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples per prompt (with --beam_size: the best beams).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate after each prompt, at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens only; 0 for all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the most likely tokens holding this probability.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", 0, "Beam search with this many beams instead of sampling; 0 samples.")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 0.6, "Beam search: alpha of ((5 + length) / 6)^alpha.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the samples.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load; default the latest.")
_SHEET = flags.DEFINE_string("sheet", "", "Also write workdir/samples/NAME.md and NAME.jsonl.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Rows (prompt x sample) decoded together, at most.")
_CHAT = flags.DEFINE_bool("chat", False, "Reply as the assistant to a conversation rendered with the run's chat "
                          "template: --system and --user flags, or --messages.")
_SYSTEM = flags.DEFINE_string("system", "", "--chat: the system message.")
_USER = flags.DEFINE_multi_string("user", [], "--chat: a user message; repeat for several turns.")
_MESSAGES = flags.DEFINE_string("messages", "", "--chat: a JSONL file, one {\"role\", \"content\"} message per line "
                                "(one conversation), or one {\"messages\": [...]} conversation per line.")
flags.mark_flag_as_required("workdir")


class PromptError(ValueError):
  """A prompt (or source) that does not fit the model; the message names the limit."""


def check_flags() -> None:
  """Every flag that can be checked without touching the workdir; one line per mistake."""
  if _PROMPT.value and _INPUT.value:
    fail("give prompts with --prompt or --input, not both")
  for flag, low in ((_NUM_SAMPLES, 1), (_MAX_NEW, 1), (_TOP_K, 0), (_BEAM_SIZE, 0), (_BATCH_SIZE, 1)):
    if flag.value < low:
      fail(f"--{flag.name}={flag.value} must be >= {low}")
  for flag in (_TEMPERATURE, _TOP_P, _LENGTH_PENALTY):  # NaN passes every comparison below, inf some
    if not math.isfinite(flag.value):
      fail(f"--{flag.name}={flag.value} must be a finite number")
  if _TEMPERATURE.value < 0:
    fail(f"--temperature={_TEMPERATURE.value} must be >= 0 (0 is greedy)")
  if not 0.0 < _TOP_P.value <= 1.0:
    fail(f"--top_p={_TOP_P.value} must be in (0, 1]")
  if _BEAM_SIZE.value and _NUM_SAMPLES.value > _BEAM_SIZE.value:
    fail(f"--num_samples={_NUM_SAMPLES.value} exceeds --beam_size={_BEAM_SIZE.value}: beam search returns at most "
         f"that many sequences per prompt")
  if _BEAM_SIZE.value and (_TOP_K.value or _TOP_P.value < 1.0):
    fail("--top_k and --top_p apply to sampling, not to beam search (--beam_size)")
  if not _CHAT.value and (_USER.value or _SYSTEM.value or _MESSAGES.value):
    fail("--user, --system and --messages give a conversation to --chat; add --chat")
  if _CHAT.value and (_PROMPT.value or _INPUT.value):
    fail("--chat takes its conversation from --user/--system or --messages, not --prompt/--input")
  if _SHEET.value and not re.fullmatch(r"[\w.-]+", _SHEET.value):
    fail(f"--sheet={_SHEET.value!r} must be a plain file name (letters, digits, '_', '-', '.')")


def read_conversations() -> list[list[dict[str, str]]]:
  """--chat: the conversations to answer, from --messages or from --system/--user."""
  if _MESSAGES.value:
    try:
      lines = [json.loads(line) for line in Path(_MESSAGES.value).read_text(encoding="utf-8").splitlines()
               if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      fail(f"--messages={_MESSAGES.value}: cannot read it ({e.__class__.__name__}: {e})")
    if lines and all(isinstance(x, dict) and "messages" in x for x in lines):
      return [x["messages"] for x in lines]
    return [lines]
  if not _USER.value:
    fail("--chat needs a conversation: --user=TEXT (repeatable, with --system=TEXT) or --messages=FILE")
  system = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
  return [system + [{"role": "user", "content": text} for text in _USER.value]]


def chat_prompts(workdir: Path, tokenizer: Any) -> tuple[list[str], list[list[int]]]:
  """(rendered conversations, their token ids) with the run's chat template (lmjax/data/chat.py)."""
  from lmjax.data import chat
  try:
    template = chat.from_directory(workdir / "tokenizer")
    conversations = read_conversations()
    texts = [template.render(c, add_generation_prompt=True) for c in conversations]
    return texts, [chat.prompt_ids(template, tokenizer, c) for c in conversations]
  except chat.ChatError as e:
    fail(str(e))


def read_prompts() -> list[str]:
  if _INPUT.value:
    try:
      lines = Path(_INPUT.value).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
      fail(f"--input={_INPUT.value}: cannot read it ({e.__class__.__name__}: {e})")
    prompts = [line for line in lines if line.strip()]
    if not prompts:
      fail(f"--input={_INPUT.value} holds no prompts (one per line)")
    return prompts
  return list(_PROMPT.value) or [""]


def warn_unknown_characters(tokenizer: Any, prompts: list[str]) -> None:
  from lmjax.data.tokenizers import unknown_character_warnings  # pylint: disable=import-outside-toplevel
  for line in unknown_character_warnings(tokenizer, prompts):
    print(line, file=sys.stderr)


def translation_settings(config: Any, s: dict[str, Any]) -> dict[str, Any]:
  """An encoder-decoder run translates its prompts: unless sampling flags are given, beam search with the run's
  seq2seq.beam_size and length_penalty, and at most its max_decode_len (or target_max_len) new tokens."""
  q = config.seq2seq
  if not _MAX_NEW.present:
    s = {**s, "max_new_tokens": q.max_decode_len or q.target_max_len}
  sampling = any(flag.present for flag in (_TEMPERATURE, _TOP_K, _TOP_P))
  if s["strategy"] != "beam" and not sampling:
    s = {"strategy": "beam", "beam_size": max(q.beam_size, _NUM_SAMPLES.value),
         "length_penalty": _LENGTH_PENALTY.value if _LENGTH_PENALTY.present else q.length_penalty,
         "max_new_tokens": s["max_new_tokens"]}
  return s


def settings() -> dict[str, Any]:
  if _BEAM_SIZE.value:
    return {"strategy": "beam", "beam_size": _BEAM_SIZE.value, "length_penalty": _LENGTH_PENALTY.value,
            "max_new_tokens": _MAX_NEW.value}
  return {"strategy": "greedy" if _TEMPERATURE.value == 0 else "sample", "temperature": _TEMPERATURE.value,
          "top_k": _TOP_K.value, "top_p": _TOP_P.value, "max_new_tokens": _MAX_NEW.value, "seed": _SEED.value}


@contextlib.contextmanager
def _quiet_warnings():
  """Orbax warns that a sub-item has no metadata file of its own when read directly; expected here."""
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


def load_run(workdir: Path) -> tuple[Any, Any, Any]:
  """(config, tokenizer, model) of a run, failing in one line on what is missing."""
  from lmjax.registry import MODELS
  from lmjax.saved_run import RunError, open_run
  try:
    run = open_run(workdir)
  except RunError as e:
    fail(str(e))
  config, tokenizer = run.config, run.tokenizer
  if not MODELS.get(config.model.name).decodes:
    decoding = ", ".join(repr(n) for n, f in MODELS.items() if f.decodes)
    fail(f"config.model.name={config.model.name!r}: lmjax.generate decodes over a key/value cache, which "
         f"model.name={decoding} can")
  if _TOP_K.value > tokenizer.vocab_size:
    fail(f"--top_k={_TOP_K.value} exceeds the vocabulary of {tokenizer.vocab_size} tokens")
  return config, tokenizer, run.model()


def load_params(workdir: Path, step: int | None) -> tuple[Any, int]:
  from lmjax.saved_run import RunError
  from lmjax.saved_run import load_params as load
  try:
    with _quiet_warnings():
      return load(workdir, step)
  except RunError as e:
    fail(str(e).replace("no checkpoint at step", "--step: no checkpoint at step"))


def generate_texts(model: Any, params: Any, tokenizer: Any, prompts: list[str], s: dict[str, Any],
                   num_samples: int, batch_size: int,
                   prompt_ids: list[list[int]] | None = None) -> list[list[dict[str, Any]]]:
  """For each prompt, num_samples dicts {"text", "new_tokens", and "score" for beam search}. `prompt_ids`, when
  given, are the prompts' tokens as they are (a rendered chat), instead of <bos> and the encoded prompt."""
  import functools
  import jax
  import jax.numpy as jnp
  from lmjax import decode
  from lmjax.data.tokenizers import BOS_ID, EOS_ID

  decoder = decode.step_decoder(model)
  # An encoder-decoder reads each prompt as its source (ids, <eos>) and starts every output from <bos> alone.
  translating = decoder is not None and decoder.takes_encoder_inputs
  sources = [[*tokenizer.encode(p).tolist(), EOS_ID] for p in prompts] if translating else []
  S = max(map(len, sources), default=0)
  if translating and decoder.max_len is not None and S > decoder.max_len:
    raise PromptError(f"a source of {S} tokens (with <eos>) exceeds model.max_len={decoder.max_len}, the size of the "
                      f"learned position table; shorten it")
  encoded = [[BOS_ID] if translating else [BOS_ID, *tokenizer.encode(p).tolist()] for p in prompts]
  if prompt_ids is not None and not translating:
    encoded = [list(ids) for ids in prompt_ids]
  P = max(map(len, encoded))
  try:
    decode.check_fits(decoder, P, s["max_new_tokens"])
  except ValueError as e:
    raise PromptError(str(e)) from None
  beam = s["strategy"] == "beam"
  # Sampling repeats each prompt once per sample; beam search returns its best beams for each prompt once.
  rows = [(i, j) for i in range(len(prompts)) for j in range(1 if beam else num_samples)]
  batch = min(batch_size, len(rows))
  if beam:
    fn = jax.jit(functools.partial(decode.beam_search, decoder, beam_size=s["beam_size"],
                                   max_new_tokens=s["max_new_tokens"], alpha=s["length_penalty"]))
  else:
    fn = jax.jit(functools.partial(decode.generate, decoder, max_new_tokens=s["max_new_tokens"],
                                   temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"]))
  rng = jax.random.PRNGKey(s.get("seed", 0))
  results: list[list[dict[str, Any]]] = [[] for _ in prompts]
  for chunk_index, start in enumerate(range(0, len(rows), batch)):
    chunk = rows[start:start + batch]
    chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # one shape for every chunk: compiled once
    prompt_BP = np.zeros((batch, P), np.int32)
    lengths_B = np.asarray([len(encoded[i]) for i, _ in chunk], np.int32)
    for r, (i, _) in enumerate(chunk):
      prompt_BP[r, :len(encoded[i])] = encoded[i]
    extra = {}
    if translating:
      source_BS = np.zeros((batch, S), np.int32)
      for r, (i, _) in enumerate(chunk):
        source_BS[r, :len(sources[i])] = sources[i]
      extra["encoder_inputs"] = {"tokens": jnp.asarray(source_BS),
                                 "lengths": jnp.asarray([len(sources[i]) for i, _ in chunk], jnp.int32)}
    if beam:
      tokens_BWT, scores_BW = jax.device_get(fn(params, jnp.asarray(prompt_BP), jnp.asarray(lengths_B), **extra))
      outputs = [[(tokens_BWT[r, w], float(scores_BW[r, w])) for w in range(num_samples)] for r in range(batch)]
    else:
      tokens_BT = jax.device_get(fn(params, jnp.asarray(prompt_BP), jnp.asarray(lengths_B),
                                    jax.random.fold_in(rng, chunk_index), **extra))
      outputs = [[(tokens_BT[r], None)] for r in range(batch)]
    for r, (i, j) in enumerate(rows[start:start + batch]):
      for tokens_T, score in outputs[r]:
        new = tokens_T[lengths_B[r]:lengths_B[r] + s["max_new_tokens"]].tolist()
        new = new[: new.index(EOS_ID) + 1] if EOS_ID in new else new
        record = {"text": tokenizer.decode(new), "new_tokens": len(new), "ended_with_eos": EOS_ID in new}
        if score is not None:
          record["score"] = score
        results[i].append(record)
  return results


def write_sheet(directory: Path, name: str, meta: dict[str, Any], prompts: list[str],
                results: list[list[dict[str, Any]]], separator: str = "") -> tuple[Path, Path]:
  """NAME.md for reading (settings table, then each prompt and its samples) and NAME.jsonl for tools."""
  directory.mkdir(parents=True, exist_ok=True)
  lines = [f"# Sample sheet: {name}", "", "| setting | value |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in meta.items()]
  records = []
  for n, (prompt, samples) in enumerate(zip(prompts, results)):
    lines += ["", f"## Prompt {n + 1}", "", _quote(prompt or "(empty: the start of a document)")]
    for j, sample in enumerate(samples):
      score = f", score {sample['score']:.4f}" if "score" in sample else ""
      ending = "ended with EOS" if sample["ended_with_eos"] else "hit the token limit"
      lines += ["", f"**Sample {j + 1}** ({sample['new_tokens']} tokens, {ending}{score})", "", "```text",
                prompt + separator + sample["text"], "```"]
      records.append({"prompt": prompt, "prompt_index": n, "sample": j, "text": sample["text"],
                      **({"score": sample["score"]} if "score" in sample else {}), "settings": meta,
                      "checkpoint_step": meta["checkpoint_step"]})
  md, jsonl = directory / f"{name}.md", directory / f"{name}.jsonl"
  md.write_text("\n".join(lines) + "\n", encoding="utf-8")
  jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
  return md, jsonl


def _quote(text: str) -> str:
  return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [text])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  check_flags()
  workdir = Path(_WORKDIR.value)
  config, tokenizer, model = load_run(workdir)
  prompt_ids = None
  if _CHAT.value:
    prompts, prompt_ids = chat_prompts(workdir, tokenizer)
  else:
    prompts = read_prompts()
  warn_unknown_characters(tokenizer, prompts)
  params, step = load_params(workdir, _STEP.value)
  s = settings()
  if config.model.name == "encdec":
    s = translation_settings(config, s)
  start = time.perf_counter()
  try:
    results = generate_texts(model, params, tokenizer, prompts, s, _NUM_SAMPLES.value, _BATCH_SIZE.value,
                             prompt_ids)
  except PromptError as e:  # e.g. prompt + max_new_tokens beyond a learned-position model's max_len
    fail(str(e))
  seconds = time.perf_counter() - start
  for n, (prompt, samples) in enumerate(zip(prompts, results)):
    for j, sample in enumerate(samples):
      score = f" score {sample['score']:.4f}" if "score" in sample else ""
      text = f"{prompt}\n=> {sample['text']}" if config.model.name == "encdec" else prompt + sample["text"]
      print(f"--- prompt {n + 1} sample {j + 1}{score} ---\n{text}\n")
  tokens = sum(r["new_tokens"] for samples in results for r in samples)
  print(f"{tokens} tokens in {seconds:.1f} s, compilation included (checkpoint step {step})", file=sys.stderr)
  if _SHEET.value:
    meta = {"workdir": os.path.abspath(workdir), "checkpoint_step": step, **s, "num_samples": _NUM_SAMPLES.value,
            "prompts": len(prompts), "model": f"{config.model.name}, {config.model.num_layers} layers, "
            f"width {config.model.d_model}, position {config.model.position}", "tokenizer": tokenizer.kind}
    separator = "\n=> " if config.model.name == "encdec" else ""  # a translation follows its source, not continues it
    md, jsonl = write_sheet(workdir / "samples", _SHEET.value, meta, prompts, results, separator)
    print(f"wrote {md} and {jsonl}", file=sys.stderr)


def run() -> None:
  """The `lmjax-generate` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
