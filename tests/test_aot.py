"""The ahead-of-time check compiles a pod-sized mesh on this machine and reports per-device memory."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_aot(*flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the tool sets its own device count
  return subprocess.run([sys.executable, "-m", "lmjax.aot", f"--config={REPO}/configs/tiny.py", *flags], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=180)


def table_row(stdout):
  rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| devices")]
  assert len(rows) == 1, stdout
  return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_compiles_for_more_devices_than_the_machine_has_and_shards_the_state():
  replicated = run_aot("--num_devices=16", "--config.train.batch_size=16")
  sharded = run_aot("--num_devices=16", "--config.mesh.data=2", "--config.mesh.fsdp=8",
                    "--config.train.batch_size=16", "--device_memory_gib=1")
  assert replicated.returncode == 0, replicated.stderr[-2000:]
  assert sharded.returncode == 0, sharded.stderr[-2000:]
  row_r, row_s = table_row(replicated.stdout), table_row(sharded.stdout)
  assert row_r[0] == row_s[0] == "16" and row_s[1] == "data=2 x fsdp=8 x sequence=1 x tensor=1"
  state_r, state_s = float(row_r[7]), float(row_s[7])
  # FSDP over 8 devices: each holds about an eighth of the parameters and Adam moments (norm scales of width 32
  # split evenly too; only a vocabulary that 8 does not divide stays whole).
  assert state_s < state_r / 4
  assert "fits: about" in sharded.stdout


def test_a_budget_the_step_exceeds_fails():
  result = run_aot("--num_devices=8", "--device_memory_gib=0.000001")
  assert result.returncode == 1 and "DOES NOT FIT" in result.stdout


def test_a_mesh_that_does_not_fit_is_one_line():
  result = run_aot("--num_devices=8", "--config.mesh.data=3")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.mesh (data=3")
