r"""Log-likelihood requests per second: lmjax's harness model class against the harness's transformers backend.

  python experiments/evaluation/benchmark.py [--contexts=64] [--choices=4] [--hf_batch_size=16] [--layers=12]

Builds a GPT-2-small-shaped model (12 layers, width 768, 12 heads, 1024 positions, 50,257-token vocabulary) with
random weights through transformers, saves it, imports it into lmjax (lmjax.hf.import_checkpoint) and sends the
same multiple-choice-shaped requests (each context with several continuations, as HellaSwag or ARC ask) to both
backends' `loglikelihood`. Prints a table of requests/s and tokens/s, lmjax both with compilation (the first call
in a fresh process) and without (the same requests again), and without sharing contexts between continuations,
and the largest difference between the two backends' log-probabilities. Nothing is downloaded: the tokenizer is a byte-level BPE trained here on the embedded corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # pylint: disable=wrong-import-position


def build(directory: Path, layers: int, vocab_pieces: int) -> None:
  import tokenizers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from lmjax.data.corpus import read_embedded_corpus  # pylint: disable=import-outside-toplevel
  text = read_embedded_corpus()[:2_000_000]
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(text.split("\n\n"), vocab_size=vocab_pieces, special_tokens=["<|endoftext|>"])
  bpe.save_model(str(directory))
  vocab = json.loads((directory / "vocab.json").read_text())
  order = sorted(vocab, key=lambda piece: (piece == "<|endoftext|>", vocab[piece]))
  (directory / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(order)}))
  torch.manual_seed(0)
  # GPT-2 small's shape; the embedding keeps GPT-2's 50,257 rows (more than this tokenizer's pieces).
  config = transformers.GPT2Config(n_layer=layers, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257,
                                   bos_token_id=len(order) - 1, eos_token_id=len(order) - 1)
  transformers.GPT2LMHeadModel(config).eval().save_pretrained(directory)
  transformers.GPT2Tokenizer.from_pretrained(str(directory)).save_pretrained(directory)


def requests(contexts: int, choices: int, seed: int = 0) -> list[tuple[str, str]]:
  """Passages of 20-150 words from the corpus as contexts, each with `choices` continuations of 3-25 words."""
  from lmjax.data.corpus import read_embedded_corpus  # pylint: disable=import-outside-toplevel
  words = read_embedded_corpus()[:1_000_000].split()
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(contexts):
    start = int(rng.integers(0, len(words) - 200))
    context = " ".join(words[start:start + int(rng.integers(20, 150))])
    for _ in range(choices):
      s = int(rng.integers(0, len(words) - 30))
      out.append((context, " " + " ".join(words[s:s + int(rng.integers(3, 25))])))
  return out


def timed(fn, instances) -> tuple[list, float]:
  start = time.perf_counter()
  out = fn(instances)
  return out, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--contexts", type=int, default=64)
  parser.add_argument("--choices", type=int, default=4)
  parser.add_argument("--hf_batch_size", type=int, default=16)
  parser.add_argument("--batch_tokens", type=int, default=8192)
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--vocab_pieces", type=int, default=8000)
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  from lm_eval.api.instance import Instance  # pylint: disable=import-outside-toplevel
  from lm_eval.models.huggingface import HFLM  # pylint: disable=import-outside-toplevel
  from lmjax.harness import LmjaxLM  # pylint: disable=import-outside-toplevel
  from lmjax.hf.import_checkpoint import import_checkpoint  # pylint: disable=import-outside-toplevel
  from lmjax.saved_run import open_run  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    hf_dir, workdir = Path(tmp) / "hf", Path(tmp) / "run"
    hf_dir.mkdir()
    build(hf_dir, args.layers, args.vocab_pieces)
    import_checkpoint(hf_dir, workdir)
    pairs = requests(args.contexts, args.choices)
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]

    run = open_run(workdir)
    params, _ = run.load_params()
    ours = LmjaxLM(run.model(), params, run.tokenizer, run.config, batch_tokens=args.batch_tokens)
    tokens = sum(len(ours.tok_encode(c + x)) for c, x in pairs)
    lmjax_out, lmjax_cold = timed(lambda r: ours.loglikelihood(r, disable_tqdm=True), instances)
    _, lmjax_warm = timed(lambda r: ours.loglikelihood(r, disable_tqdm=True), instances)
    compilations = ours.compilations
    ours.scorer.share_prefixes = False  # every row runs its whole context (compiles its shapes first)
    ours.loglikelihood(instances, disable_tqdm=True)
    _, lmjax_alone = timed(lambda r: ours.loglikelihood(r, disable_tqdm=True), instances)
    del ours, params

    theirs = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=args.hf_batch_size)
    hf_out, hf_seconds = timed(lambda r: theirs.loglikelihood(r, disable_tqdm=True), instances)

  diff = max(abs(a[0] - b[0]) for a, b in zip(lmjax_out, hf_out))
  n = len(instances)
  print(f"{n} log-likelihood requests ({args.contexts} contexts x {args.choices} continuations, {tokens:,} tokens); "
        f"GPT-2-small shape, {args.layers} layers; torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"CPU cores {os.cpu_count()}")
  print("| backend | seconds | requests/s | tokens/s | vs transformers |")
  print("|---|---|---|---|---|")
  rows = [(f"harness transformers backend (HFLM, batch_size={args.hf_batch_size})", hf_seconds),
          (f"lmjax, compilation included ({compilations} programs)", lmjax_cold),
          ("lmjax, compiled", lmjax_warm),
          ("lmjax, compiled, each context run once per continuation (no prefix sharing)", lmjax_alone)]
  for name, seconds in rows:
    print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {tokens / seconds:,.0f} | {hf_seconds / seconds:.2f}x |")
  print(f"largest |log p (lmjax) - log p (transformers)| over the requests: {diff:.2e}")


if __name__ == "__main__":
  main()
