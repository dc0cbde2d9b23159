"""The entry point turns bad input into one line naming the field or file, before anything is compiled."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import single_device_env

REPO = Path(__file__).resolve().parents[1]


def run_main(tmp_path, *flags):
  cmd = [sys.executable, "-m", "lmjax.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", *flags]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=single_device_env())


def last_line_error(result) -> str:
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, expected", [
    (["--config.model.num_heads=3"], "config.model.d_model=32"),
    (["--config.tokenizer.kind=words"], "config.tokenizer.kind='words'"),
    (["--config.model.num_layer=3"], "num_layer"),
    (["--config.data.source=files", "--config.data.paths=/no/such/dir/*.txt"], "data.paths"),
])
def test_bad_input_is_one_line(tmp_path, flags, expected):
  line = last_line_error(run_main(tmp_path, *flags))
  assert line.startswith("error:") and expected in line
  assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training state existed


def test_empty_corpus_file_is_one_line(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  line = last_line_error(run_main(tmp_path, "--config.data.source=files", f"--config.data.paths={empty}"))
  assert "empty.txt" in line and "empty" in line


def test_missing_config_file_is_one_line(tmp_path):
  cmd = [sys.executable, "-m", "lmjax.main", "--config=configs/no_such.py", f"--workdir={tmp_path}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
  assert "configs/no_such.py" in last_line_error(result)


def test_retry_launcher_dry_run_prints_the_quoted_command():
  script = REPO / "launch" / "local_retry.sh"
  result = subprocess.run(["bash", str(script), "--dry-run", "configs/tiny.py", "runs/a b", "--config.seed=3"],
                          capture_output=True, text=True, check=True)
  assert result.stdout.strip() == r"python -m lmjax.main --config=configs/tiny.py --workdir=runs/a\ b --config.seed=3"


def test_retry_launcher_does_not_retry_bad_input(tmp_path):
  script = REPO / "launch" / "local_retry.sh"
  env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
  result = subprocess.run(["bash", str(script), "--retries", "3", "configs/tiny.py", str(tmp_path / "w"),
                           "--config.model.num_heads=3"], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=120)
  assert result.returncode == 2
  assert "not retrying" in result.stderr and "restarting" not in result.stderr
