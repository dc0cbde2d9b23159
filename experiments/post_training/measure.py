r"""Tables of the post-training study from finished runs: held-out loss, exact-match answers by task, trained
parameters, memory per device; DPO's preference accuracies before and after. (Step times: step_cost.py.)

  python experiments/post_training/measure.py --data=data/post_training runs/post/{pretrain,sft_full,...}

Answers: greedy decoding (lmjax.generate's batched decoder over the KV cache) of every held-out SFT prompt,
rendered with the built-in chat template; an answer is right when it equals the reference after stripping
whitespace. Memory: lmjax.aot's compile of the run's own train step for one device (state: parameters and
optimizer moments; total: with the batch and XLA's temporaries).
"""

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402

from lmjax.memory_check import check  # noqa: E402
from lmjax.data.chat import ChatTemplate  # noqa: E402
from lmjax.generate import generate_texts  # noqa: E402
from lmjax.models import lora  # noqa: E402
from lmjax.saved_run import open_run  # noqa: E402
from lmjax.writers import read_metrics  # noqa: E402


def answers(workdir: Path, examples: list[dict]) -> dict[str, float]:
  run = open_run(workdir)
  params, _ = run.load_params()
  template = ChatTemplate()
  prompts = [template.render(e["messages"][:-1], add_generation_prompt=True) for e in examples]
  settings = {"strategy": "greedy", "temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 40, "seed": 0}
  results = generate_texts(run.model(), params, run.tokenizer, prompts, settings, 1, 64)
  right = defaultdict(list)
  for example, result in zip(examples, results):
    ok = result[0]["text"].strip() == example["messages"][-1]["content"]
    right[example["task"]].append(ok)
    right["all"].append(ok)
  return {task: sum(v) / len(v) for task, v in right.items()}


def trainable(workdir: Path) -> tuple[int, int]:
  run = open_run(workdir)
  params, _ = run.load_params()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  total = sum(int(v.size) for _, v in leaves)
  adapters = sum(int(v.size) for p, v in leaves if lora.is_adapter(p))
  return total, adapters or total


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default="data/post_training")
  parser.add_argument("runs", nargs="+")
  args = parser.parse_args()
  examples = [json.loads(line) for line in (Path(args.data) / "sft_eval.jsonl").read_text().splitlines()]
  tasks = sorted({e["task"] for e in examples})
  sft_rows, dpo_rows = [], []
  for workdir in map(Path, args.runs):
    run = open_run(workdir)
    c = run.config
    evals = [r for r in read_metrics(workdir) if r["split"] == "eval"]
    total, trained = trainable(workdir)
    memory = check(c, run.tokenizer.vocab_size) if c.task in ("sft", "dpo") else None
    right = answers(workdir, examples)
    label = f"LoRA r={c.finetune.lora.rank}" if c.finetune.lora.rank else ("full" if c.task != "causal_lm" else "-")
    common = [workdir.name, c.task, label, f"{total:,}", f"{trained:,}",
              f"{memory['state_gib'] * 1024:.2f}" if memory else "-",
              f"{memory['total_gib'] * 1024:.1f}" if memory else "-"]
    if c.task == "dpo":
      first, last = evals[0], evals[-1]
      dpo_rows.append(common + [f"{last['reference_logp_accuracy']:.3f}", f"{last['logp_accuracy']:.3f}",
                                f"{last['reward_accuracy']:.3f}", f"{first['reward_margin']:.3f}",
                                f"{last['reward_margin']:.3f}", f"{right['all']:.3f}"])
    else:
      loss = f"{evals[-1]['loss']:.4f}" if c.task == "sft" else "-"
      sft_rows.append(common + [loss] + [f"{right[t]:.3f}" for t in tasks] + [f"{right['all']:.3f}"])
  head = "| run | task | training | params | trained | state MiB/device | total MiB/device |"
  print(head + " held-out loss | " + " | ".join(f"{t} EM" for t in tasks) + " | all EM |")
  print("|---" * (8 + len(tasks) + 1) + "|")
  for row in sft_rows:
    print("| " + " | ".join(row) + " |")
  if dpo_rows:
    print()
    print(head + " reference pref. acc. (before) | policy pref. acc. (after) | reward acc. | margin (first eval) | "
          "margin (last eval) | SFT answers EM |")
    print("|---" * 13 + "|")
    for row in dpo_rows:
      print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  main()
