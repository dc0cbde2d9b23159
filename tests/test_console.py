"""The console: plain lines by default (as the README shows them), absl's full format with --verbose."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import single_device_env

from lmjax import console

REPO = Path(__file__).resolve().parents[1]
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ", re.MULTILINE)
FAST = ["--config=configs/tiny.py", "--config.train.num_steps=4", "--config.train.log_every=2",
        "--config.train.eval_every=4", "--config.train.checkpoint_every=4", "--config.train.eval_batches=1",
        "--config.train.num_samples=0"]


def train(workdir: Path, *flags: str) -> str:
  result = subprocess.run([sys.executable, "-m", "lmjax.main", f"--workdir={workdir}", *FAST, *flags], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env=single_device_env())
  assert result.returncode == 0, result.stdout[-4000:]
  return result.stdout


def test_training_prints_plain_lines_and_verbose_brings_absls_format_back(tmp_path):
  out = train(tmp_path / "run")
  lines = out.splitlines()
  assert [line.split("|")[0] for line in lines if line.startswith("step ")] == ["step      2/4 ", "step      4/4 "]
  assert any(line.startswith("eval step 4 | loss ") for line in lines), out
  assert any(line.startswith("Model gpt: ") for line in lines), out
  assert not ABSL_PREFIX.search(out), out
  # The embedded corpus was prepared in this workdir, without TFDS's "Downloading and preparing dataset" banner.
  assert (tmp_path / "run" / "data" / "local_text").is_dir()
  assert "Downloading" not in out and "Subsequent calls will reuse this data" not in out, out

  # Rerun on the finished run: it resumes, evaluates once and stops; every message carries absl's prefix.
  out = train(tmp_path / "run", "--verbose")
  assert re.search(r"^I\d{4} .* train\.py:\d+\] eval step 4 \| loss ", out, re.MULTILINE), out
  assert re.search(r"^I\d{4} .*\] Resumed from ", out, re.MULTILINE), out


def record(level: int, pathname: str, message: str) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, message, None, None)


LMJAX_FILE = str(REPO / "lmjax" / "train.py")
LIBRARY_FILE = "/site-packages/matplotlib/font_manager.py"


@pytest.mark.parametrize("level, expected", [
    (logging.INFO, "step 10/40 | loss 3.1"),
    (logging.WARNING, "warning: step 10/40 | loss 3.1"),
    (logging.ERROR, "error: step 10/40 | loss 3.1"),
    (logging.CRITICAL, "fatal: step 10/40 | loss 3.1"),
])
def test_plain_format_names_the_level_only_for_problems(level, expected):
  assert console.PlainFormatter().format(record(level, LMJAX_FILE, "step 10/40 | loss 3.1")) == expected


def test_plain_console_keeps_lmjax_info_and_other_libraries_problems_only():
  keep = console._PLAIN_FILTER.filter  # pylint: disable=protected-access
  assert keep(record(logging.INFO, LMJAX_FILE, "step 10/40"))
  assert not keep(record(logging.INFO, LIBRARY_FILE, "generated new fontManager"))
  assert keep(record(logging.WARNING, LIBRARY_FILE, "a real problem"))


def test_library_chatter_is_dropped_in_either_format():
  keep = console._LIBRARY_FILTER.filter  # pylint: disable=protected-access
  assert not keep(record(logging.INFO, "/site-packages/orbax/checkpoint/manager.py", "Saving item"))
  assert keep(record(logging.WARNING, "/site-packages/orbax/checkpoint/manager.py", "disk is slow"))
  assert not keep(record(logging.WARNING, "/site-packages/tensorflow_datasets/core/dataset_builder.py", "config"))
  assert keep(record(logging.INFO, LMJAX_FILE, "step 10/40"))
