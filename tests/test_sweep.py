"""Sweeps: get_hyper expands to the points a person meant, every point is checked before any runs, finished points
are skipped on a rerun, and one failing point neither stops the others nor goes unreported."""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from configs import sweep_example
from lmjax import sweep
from lmjax.sweep import Hyper, HyperError

REPO = Path(__file__).resolve().parents[1]
h = Hyper()


def run_sweep(*flags, timeout=60):
  cmd = [sys.executable, "-m", "lmjax.sweep", *flags]
  # One CPU device: the 8 simulated ones (conftest) would only make each point compile for longer.
  env = {**os.environ, "XLA_FLAGS": ""}
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def write_config(tmp_path, hyper_body: str, name="swept.py") -> Path:
  path = tmp_path / name
  path.write_text("from configs.tiny import get_config\n\n\n"
                  f"def get_hyper(h):\n  return {hyper_body}\n")
  return path


def test_sweep_product_and_zip_expand_in_order():
  assert h.sweep("model.position", ["rope", "alibi"]) == [{"model.position": "rope"}, {"model.position": "alibi"}]
  grid = h.product([h.sweep("model.position", ["rope", "alibi"]), h.sweep("optim.learning_rate", [1e-3, 3e-3])])
  assert grid == [{"model.position": p, "optim.learning_rate": lr} for p in ("rope", "alibi") for lr in (1e-3, 3e-3)]
  paired = h.zip([h.sweep("optim.learning_rate", [1e-3, 3e-3]), h.sweep("optim.warmup_steps", [10, 20])])
  assert paired == [{"optim.learning_rate": 1e-3, "optim.warmup_steps": 10},
                    {"optim.learning_rate": 3e-3, "optim.warmup_steps": 20}]
  nested = h.product([h.sweep("seed", [0, 1]), paired])
  assert len(nested) == 4 and nested[1] == {"seed": 0, "optim.learning_rate": 3e-3, "optim.warmup_steps": 20}


def test_zip_of_unequal_lengths_names_both():
  with pytest.raises(HyperError, match=r"equal length.*2 \(optim.learning_rate\).*3 \(optim.warmup_steps\)"):
    h.zip([h.sweep("optim.learning_rate", [1e-3, 3e-3]), h.sweep("optim.warmup_steps", [10, 20, 30])])


@pytest.mark.parametrize("make, expected", [
    (lambda: h.sweep("model.position", "rope"), "non-empty list of values"),
    (lambda: h.sweep("model.position", []), "non-empty list of values"),
    (lambda: h.sweep("config.seed", [1]), "without 'config.'"),
    (lambda: h.product([h.sweep("seed", [1]), h.sweep("seed", [2])]), "share the field"),
    (lambda: h.product(h.sweep("seed", [1])), "list of sweeps"),
])
def test_bad_helper_use_is_explained(make, expected):
  with pytest.raises(HyperError, match=expected):
    make()


def test_unknown_helper_lists_the_real_ones():
  with pytest.raises(AttributeError, match=r"h.grid is not a sweep helper; use h.sweep"):
    h.grid("seed", [1, 2])


def test_names_are_readable_stable_and_unique():
  point = {"model.position": "rope", "optim.learning_rate": 0.001}
  assert sweep.point_name(point) == "position=rope,lr=0.001"
  assert sweep.point_name(dict(point)) == sweep.point_name(point)
  assert sweep.point_name({"train.sample_prompt": "a/b"}) != sweep.point_name({"train.sample_prompt": "a_b"})
  assert sweep.point_name({"train.sample_prompt": "a/b"}).startswith("sample_prompt=a_b-")
  assert sweep.point_name({"model.dropout": 0.1, "model.attention_dropout": 0.0, "train.plot": False}) == \
      "dropout=0.1,attention_dropout=0.0,plot=false"
  clash = sweep.point_name({"data.seed": 1, "mlm.seed": 2})  # two fields named 'seed' keep their full names
  assert clash == "data.seed=1,mlm.seed=2"
  grid = h.product([h.sweep("model.position", ["learned", "rope", "alibi"]), h.sweep("optim.learning_rate",
                                                                                    [1e-4, 3e-4, 1e-3])])
  names = [sweep.point_name(p) for p in grid]
  assert len(set(names)) == len(names) and "position=alibi,lr=0.0003" in names


def plan(points, **overrides):
  return sweep.plan("configs/sweep_example.py", sweep_example.get_config(), overrides, points, "/sw")


def test_plan_builds_each_points_command():
  [p] = plan([{"model.position": "rope", "optim.learning_rate": 1e-3}], **{"train.num_steps": 30})
  assert p.workdir == Path("/sw/position=rope,lr=0.001") and p.num_steps == 30
  assert p.command() == ["python", "-m", "lmjax.main", "--config=configs/sweep_example.py",
                         "--workdir=/sw/position=rope,lr=0.001", "--config.train.num_steps=30",
                         "--config.model.position=rope", "--config.optim.learning_rate=0.001"]


@pytest.mark.parametrize("point, expected", [
    ({"model.positon": "rope"}, "model.positon, which is not a config field (a typo?); config.model has: "),
    ({"modle.position": "rope"}, "config.modle is not a config section"),
    ({"model": "rope"}, "model, which is a section"),
    ({"model.num_layers": "two"}, "model.num_layers='two', but model.num_layers takes an integer (it is 2 here)"),
    ({"model.dropout": True}, "model.dropout=True, but model.dropout takes a number"),
    ({"model.position": "rotary"}, "config.model.position='rotary' is invalid: choose one of"),
    ({"model.num_heads": 3}, "point heads=3: config.model.d_model=64 is invalid"),
])
def test_plan_rejects_a_bad_point_naming_field_and_fix(point, expected):
  with pytest.raises(HyperError) as e:
    plan([{"model.position": "rope"}, point])
  assert expected in str(e.value) and "configs/sweep_example.py" in str(e.value)


def test_plan_rejects_duplicates_and_flags_that_fight_the_sweep():
  with pytest.raises(HyperError, match="twice"):
    plan([{"seed": 1}, {"seed": 1}])
  with pytest.raises(HyperError, match="--config.model.position is set by every point of get_hyper"):
    plan([{"model.position": "rope"}], **{"model.position": "alibi"})
  default, rope = plan([{"seed": 1}, {"seed": 2, "model.position": "rope"}], **{"model.position": "alibi"})
  assert "--config.model.position=alibi" in default.args
  assert "--config.model.position=alibi" not in rope.args and "--config.model.position=rope" in rope.args


def fake_finished(workdir: Path, num_steps: int) -> None:
  (workdir / "checkpoints" / str(num_steps)).mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"train": {"num_steps": num_steps}}))
  (workdir / "metrics.jsonl").write_text(json.dumps({"step": num_steps, "split": "eval", "loss": 1.0}) + "\n")


def test_finished_points_are_skipped_and_a_failure_does_not_stop_the_rest(tmp_path):
  points = sweep.plan("configs/sweep_example.py", sweep_example.get_config(), {},
                      h.sweep("model.position", ["learned", "rope", "alibi", "t5"]), tmp_path)
  fake_finished(points[0].workdir, points[0].num_steps)
  ran = []

  def run_one(point):
    ran.append(point.name)
    return 1 if point.name == "position=rope" else 0

  statuses = sweep.run_points(points, run_one, parallel=1, log=lambda line: None)
  assert ran == ["position=rope", "position=alibi", "position=t5"]
  assert sweep.exit_code(statuses) == 1
  outcomes = sweep.outcomes(points, statuses)
  assert outcomes["position=learned"] == "skipped (already finished)"
  assert outcomes["position=rope"].startswith("failed (exit status 1); see ")
  assert outcomes["position=alibi"] == outcomes["position=t5"] == "finished"


def test_a_finished_point_runs_on_when_num_steps_grows(tmp_path):
  [p] = plan([{"seed": 3}], **{"train.num_steps": 600})
  p = sweep.SweepPoint(p.name, p.overrides, tmp_path / p.name, p.args, p.num_steps)
  fake_finished(p.workdir, 400)
  assert sweep.run_points([p], lambda point: 0, log=lambda line: None) == {p.name: 0}


def test_parallel_points_run_at_the_same_time(tmp_path):
  points = sweep.plan("configs/sweep_example.py", sweep_example.get_config(), {}, h.sweep("seed", [1, 2, 3, 4]),
                      tmp_path)
  both_running = threading.Barrier(2, timeout=10)  # breaks (and fails the point) unless two run at once

  def run_one(point):
    both_running.wait()
    time.sleep(0.01)
    return 0

  statuses = sweep.run_points(points, run_one, parallel=2, log=lambda line: None)
  assert statuses == {p.name: 0 for p in points}
  assert sweep.outcomes(points, {**statuses, "seed=4": None})["seed=4"].startswith("not started")
  assert sweep.exit_code({**statuses, "seed=4": 75}) == 75


def test_dry_run_prints_one_quoted_command_per_point(tmp_path):
  config = write_config(tmp_path, "h.product([h.sweep('train.sample_prompt', ['once upon', \"it's\"]), "
                                  "h.sweep('optim.learning_rate', [1e-3, 3e-3])])")
  workdir = tmp_path / "my sweep"
  result = run_sweep(f"--config={config}", f"--workdir={workdir}", "--dry_run", "--config.train.num_steps=7")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 4
  args = shlex.split(lines[1])
  assert args == ["python", "-m", "lmjax.main", f"--config={config}",
                  f"--workdir={workdir}/sample_prompt=once_upon,lr=0.003-{args[4].rsplit('-', 1)[1]}",
                  "--config.train.num_steps=7", "--config.train.sample_prompt=once upon",
                  "--config.optim.learning_rate=0.003"]
  assert shlex.split(lines[2])[-2] == "--config.train.sample_prompt=it's"
  assert not workdir.exists()  # a dry run writes nothing


@pytest.mark.parametrize("hyper, expected", [
    ("h.sweep('model.num_layer', [1, 2])", "model.num_layer, which is not a config field"),
    ("h.zip([h.sweep('seed', [1, 2]), h.sweep('model.position', ['rope'])])", "h.zip needs sweeps of equal length"),
    ("h.grid('seed', [1])", "h.grid is not a sweep helper"),
    ("3", "get_hyper must return a non-empty list"),
])
def test_bad_sweep_is_one_line_and_exit_2_before_anything_runs(tmp_path, hyper, expected):
  config = write_config(tmp_path, hyper)
  result = run_sweep(f"--config={config}", f"--workdir={tmp_path / 'sw'}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("error: ") and expected in line and str(config) in line
  assert not (tmp_path / "sw").exists()


def test_config_without_get_hyper_is_one_line(tmp_path):
  result = run_sweep("--config=configs/tiny.py", f"--workdir={tmp_path / 'sw'}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: configs/tiny.py defines no get_hyper(h)")


def fake_python(tmp_path, body: str) -> str:
  """Stands in for the interpreter, so the subprocess runner is tested without training anything."""
  path = tmp_path / "python"
  path.write_text(f"#!/bin/sh\n{body}\n")
  path.chmod(0o755)
  return str(path)


def test_subprocess_runner_logs_output_and_returns_the_exit_status(tmp_path):
  [p] = sweep.plan("configs/sweep_example.py", sweep_example.get_config(), {}, [{"seed": 1}], tmp_path)
  runner = sweep.SubprocessRunner(fake_python(tmp_path, 'echo "ran with $*"; echo oops >&2; exit 3'))
  assert runner(p) == 3
  assert runner(p) == 3
  log = (p.workdir / "sweep.log").read_text()
  assert log.count("ran with -m lmjax.main --config=configs/sweep_example.py") == 2  # appended, not replaced
  assert "oops" in log and log.startswith("=== ")


@pytest.mark.parametrize("body", [
    "trap 'exit 75' TERM; sleep 30 & wait",  # lmjax.main in its training loop: saves, exits 75
    "exec sleep 30",  # still starting up: killed by the signal, with nothing to save
])
def test_stopping_passes_the_signal_on_and_starts_nothing_new(tmp_path, body):
  points = sweep.plan("configs/sweep_example.py", sweep_example.get_config(), {}, h.sweep("seed", [1, 2]), tmp_path)
  runner = sweep.SubprocessRunner(fake_python(tmp_path, body))
  statuses = {}
  thread = threading.Thread(target=lambda: statuses.update(sweep.run_points(points, runner, log=lambda line: None)))
  thread.start()
  deadline = time.monotonic() + 10
  while not runner._procs and time.monotonic() < deadline:  # wait until the first point is running
    time.sleep(0.01)
  time.sleep(0.2)  # and its shell has set the trap
  runner.stop(signal.SIGTERM)
  thread.join(10)
  assert statuses == {"seed=1": 75, "seed=2": None}
  assert sweep.exit_code(statuses) == 75


def test_sweep_end_to_end_runs_then_skips_finished_points(tmp_path):
  """Two real tiny runs in parallel through the CLI, then the same command again."""
  corpus = tmp_path / "fox.txt"
  corpus.write_text("".join(f"Document {i}: the quick brown fox jumps over the lazy dog.\n\n" for i in range(200)))
  config = write_config(tmp_path, "h.sweep('model.position', ['learned', 'rope'])")
  workdir = tmp_path / "sw"
  flags = [f"--config={config}", f"--workdir={workdir}", "--parallel=2", "--config.data.source=files",
           f"--config.data.paths={corpus}", "--config.train.num_steps=4", "--config.train.log_every=2",
           "--config.train.eval_every=4", "--config.train.checkpoint_every=4", "--config.train.eval_batches=1",
           "--config.train.num_samples=0", "--config.train.plot=false", "--config.train.tensorboard=false"]
  first = run_sweep(*flags, timeout=240)
  assert first.returncode == 0, first.stdout + first.stderr
  summary = [line.split(None, 1) for line in first.stdout.split("2 points\n", 1)[1].splitlines()]
  assert summary == [["position=learned", "finished"], ["position=rope", "finished"]]
  manifest = json.loads((workdir / "sweep.json").read_text())
  assert [[p["name"], p["outcome"]] for p in manifest["points"]] == summary and manifest["config"] == str(config)
  for name in ("position=learned", "position=rope"):
    records = [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "eval" and r["step"] == 4 for r in records)
    assert json.loads((workdir / name / "config.json").read_text())["model"]["position"] == name.split("=")[1]
    assert "Model gpt:" in (workdir / name / "sweep.log").read_text()

  again = run_sweep(*flags)
  assert again.returncode == 0
  assert "0 of 2 points to run (2 already finished)" in again.stdout
  summary = [line.split(None, 1) for line in again.stdout.split("2 points\n", 1)[1].splitlines()]
  assert summary == [["position=learned", "skipped (already finished)"],
                     ["position=rope", "skipped (already finished)"]]


SWEEP_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if "def get_hyper" in p.read_text())


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=lambda p: p.stem)
def test_every_sweep_config_plans_cleanly(path):
  """Each point of each get_hyper in configs/ is a valid config, so a sweep never fails halfway on a typo."""
  arg = str(path.relative_to(REPO))
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  points = sweep.plan(arg, module.get_config(), {}, sweep.load_points(arg), "/sw")
  assert len({p.workdir for p in points}) == len(points) > 1


# --- replicates and tuning ------------------------------------------------------------------------------------------

def test_seeds_count_up_from_the_config_and_vary_what_is_asked():
  base = sweep_example.get_config()
  base.seed, base.data.shuffle_seed = 7, 100
  seeded = Hyper(base)
  assert seeded.seeds(3) == [{"seed": 7 + i, "data.shuffle_seed": 100 + i} for i in range(3)]
  assert seeded.seeds(2, vary="init") == [{"seed": 7}, {"seed": 8}]
  assert seeded.seeds(2, vary="data") == [{"data.shuffle_seed": 100}, {"data.shuffle_seed": 101}]
  with pytest.raises(HyperError, match="positive number of seeds"):
    seeded.seeds(0)
  with pytest.raises(HyperError, match="vary is one of both, init, data"):
    seeded.seeds(2, vary="weights")


def test_replicates_share_a_group_directory_and_one_group_in_sweep_json(tmp_path):
  config = write_config(tmp_path, "h.product([h.sweep('model.position', ['rope', 'alibi']), h.seeds(3)])")
  points = sweep.plan(str(config), sweep_example.get_config(), {}, sweep.load_points(str(config)), tmp_path / "sw")
  assert [p.name for p in points[:3]] == [f"position=rope/seed={i},shuffle_seed={i}" for i in range(3)]
  assert {p.group for p in points} == {"position=rope", "position=alibi"}
  assert "--config.seed=2" in points[2].args and "--config.data.shuffle_seed=2" in points[2].args
  sweep.write_manifest(str(config), {}, points, tmp_path / "sw")
  manifest = json.loads((tmp_path / "sw" / "sweep.json").read_text())
  assert [(g["name"], len(g["points"]), g["overrides"]) for g in manifest["groups"]] == [
      ("position=rope", 3, {"model.position": "rope"}), ("position=alibi", 3, {"model.position": "alibi"})]


def test_the_seeds_flag_replicates_any_sweep_but_not_one_that_already_has_seeds(tmp_path):
  plain = write_config(tmp_path, "h.sweep('model.position', ['rope', 'alibi'])")
  points = sweep.load_points(str(plain), sweep_example.get_config(), seeds=2, vary="init")
  assert points == [{"model.position": p, "seed": s} for p in ("rope", "alibi") for s in (0, 1)]
  seeded = write_config(tmp_path, "h.product([h.sweep('model.position', ['rope']), h.seeds(2)])", "seeded.py")
  with pytest.raises(HyperError, match="already sets data.shuffle_seed, seed; drop --seeds"):
    sweep.load_points(str(seeded), seeds=3)


def test_tune_sweeps_the_optimizer_per_point_and_marks_it_for_the_report(tmp_path):
  hyper = Hyper()
  points = hyper.tune(hyper.sweep("model.name", ["gpt", "lstm"]), learning_rate=[1e-3, 2e-3], warmup_steps=[50])
  assert points == [{"model.name": m, "optim.learning_rate": lr, "optim.warmup_steps": 50}
                    for m in ("gpt", "lstm") for lr in (1e-3, 2e-3)]
  assert hyper.tuned == ["optim.learning_rate", "optim.warmup_steps"]
  with pytest.raises(HyperError, match="h.tune sweeps optim.learning_rate itself"):
    hyper.tune(hyper.sweep("optim.learning_rate", [1.0]), learning_rate=[1e-3])
  config = write_config(tmp_path, "h.tune(h.sweep('model.position', ['rope']), learning_rate=[1e-3, 3e-3])")
  assert sweep.load_sweep(str(config))[1] == ["optim.learning_rate"]


def test_selected_reads_back_what_the_report_chose(tmp_path):
  selection = {"metric": "eval/loss", "groups": [
      {"name": "name=gpt", "chosen": {"model.name": "gpt", "optim.learning_rate": 0.002}},
      {"name": "name=lstm", "chosen": {"model.name": "lstm", "optim.learning_rate": 0.004}}]}
  (tmp_path / "selection.json").write_text(json.dumps(selection))
  chosen = Hyper(workdir=tmp_path).selected()
  assert chosen == [g["chosen"] for g in selection["groups"]]
  assert Hyper().selected(tmp_path / "selection.json") == chosen
  with pytest.raises(HyperError, match="run the tuning sweep, then lmjax.report DIR --select"):
    Hyper().selected(tmp_path / "nothing_here")
