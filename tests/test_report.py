"""Reports: every run under a directory becomes one row with the numbers its metrics.jsonl holds, the swept fields
are found from the config.json files, and the plots are written."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmjax import report
from lmjax.registry import TASKS

REPO = Path(__file__).resolve().parents[1]


def write_run(path: Path, config: dict, records: list[dict], checkpoint: int | None = None, log: str = "") -> Path:
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  (path / "metrics.jsonl").write_text("".join(json.dumps({"time": 0.0, **r}) + "\n" for r in records))
  if checkpoint is not None:
    (path / "checkpoints" / str(checkpoint)).mkdir(parents=True)
  if log:
    (path / "sweep.log").write_text(log)
  return path


def config(position: str, lr: float, num_steps: int = 100) -> dict:
  return {"model": {"position": position, "num_layers": 2}, "optim": {"learning_rate": lr},
          "train": {"num_steps": num_steps}}


def train(step, loss, tokens_per_s):
  return {"step": step, "split": "train", "loss": loss, "tokens_per_s": tokens_per_s}


def evaluation(step, loss, accuracy=None, split="eval"):
  out = {"step": step, "split": split, "loss": loss, "perplexity": 2.0 ** loss}
  return out if accuracy is None else {**out, "accuracy": accuracy}


@pytest.fixture
def runs(tmp_path):
  root = tmp_path / "sweep"
  # Final eval loss above the best one, so final and best must come from different records.
  write_run(root / "position=rope,lr=0.001", config("rope", 0.001),
            [train(50, 3.5, 1000.0), evaluation(50, 2.01234, 0.41), train(100, 2.5, 1234.5),
             evaluation(100, 2.23456, 0.40), evaluation(100, 2.75, split="eval_len512")],
            checkpoint=100, log="I1123 train.py:171] Model gpt: 12,345 parameters; vocab 65 (char tokenizer)\n")
  write_run(root / "position=learned,lr=0.03", config("learned", 0.03),
            [train(50, 3.0, 900.0), evaluation(50, 1.9), {**train(100, 2.0, 950.0), "num_params": 999},
             evaluation(100, 1.8)], checkpoint=100)
  write_run(root / "more" / "deep" / "stopped", config("alibi", 0.001),
            [train(50, 3.2, 1100.0), evaluation(50, 2.5, 0.3)], checkpoint=50)
  (root / "not_a_run").mkdir()
  (root / "not_a_run" / "notes.txt").write_text("no metrics here")
  return root


def section(markdown: str, title: str) -> str:
  """The table under '## title' in report.md."""
  body = markdown.split(f"## {title}\n", 1)[1]
  return "\n".join(line for line in body.strip().split("\n\n", 1)[0].splitlines() if line.startswith("|"))


def rows_of(markdown: str, title: str = "Runs") -> dict[str, dict[str, str]]:
  table = section(markdown, title) if f"## {title}\n" in markdown else markdown
  lines = [line.strip("|").split(" | ") for line in table.strip().splitlines()]
  header = [c.strip() for c in lines[0]]
  return {cells[0].strip(): dict(zip(header, (c.strip() for c in cells))) for cells in lines[2:]}


def test_table_holds_final_and_best_of_each_run(runs, tmp_path):
  text, written = report.report(runs, x="learning_rate", out=tmp_path / "out")
  assert (tmp_path / "out" / "report.md").read_text() == text
  assert [p.name for p in written] == ["report.md", "report.csv", "report.html", "loss_curves.png",
                                       "loss_vs_optim.learning_rate.png"]
  rows = rows_of(text)
  assert list(rows) == ["more/deep/stopped", "position=learned,lr=0.03", "position=rope,lr=0.001"]  # sorted
  rope = rows["position=rope,lr=0.001"]
  assert rope["model.position"] == "rope" and rope["optim.learning_rate"] == "0.001"
  assert rope["eval/loss"] == "2.2346" and rope["eval/best_loss"] == "2.0123"
  assert rope["eval/accuracy"] == "0.4000" and rope["eval_len512/loss"] == "2.7500"
  assert rope["steps"] == "100" and rope["tokens_per_s"] == "1,234" and rope["params"] == "12,345"
  learned = rows["position=learned,lr=0.03"]
  assert learned["eval/accuracy"] == "-" and learned["eval_len512/loss"] == "-" and learned["params"] == "999"
  assert learned["eval/loss"] == learned["eval/best_loss"] == "1.8000"
  stopped = rows["more/deep/stopped"]
  assert stopped["steps"] == "50/100 (unfinished)" and stopped["params"] == "-"
  assert "model.num_layers" not in rope  # the same in every run, so not a column


def test_csv_has_every_metric_at_full_precision(runs, tmp_path):
  report.report(runs, out=tmp_path)
  with (tmp_path / "report.csv").open() as f:
    rows = {row["run"]: row for row in csv.DictReader(f)}
  rope = rows["position=rope,lr=0.001"]
  assert float(rope["eval/loss"]) == 2.23456 and float(rope["eval/best_loss"]) == 2.01234
  assert float(rope["eval/accuracy"]) == 0.40 and float(rope["eval/best_accuracy"]) == 0.41  # higher is better
  assert float(rope["eval/best_perplexity"]) == 2.0 ** 2.01234
  assert float(rope["tokens_per_s"]) == 1234.5 and rope["finished"] == "True"
  assert rows["more/deep/stopped"]["finished"] == "False" and rows["more/deep/stopped"]["steps"] == "50"
  assert rows["position=learned,lr=0.03"]["eval/accuracy"] == ""  # missing: an empty cell


def test_differing_fields_follow_the_sweep_order(runs):
  loaded = report.load_runs(runs)
  assert report.differing_fields(loaded) == ["model.position", "optim.learning_rate"]
  assert report.differing_fields(loaded, ["optim.learning_rate"]) == ["optim.learning_rate", "model.position"]
  assert report.differing_fields(loaded[:1]) == []


def test_plots_are_written(runs, tmp_path):
  report.report(runs, x="learning_rate", out=tmp_path)
  for name in ("loss_curves.png", "loss_vs_optim.learning_rate.png"):
    data = (tmp_path / name).read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_one_swept_field_is_plotted_without_being_asked(tmp_path):
  for position, loss in (("rope", 1.5), ("alibi", 1.4), ("learned", 1.6)):
    write_run(tmp_path / position, config(position, 0.001, num_steps=10), [train(10, loss, 1.0), evaluation(10, loss)])
  report.report(tmp_path, metric="perplexity")
  assert (tmp_path / "perplexity_vs_model.position.png").stat().st_size > 5000
  assert "eval/best_perplexity" in (tmp_path / "report.md").read_text()


def test_log_scale_only_for_positive_ranges_over_a_decade():
  assert report.log_scale([1e-4, 3e-4, 1e-3, 3e-3])
  assert not report.log_scale([1e-3, 3e-3])
  assert not report.log_scale([0, 1, 100])
  assert not report.log_scale([1, 2, 4, 8])


def test_finished_needs_the_final_eval_and_its_checkpoint(tmp_path):
  records = [evaluation(100, 2.0)]
  assert report.is_finished(write_run(tmp_path / "a", config("rope", 0.1), records, checkpoint=100))
  assert not report.is_finished(write_run(tmp_path / "b", config("rope", 0.1), records, checkpoint=50))
  assert report.is_finished(write_run(tmp_path / "c", config("rope", 0.1), records))  # keeps no checkpoints
  assert not report.is_finished(tmp_path / "a", num_steps=200)
  ngram = {**config("none", 0.1), "model": {"name": "ngram"}}  # fitted in one pass: its record is step 1
  assert report.is_finished(write_run(tmp_path / "d", ngram, [evaluation(1, 2.0)]))


def run_report(*args):
  return subprocess.run([sys.executable, "-m", "lmjax.report", *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=60)


def test_cli_prints_the_table(runs):
  result = run_report(runs, "--x=position")
  assert result.returncode == 0, result.stderr
  assert result.stdout == (runs / "report.md").read_text()
  assert (runs / "loss_vs_model.position.png").exists()


@pytest.mark.parametrize("args, expected", [
    (["--metric=bleu"], "--metric=bleu is not in the eval records; choose one of accuracy, loss, perplexity"),
    (["--x=num_layerz"], "--x=num_layerz: no config field has that name"),
    (["--nosuchflag"], "bad flag"),
])
def test_cli_bad_input_is_one_line(runs, args, expected):
  result = run_report(runs, *args)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert expected in result.stderr.strip().splitlines()[-1]


def test_cli_without_runs_says_what_a_run_is(tmp_path):
  result = run_report(tmp_path)
  assert result.returncode == 2
  assert "no runs under" in result.stderr and "metrics.jsonl and config.json" in result.stderr


# --- replicates, comparisons, compute and tuning --------------------------------------------------------------------

ARCHS = {"gpt": (1.50, 4e9), "lstm": (1.45, 3e9)}  # final eval loss around which seeds scatter, FLOPs per step


def replicated_sweep(root: Path, test_favours: float | None = None) -> Path:
  """A tuned sweep as lmjax.sweep lays it out: two architectures x two learning rates x three seeds, plus an n-gram.
  Validation prefers lr=0.002; `test_favours` makes the test split prefer that learning rate instead."""
  points = []
  for arch, (level, flops) in ARCHS.items():
    for lr, penalty in ((0.002, 0.0), (0.004, 0.05)):
      group = f"name={arch},lr={lr}"
      for seed, noise in enumerate((0.01, -0.012, 0.004)):
        name = f"{group}/seed={seed},shuffle_seed={seed}"
        final = level + penalty + noise
        test_final = final - (0.3 if lr == test_favours else 0.0)
        records = [{**train(100, 3.0, 1000.0), "num_params": 1000, "flops_per_step": flops}]
        for step, extra in ((100, 0.4), (200, 0.0)):
          records += [train(step, final + extra, 1000.0), evaluation(step, final + extra),
                      evaluation(step, test_final + extra, split="test")]
        cfg = {"seed": seed, "data": {"shuffle_seed": seed}, "model": {"name": arch},
               "optim": {"learning_rate": lr}, "train": {"num_steps": 200}}
        write_run(root / name, cfg, records, checkpoint=200)
        points.append({"name": name, "group": group, "workdir": str(root / name),
                       "overrides": {"model.name": arch, "optim.learning_rate": lr, "seed": seed,
                                     "data.shuffle_seed": seed}})
  write_run(root / "name=ngram", {"model": {"name": "ngram"}, "train": {"num_steps": 200}},
            [evaluation(1, 1.60), evaluation(1, 1.62, split="test")])
  points.append({"name": "name=ngram", "group": "name=ngram", "workdir": str(root / "name=ngram"),
                 "overrides": {"model.name": "ngram"}})
  groups = {}
  for p in points:
    groups.setdefault(p["group"], {"name": p["group"], "points": [], "overrides": {
        k: v for k, v in p["overrides"].items() if k not in report.SEED_FIELDS}})["points"].append(p["name"])
  (root / "sweep.json").write_text(json.dumps({"config": "x.py", "overrides": {}, "tuned": ["optim.learning_rate"],
                                               "groups": list(groups.values()), "points": points}))
  return root


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  """One report of the tuned sweep with every table: selection on validation, a baseline, matched compute."""
  root = replicated_sweep(tmp_path_factory.mktemp("tuned") / "sw")
  text, written = report.report(root, select="eval/loss", baseline="name=gpt")
  return root, text, written


def table_rows(text: str, title_start: str) -> list[dict[str, str]]:
  title = next(line[3:] for line in text.splitlines() if line.startswith(f"## {title_start}"))
  lines = [line.strip("|").split(" | ") for line in section(text, title).splitlines()]
  header = [c.strip() for c in lines[0]]
  return [dict(zip(header, (c.strip() for c in cells))) for cells in lines[2:]]


def test_replicates_become_one_group_with_a_t_interval(tuned):
  root, text, written = tuned
  rows = {r["group"]: r for r in table_rows(text, "Groups:")}
  gpt = report.stats.summarize([1.50 + n for n in (0.01, -0.012, 0.004)])
  assert rows["name=gpt,lr=0.002"]["eval/loss"] == f"{gpt.mean:.4f} ± {gpt.half_width:.4f} [3]"
  assert rows["name=gpt,lr=0.002"]["n"] == "3" and rows["name=ngram"]["eval/loss"] == "1.6000 [1, deterministic]"
  with (root / "groups.csv").open() as f:
    summary = [r for r in csv.DictReader(f) if r["group"] == "name=gpt,lr=0.002" and r["split"] == "eval"
               and r["metric"] == "loss"][0]
  assert float(summary["ci95_low"]) == pytest.approx(gpt.low) and float(summary["std"]) == pytest.approx(gpt.std)
  assert {p.name for p in written} >= {"report.html", "groups.csv", "loss_curves.png", "loss_vs_flops.png",
                                       "loss_by_group.png", "selection.json"}


def test_the_baseline_comparison_is_paired_by_seed_and_says_when_it_is_noise(tuned, tmp_path):
  _, text, _ = tuned
  rows = {(r["group"], r["split"]): r for r in table_rows(text, "Against name=gpt,lr=0.002")}
  lstm = rows[("name=lstm,lr=0.002", "eval")]  # the same seeds' noise on both sides: pairing cancels it
  assert lstm["difference"] == "-0.0500" and lstm["verdict"] == "better" and "paired t over 3" in lstm["how"]
  ngram = rows[("name=ngram", "eval")]  # 1.60, a constant, against the GPT's 1.50 +- 0.03
  assert "deterministic" in ngram["how"] and ngram["verdict"] == "worse"
  noisy = tmp_path / "noisy"
  for seed, value in enumerate((1.40, 1.60, 1.50)):  # 1.5 +- 0.1 against 1.52 +- 0.01
    write_run(noisy / f"a/seed={seed}", {"seed": seed, "model": {"name": "gpt"}, "train": {"num_steps": 1}},
              [evaluation(1, value)])
    write_run(noisy / f"b/seed={seed}", {"seed": seed, "model": {"name": "lstm"}, "train": {"num_steps": 1}},
              [evaluation(1, 1.5 + (seed - 1) * 0.01 + 0.02)])
  groups = report.make_groups(report.load_runs(noisy), ["model.name", "seed"], {})
  text = report.comparison_table(groups, report.find_group("name=gpt", groups), "loss", ["eval"])
  assert text.rows[0][5] == "within noise" and "paired t over 3 shared seeds" == text.rows[0][6]


def test_selection_chooses_on_validation_and_never_reads_the_test_split(tuned, tmp_path):
  honest, text, _ = tuned
  misleading = replicated_sweep(tmp_path / "b", test_favours=0.004)  # test would pick the other learning rate
  groups = report.make_groups(report.load_runs(misleading), ["model.name", "optim.learning_rate", "seed",
                                                             "data.shuffle_seed"], report.read_manifest(misleading))
  for record in (json.loads((honest / "selection.json").read_text()),
                 report.choose_settings(groups, "eval/loss", ["optim.learning_rate"]).record):
    assert [g["chosen"] for g in record["groups"]] == [{"model.name": "gpt", "optim.learning_rate": 0.002},
                                                       {"model.name": "lstm", "optim.learning_rate": 0.002},
                                                       {"model.name": "ngram"}]
  shown = {r["group"] for r in table_rows(text, "Groups:")}
  assert shown == {"name=gpt,lr=0.002", "name=lstm,lr=0.002", "name=ngram"}  # only the chosen settings
  with pytest.raises(ValueError, match="the test split is never used for a choice"):
    report.choose_settings(groups, "test/loss", ["optim.learning_rate"])
  with pytest.raises(ValueError, match="needs the fields that were tuned"):
    report.choose_settings(groups, "eval/loss", [])


def test_seeds_added_to_the_chosen_setting_do_not_change_the_choice(tmp_path):
  """Tuned on seed 0, then the winner rerun under seeds 1 and 2 (as h.selected() x h.seeds(3) does): its mean over
  three seeds is worse than the runner-up's single run, but the choice is made on the seed both share."""
  root = tmp_path / "sw"
  for lr, finals in ((0.002, (1.50, 1.60, 1.62)), (0.004, (1.52,))):
    for seed, final in enumerate(finals):
      write_run(root / f"lr={lr}/seed={seed}", {"seed": seed, "model": {"name": "gpt"},
                                               "optim": {"learning_rate": lr}, "train": {"num_steps": 1}},
                [evaluation(1, final)])
  groups = report.make_groups(report.load_runs(root), ["optim.learning_rate", "seed"], {})
  record = report.choose_settings(groups, "eval/loss", ["optim.learning_rate"]).record
  assert record["groups"][0]["chosen"] == {"optim.learning_rate": 0.002}
  assert [(c["n"], c["mean"]) for c in record["groups"][0]["candidates"]] == [(1, 1.50), (1, 1.52)]


def test_matched_compute_reads_each_curve_where_all_have_spent_the_same_flops(tuned, tmp_path):
  run = report.Run("r", tmp_path, {}, [{"step": 10, "split": "train", "loss": 3.0, "flops_per_step": 2.0},
                                       evaluation(100, 2.0), evaluation(400, 1.0)], True, 400)
  assert report.value_at_flops(run, "eval", "loss", 200.0) == 2.0
  assert report.value_at_flops(run, "eval", "loss", 400.0) == pytest.approx(1.5)  # halfway in log FLOPs
  assert report.value_at_flops(run, "eval", "loss", 100.0) is None  # before the first eval
  _, text, _ = tuned
  rows = {r["group"]: r for r in table_rows(text, "At matched compute: loss after 6e+11 training FLOPs")}
  assert rows["name=lstm,lr=0.002"]["step at the budget"] == "200"  # the LSTM's final count, the smaller one
  assert rows["name=gpt,lr=0.002"]["step at the budget"] == "150"
  assert rows["name=ngram"]["FLOPs per step"] == "-"


def test_html_report_is_one_self_contained_page(tuned):
  root, _, _ = tuned
  page = (root / "report.html").read_text()
  assert page.count("data:image/png;base64,") >= 3 and "<table>" in page
  assert "http://" not in page and "https://" not in page and 'src="' not in page.replace('src="data:', "")
  assert "Against name=gpt,lr=0.002" in page and "<strong>chosen</strong>" in page


def test_every_axis_and_column_says_what_it_is(tmp_path, monkeypatch):
  write_run(tmp_path / "cls", {"task": "classification", "train": {"num_steps": 10}},
            [train(10, 0.7, 10.0), evaluation(10, 0.6, 0.8)])
  labels = []
  monkeypatch.setattr("matplotlib.axes.Axes.set_ylabel", lambda self, text, *a, **k: labels.append(text))
  text, _ = report.report(tmp_path)
  meanings = {r["column"]: r["meaning"] for r in table_rows(text, "What the columns mean")}
  assert meanings["loss (task=classification)"].startswith("nats per example")
  assert "higher is better" in meanings["accuracy"] and "lower is better" in meanings["loss"]
  assert "loss (nats per example; squared error per example for a regression)" in labels
  from lmjax import writers
  writers.plot_loss_curves(tmp_path / "cls", loss_unit=TASKS.get("qa").loss_unit)
  assert labels[-1] == "loss (nats per window, mean of the start and end cross-entropies)"
