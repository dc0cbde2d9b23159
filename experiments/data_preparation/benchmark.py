r"""Raw text to packed token cache: MB/s and peak memory, for char, byte, bpe (SentencePiece) and GPT-2-style BPE.

  python experiments/data_preparation/benchmark.py --size_mb=1024 --workers=2 --baseline=/tmp/lmjax_baseline

The corpus is real text (the embedded King James Bible and Tiny Shakespeare) repeated with its paragraphs shuffled
anew each time, written under /tmp until it holds --size_mb megabytes. Each measurement runs in its own process:
this checkout's `pipeline.tokenize_split` of the train and validation splits (local files, paragraphs, streamed,
--workers tokenizing processes) on the whole corpus (gpt2, lmjax's pure-Python BPE, on its first --gpt2_mb), and --baseline's (a checkout of the previous data path, e.g.
`git archive <commit> | tar -x -C /tmp/lmjax_baseline`) on its first --baseline_mb megabytes: its memory grows with
the corpus (it reads files whole) and it runs at well under 1 MB/s, so a 1 GB run would take hours. Peak RSS is
the largest resident size of the measuring process (its VmHWM) and of any one of its worker processes (their
maxrss, which counts from the measuring process's size when they were spawned).

`gpt2` is lmjax's GPT-2 tokenizer kind (hf_bpe, as lmjax.hf imports it) over a byte-level BPE trained here with the
`tokenizers` library; `gpt2-rust` encodes the same vocabulary with `tokenizers` itself through the batch hook
(`Tokenizer.encode_batch`), after checking that it gives the same ids on a sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
KINDS = ("char", "byte", "bpe", "gpt2", "gpt2-rust")

sys.path.insert(0, os.getcwd() if os.environ.get("PYTHONPATH") else str(REPO))
from lmjax.hf.tokenizers import HfBpeTokenizer  # noqa: E402  pylint: disable=wrong-import-position


def make_corpus(path: Path, size_mb: int, seed: int = 0) -> Path:
  """Real paragraphs, shuffled per repetition, until the file holds size_mb MB (reused when it already does)."""
  if path.exists() and path.stat().st_size >= size_mb * 1e6:
    return path
  sys.path.insert(0, str(REPO))
  from lmjax.data.corpus import read_embedded_corpus  # pylint: disable=import-outside-toplevel
  texts = [read_embedded_corpus()] + ([SHAKESPEARE.read_text(encoding="utf-8")] if SHAKESPEARE.exists() else [])
  paragraphs = [p.strip() for t in texts for p in t.split("\n\n") if p.strip()]
  rng, written = random.Random(seed), 0
  with open(path, "w", encoding="utf-8") as f:
    while written < size_mb * 1e6:
      rng.shuffle(paragraphs)
      block = "\n\n".join(paragraphs) + "\n\n"
      f.write(block)
      written += len(block.encode("utf-8"))
  return path


def prefix(path: Path, size_mb: int) -> Path:
  """The first size_mb MB of the corpus, cut at a paragraph break."""
  out = path.with_name(f"{path.stem}.first{size_mb}mb.txt")
  if not out.exists():
    with open(path, encoding="utf-8") as f:
      text = f.read(int(size_mb * 1e6))
    out.write_text(text[: text.rfind("\n\n") + 2], encoding="utf-8")
  return out


def build_tokenizers(corpus: Path, directory: Path) -> dict[str, Path]:
  """Each kind trained (or made) once on the corpus's first 20 MB, saved where the measuring processes load it."""
  sys.path.insert(0, str(REPO))
  from lmjax.data import tokenizers  # pylint: disable=import-outside-toplevel
  with open(corpus, encoding="utf-8") as f:
    sample = f.read(20_000_000)
  dirs = {}
  for kind, vocab in (("char", 0), ("byte", 0), ("bpe", 8192)):
    dirs[kind] = directory / kind
    tokenizers.build_tokenizer(kind, lambda: [sample], dirs[kind], vocab_size=vocab)
  gpt2 = directory / "gpt2"
  if not (gpt2 / tokenizers.CONFIG_FILE).exists():
    from tokenizers import ByteLevelBPETokenizer  # pylint: disable=import-outside-toplevel
    from lmjax.hf.tokenizers import read_bpe_tokenizer  # pylint: disable=import-outside-toplevel
    trainer_dir = directory / "gpt2_files"
    trainer_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([sample], vocab_size=8192, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(trainer_dir))
    read_bpe_tokenizer(trainer_dir, 8192).save(gpt2)
  dirs["gpt2"] = dirs["gpt2-rust"] = gpt2
  return dirs


class RustBpe(HfBpeTokenizer):
  """lmjax's hf_bpe tokenizer whose encode_batch runs the `tokenizers` library (the same vocabulary and merges)."""

  def __init__(self, vocab, merges, vocab_map, special_tokens):
    from tokenizers import Tokenizer as RustTokenizer  # pylint: disable=import-outside-toplevel
    from tokenizers import models, pre_tokenizers  # pylint: disable=import-outside-toplevel
    super().__init__(vocab, merges, vocab_map, special_tokens)
    self._rust = RustTokenizer(models.BPE(vocab=vocab, merges=merges))
    self._rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

  def encode_batch(self, texts):
    import numpy as np  # pylint: disable=import-outside-toplevel
    encoded = self._rust.encode_batch_fast(list(texts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encoded), np.int64, len(encoded))
    ids = np.fromiter((i for e in encoded for i in e.ids), np.int64, int(lengths.sum()))
    return self._lmjax_of_hf[ids].astype(np.int32), lengths


def measure(kind: str, path: Path, tokenizer_dir: Path, data_dir: Path, workers: int) -> dict:
  """In this process (the checkout on sys.path): both splits of `path` into a fresh cache."""
  from lmjax.config import base_config  # pylint: disable=import-outside-toplevel
  from lmjax.data import pipeline, tokenizers  # pylint: disable=import-outside-toplevel
  import lmjax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  tokenizer = tokenizers.load_tokenizer(tokenizer_dir)
  if kind == "gpt2-rust":
    tokenizer = RustBpe(tokenizer.vocab, tokenizer.merges, tokenizer.vocab_map, tokenizer.special_tokens)
    with open(path, encoding="utf-8") as f:
      sample = [p for p in f.read(2_000_000).split("\n\n") if p.strip()]
    ids, _ = tokenizer.encode_batch(sample)
    plain = [tokenizer.encode(p) for p in sample]
    assert ids.tolist() == [i for p in plain for i in p.tolist()], "the tokenizers library gave other ids"
  c = base_config()
  c.data.source, c.data.paths, c.data.num_workers = "files", str(path), workers
  start = time.perf_counter()
  tokens = 0
  for split in ("train", "validation"):
    tokens += pipeline.tokenize_split(c.data, split, tokenizer, data_dir).num_tokens
  seconds = time.perf_counter() - start
  return {"kind": kind, "mb": path.stat().st_size / 1e6, "seconds": seconds, "tokens": tokens,
          "rss_main_mb": peak_rss_mb(), "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def peak_rss_mb() -> float:
  """This process's own high-water mark (VmHWM): getrusage's maxrss would carry the parent's over from the fork."""
  with open("/proc/self/status", encoding="ascii") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_measure(checkout: Path, kind: str, path: Path, tokenizer_dir: Path, workers: int) -> dict:
  with tempfile.TemporaryDirectory(dir="/tmp", prefix="lmjax-prep-") as data_dir:
    env = dict(os.environ, PYTHONPATH=str(checkout), JAX_PLATFORMS="cpu")
    command = [sys.executable, __file__, "--measure", kind, "--path", str(path), "--tokenizer_dir",
               str(tokenizer_dir), "--data_dir", data_dir, "--workers", str(workers)]
    out = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{checkout} {kind}: {out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size_mb", type=int, default=1024)
  parser.add_argument("--corpus", default="/tmp/lmjax_prep_corpus.txt")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--kinds", default=",".join(KINDS))
  parser.add_argument("--baseline", default="", help="a checkout of the previous data path")
  parser.add_argument("--baseline_mb", type=int, default=8)
  parser.add_argument("--gpt2_mb", type=int, default=64, help="corpus prefix for gpt2 (pure-Python BPE, slow)")
  parser.add_argument("--tokenizers", default="/tmp/lmjax_prep_tokenizers")
  parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
  parser.add_argument("--path", default="", help=argparse.SUPPRESS)
  parser.add_argument("--tokenizer_dir", default="", help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure:
    sys.path.insert(0, os.getcwd())
    print(json.dumps(measure(args.measure, Path(args.path), Path(args.tokenizer_dir), Path(args.data_dir),
                             args.workers)))
    return

  corpus = make_corpus(Path(args.corpus), args.size_mb)
  dirs = build_tokenizers(corpus, Path(args.tokenizers))
  print(f"corpus {corpus}: {corpus.stat().st_size / 1e6:,.0f} MB; {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f} at the start\n")
  print("| tokenizer | path | corpus MB | seconds | MB/s | tokens | peak RSS main MB | peak RSS worker MB |")
  print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)

  def row(path: str, r: dict) -> None:
    print(f"| {r['kind']} | {path} | {r['mb']:,.0f} | {r['seconds']:,.1f} | {r['mb'] / r['seconds']:,.2f} | "
          f"{r['tokens']:,} | {r['rss_main_mb']:,.0f} | {r['rss_worker_mb']:,.0f} |", flush=True)

  for kind in args.kinds.split(","):
    if args.baseline and kind != "gpt2-rust":
      row("previous, in process", run_measure(Path(args.baseline), kind, prefix(corpus, args.baseline_mb),
                                              dirs[kind], 0))
    text = prefix(corpus, args.gpt2_mb) if kind == "gpt2" else corpus
    row(f"now, {args.workers} workers", run_measure(REPO, kind, text, dirs[kind], args.workers))
  print(f"\nload {os.getloadavg()[0]:.1f} at the end")

if __name__ == "__main__":
  main()
