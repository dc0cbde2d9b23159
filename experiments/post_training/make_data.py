r"""An instruction set and preference pairs built offline from the corpus that ships with lmjax (the King James
Bible, lmjax/data/corpus/): five small tasks on verse fragments, each with one right answer.

  python experiments/post_training/make_data.py --out=data/post_training

  first   "First word: <fragment>"        -> its first word
  last    "Last word: <fragment>"         -> its last word
  count   "Count the words: <fragment>"   -> how many words it has
  reverse "Reverse: <fragment>"           -> its words in reverse order
  next    "Continue: <first words>"       -> the verse's next words (what pretraining may remember)

Fragments are 3 to 6 consecutive words of a verse. Train examples come from the chapters pretraining trains on (the
first 90%), eval examples from the held-out last 10%, as lmjax splits the corpus. Writes sft_{train,eval}.jsonl
({"messages": [user, assistant]}) and dpo_{train,eval}.jsonl ({"prompt": [user], "chosen", "rejected"}), where the
rejected answer is a corruption of the right one: another word of the fragment, a count off by one, two words
swapped, or another verse's words. Every example fits data.seq_len=128 under the built-in chat template with the
byte tokenizer.
"""

import argparse
import json
import random
import re
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lmjax.data.corpus import read_embedded_corpus  # noqa: E402

TASKS = ("first", "last", "count", "reverse", "next")
MAX_BYTES = 120  # rendered conversation, leaving room for <bos>, <eos> within 129 tokens


def verses(chapters: list[str]) -> list[list[str]]:
  out = []
  for chapter in chapters:
    for line in chapter.split("\n")[1:]:  # the first line names the book and chapter
      words = re.findall(r"[A-Za-z']+", line)
      if len(words) >= 10:
        out.append(words)
  return out


def example(task: str, words: list[str], rng: random.Random, others: list[list[str]]) -> tuple[str, str, str]:
  """(instruction, right answer, corrupted answer)."""
  n = rng.randint(3, 6)
  start = rng.randrange(len(words) - n - 3)
  frag = words[start:start + n]
  text = " ".join(frag)
  if task == "first":
    return f"First word: {text}", frag[0], rng.choice(frag[1:])
  if task == "last":
    return f"Last word: {text}", frag[-1], rng.choice(frag[:-1])
  if task == "count":
    return f"Count the words: {text}", str(n), str(n + rng.choice([-1, 1]))
  if task == "reverse":
    wrong = frag[::-1]
    i = rng.randrange(n - 1)
    wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
    return f"Reverse: {text}", " ".join(frag[::-1]), " ".join(wrong)
  follow = words[start + n:start + n + 3]
  other = rng.choice(others)
  j = rng.randrange(len(other) - 3)
  return f"Continue: {text}", " ".join(follow), " ".join(other[j:j + 3])


def build(pool: list[list[str]], count: int, seed: int) -> list[tuple[str, str, str, str]]:
  rng = random.Random(seed)
  out = []
  while len(out) < count:
    task = TASKS[len(out) % len(TASKS)]
    prompt, right, wrong = example(task, rng.choice(pool), rng, pool)
    if right == wrong:
      continue
    rendered = f"### User:\n{prompt}\n\n### Assistant:\n{max(right, wrong, key=len)}\n\n"
    if len(rendered.encode()) <= MAX_BYTES:
      out.append((task, prompt, right, wrong))
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="data/post_training")
  parser.add_argument("--sft_train", type=int, default=4000)
  parser.add_argument("--dpo_train", type=int, default=2000)
  parser.add_argument("--eval", type=int, default=250)
  args = parser.parse_args()
  chapters = read_embedded_corpus().split("\n\n")
  cut = int(len(chapters) * 0.9)
  train_pool, eval_pool = verses(chapters[:cut]), verses(chapters[cut:])
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  splits = {"sft_train": build(train_pool, args.sft_train, 0), "sft_eval": build(eval_pool, args.eval, 1),
            "dpo_train": build(train_pool, args.dpo_train, 2), "dpo_eval": build(eval_pool, args.eval, 3)}
  for name, rows in splits.items():
    with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
      for task, prompt, right, wrong in rows:
        user = {"role": "user", "content": prompt}
        if name.startswith("sft"):
          record = {"messages": [user, {"role": "assistant", "content": right}], "task": task}
        else:
          record = {"prompt": [user], "chosen": right, "rejected": wrong, "task": task}
        f.write(json.dumps(record) + "\n")
    print(f"{out / name}.jsonl: {len(rows)} examples")


if __name__ == "__main__":
  main()
