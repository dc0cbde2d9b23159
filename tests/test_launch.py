"""Launch scripts: what their dry runs print, that lmjax flags survive every layer of quoting, and that the
commands really behave when run, with stand-ins for gcloud, srun, scontrol and python (nothing leaves this machine).
"""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
TPU_POD = LAUNCH / "tpu_pod.sh"
SLURM = LAUNCH / "slurm_gpu.sbatch"
LOCAL_MP = LAUNCH / "local_multiprocess.sh"

# Flags a user might really pass, and that break naive quoting: spaces, both quote characters, $, a backslash, a glob.
TRICKY_ARGS = [
    "--config=configs/tiny.py",
    "--workdir=/tmp/runs/a b",
    "--config.data.paths=corpus dir/*.txt",
    "--config.train.sample_prompt=It's \"here\": $HOME \\n `date`",
    "--config.seed=3",
]

# Variables the scripts read as defaults; a developer's own settings must not leak into what the tests expect.
SCRIPT_VARIABLES = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "TPU_VERSION", "DRY_RUN", "PYTHON",
                    "COORDINATOR_PORT", "XLA_FLAGS", "JAX_PLATFORMS", "JAX_LOCAL_DEVICE_IDS", "CUDA_VISIBLE_DEVICES")


def clean_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in SCRIPT_VARIABLES}
  env.update(extra)
  return env


def run(script, *args, env=None, cwd=None, timeout=60):
  return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env or clean_env(),
                        cwd=cwd, timeout=timeout)


def dry_run_lines(script, *args, env=None) -> list[list[str]]:
  result = run(script, *args, env=env)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def one_line_error(result) -> str:
  assert result.returncode == 2, (result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def write_executable(path: Path, text: str) -> Path:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def fake_python(tmp_path: Path) -> Path:
  """Stands in for `python -m lmjax.main`: records its arguments, then exits as the STUB_* variables say."""
  return write_executable(tmp_path / "fake_python", f"""#!{sys.executable}
import json, os, signal, sys, time

def on_term(signum, frame):
  print("stub got SIGTERM", flush=True)
  sys.exit(75)

signal.signal(signal.SIGTERM, on_term)  # before the arguments are recorded, which tests take as "ready"
args = sys.argv[1:]
pid = next((a.split("=", 1)[1] for a in args if a.startswith("--process_id=")), "0")
out = os.environ["STUB_OUT"]
with open(os.path.join(out, f"args_{{pid}}.tmp"), "w") as f:
  json.dump(args, f)
os.replace(os.path.join(out, f"args_{{pid}}.tmp"), os.path.join(out, f"args_{{pid}}.json"))
print(f"stub process {{pid}}", flush=True)
codes = json.loads(os.environ.get("STUB_EXIT", "{{}}"))
if pid in codes:
  # Fail only once every process is ready, as a real crash mid-run would.
  ready = int(os.environ.get("STUB_WAIT_FOR", "0"))
  deadline = time.monotonic() + 30
  while len([n for n in os.listdir(out) if n.endswith(".json")]) < ready and time.monotonic() < deadline:
    time.sleep(0.05)
  sys.exit(codes[pid])
time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
""")


def recorded_args(out: Path, process_id: int = 0) -> list[str]:
  return json.loads((out / f"args_{process_id}.json").read_text())


def lmjax_args_of(tokens: list[str]) -> list[str]:
  """The arguments after `-m lmjax.main` in a tokenized command line, up to a shell operator."""
  start = tokens.index("lmjax.main") + 1
  end = next((i for i in range(start, len(tokens)) if tokens[i] in ("2>&1", ">>", "|", "&&")), len(tokens))
  return tokens[start:end]


# --- every script ---------------------------------------------------------------------------------------------


def test_the_expected_scripts_exist():
  assert {p.name for p in SCRIPTS} >= {"local_retry.sh", "tpu_pod.sh", "slurm_gpu.sbatch", "local_multiprocess.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert script.read_text().startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck is not installed")
  result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [TPU_POD, SLURM, LOCAL_MP], ids=lambda p: p.name)
def test_help(script):
  result = run(script, "--help")
  assert result.returncode == 0 and "--dry-run" in result.stdout


# --- Cloud TPU pod ----------------------------------------------------------------------------------------------

POD = ["--name", "lm-pod", "--zone", "us-central2-b"]


def test_tpu_create():
  [cmd] = dry_run_lines(TPU_POD, "create", *POD, "--accelerator", "v4-32", "--spot", "--project", "p1", "--dry-run")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "lm-pod"]
  assert {"--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot",
          "--project=p1"} <= set(cmd)


def test_tpu_options_from_the_environment():
  env = clean_env(TPU_NAME="from-env", ZONE="europe-west4-a", ACCELERATOR_TYPE="v5litepod-16",
                  TPU_VERSION="v2-alpha-tpuv5-lite")
  [cmd] = dry_run_lines(TPU_POD, "create", "--preemptible", "--dry-run", env=env)
  assert cmd[5] == "from-env"
  assert {"--zone=europe-west4-a", "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite",
          "--preemptible"} <= set(cmd)


def test_tpu_setup_copies_a_git_archive_to_every_worker_and_installs_the_tpu_extra():
  archive, scp, ssh = dry_run_lines(TPU_POD, "setup", *POD, "--dry-run")
  assert archive[0] == "git" and "archive" in archive and archive[-1] == "HEAD"
  tarball = archive[archive.index("-o") + 1]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert tarball in scp and "lm-pod:lmjax.tar.gz" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm-pod"] and "--worker=all" in ssh
  remote = shlex.split(next(a for a in ssh if a.startswith("--command=")).removeprefix("--command="))
  assert remote[remote.index("install"):][:3] == ["install", "-e", ".[tpu]"]


def test_tpu_setup_from_a_clone():
  [ssh] = dry_run_lines(TPU_POD, "setup", *POD, "--repo", "https://example.com/me/lmjax.git", "--ref", "v1.0",
                        "--dry-run")
  assert ssh[4] == "ssh" and "--worker=all" in ssh
  remote = next(a for a in ssh if a.startswith("--command=")).removeprefix("--command=")
  assert "git clone https://example.com/me/lmjax.git lmjax" in remote and "fetch origin v1.0" in remote


def test_tpu_run_keeps_lmjax_flags_intact_on_every_worker():
  [ssh] = dry_run_lines(TPU_POD, "run", *POD, "--dry-run", "--", *TRICKY_ARGS)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm-pod"] and "--worker=all" in ssh
  remote = shlex.split(next(a for a in ssh if a.startswith("--command=")).removeprefix("--command="))
  assert remote[:2] == ["cd", "lmjax"]
  assert lmjax_args_of(remote) == TRICKY_ARGS
  assert "tee" in remote  # every worker keeps a log


def test_tpu_run_with_retries_wraps_local_retry():
  [ssh] = dry_run_lines(TPU_POD, "run", *POD, "--retries", "4", "--detach", "--dry-run", "--", *TRICKY_ARGS)
  remote = shlex.split(next(a for a in ssh if a.startswith("--command=")).removeprefix("--command="))
  i = remote.index("launch/local_retry.sh")
  assert remote[i + 1:i + 8] == ["--retries", "4", "configs/tiny.py", "/tmp/runs/a b", *TRICKY_ARGS[2:]]
  assert "nohup" in remote and remote[-1] == "&"


@pytest.mark.parametrize("order", ["options_first", "subcommand_between"])
def test_tpu_options_may_come_before_the_subcommand(order):
  after = dry_run_lines(TPU_POD, "run", *POD, "--dry-run", "--", *TRICKY_ARGS)
  args = (["--dry-run", *POD, "run"] if order == "options_first" else ["--dry-run", "run", *POD])
  assert dry_run_lines(TPU_POD, *args, "--", *TRICKY_ARGS) == after


def test_tpu_logs_and_delete():
  mkdir, scp = dry_run_lines(TPU_POD, "logs", *POD, "--log_dir", "my logs", "--dry-run")
  assert mkdir == ["mkdir", "-p", "my logs"]
  assert scp[4:7] == ["scp", "lm-pod:lmjax/logs/lmjax-*.log", "my logs"] and "--worker=all" in scp
  [delete] = dry_run_lines(TPU_POD, "delete", *POD, "--yes", "--dry-run")
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "lm-pod"] and "--quiet" in delete


@pytest.mark.parametrize("args, expected", [
    (["create", "--zone", "z", "--accelerator", "v4-8"], "--name"),
    (["run", "--name", "n", "--", "--config=c"], "--zone"),
    (["create", "--name", "n", "--zone", "z"], "--accelerator"),
    (["run", "--name", "n", "--zone", "z"], "after --"),
    (["run", "--name", "n", "--zone", "z", "--retries", "2", "--", "--config.seed=1"], "--workdir"),
    (["launch", "--name", "n", "--zone", "z"], "unknown subcommand 'launch'"),
    ([], "no subcommand"),
    (["run", "--name", "n", "--zone", "z", "--config=c"], "unknown option '--config'"),
    (["create", "--name"], "--name needs a value"),
    (["run", "logs", "--name", "n", "--zone", "z"], "two subcommands, 'run' and 'logs'"),
    (["--name", "n", "--zone", "z"], "no subcommand"),
])
def test_tpu_bad_input_is_one_line(args, expected):
  assert expected in one_line_error(run(TPU_POD, *args, *(["--dry-run"] if args else [])))


@pytest.fixture
def fake_pod(tmp_path):
  """A stand-in gcloud whose workers are one directory here: ssh runs --command with bash in it, scp copies."""
  home = tmp_path / "worker_home"
  home.mkdir()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "gcloud", """#!/usr/bin/env bash
set -euo pipefail
printf '%s\\n' "$*" >> "$FAKE_GCLOUD_LOG"
sub="$4"; shift 4
positional=(); command=""
for a in "$@"; do
  case "$a" in --command=*) command="${a#--command=}" ;; --*) ;; *) positional+=("$a") ;; esac
done
case "$sub" in
  ssh) cd "$FAKE_HOME"; exec bash -c "$command" ;;
  scp) if [[ "${positional[0]}" == *:* ]]; then for f in "$FAKE_HOME"/${positional[0]#*:}; do cp "$f" "${positional[1]}"; done
       else cp "${positional[0]}" "$FAKE_HOME/${positional[1]#*:}"; fi ;;
esac
""")
  out = tmp_path / "out"
  out.mkdir()
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home), FAKE_GCLOUD_LOG=str(tmp_path / "log"),
                  STUB_OUT=str(out))
  return home, out, env


def test_tpu_setup_run_and_logs_work_through_a_shell(tmp_path, fake_pod):
  home, out, env = fake_pod
  python = str(fake_python(tmp_path))
  result = run(TPU_POD, "setup", *POD, "--python", python, env=env)
  assert result.returncode == 0, result.stderr
  assert (home / "lmjax" / "pyproject.toml").exists() and (home / "lmjax" / "launch" / "local_retry.sh").exists()
  assert recorded_args(out) == ["-m", "pip", "install", "-e", ".[tpu]"]

  result = run(TPU_POD, "run", *POD, "--python", python, "--", *TRICKY_ARGS, env={**env, "STUB_EXIT": '{"0": 75}'})
  assert result.returncode == 75, result.stderr  # the worker's status, not tee's
  assert recorded_args(out) == ["-m", "lmjax.main", *TRICKY_ARGS]
  [log] = (home / "lmjax" / "logs").glob("lmjax-*.log")
  assert "stub process 0" in log.read_text()

  result = run(TPU_POD, "logs", *POD, "--log_dir", str(tmp_path / "fetched"), env=env)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "fetched" / log.name).read_text() == log.read_text()


def test_tpu_run_with_retries_works_through_a_shell(tmp_path, fake_pod):
  home, out, env = fake_pod
  shutil.copytree(LAUNCH, home / "lmjax" / "launch")
  python = str(fake_python(tmp_path))
  workdir = tmp_path / "run dir"
  args = ["--config=configs/tiny.py", f"--workdir={workdir}", *TRICKY_ARGS[2:]]
  result = run(TPU_POD, "run", *POD, "--python", python, "--retries", "1", "--", *args, env=env)
  assert result.returncode == 0, result.stderr
  assert recorded_args(out) == ["-m", "lmjax.main", *args]
  assert (workdir / "train.log").exists()


# --- SLURM ------------------------------------------------------------------------------------------------------


def test_slurm_dry_run_outside_slurm():
  [cmd] = dry_run_lines(SLURM, "--dry-run", *TRICKY_ARGS)
  assert cmd[0] == "srun" and "--kill-on-bad-exit=1" in cmd
  script = cmd[cmd.index("-c") + 1]
  assert '--process_id="$SLURM_PROCID"' in script  # read by each task's shell, not by the batch script
  assert lmjax_args_of(cmd)[:len(TRICKY_ARGS)] == TRICKY_ARGS
  assert cmd[-2:] == ["--coordinator_address=localhost:20000", "--num_processes=1"]


def test_slurm_dry_run_in_a_job(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "scontrol", "#!/usr/bin/env bash\n[[ \"$1 $2\" == 'show hostnames' ]] && "
                   "printf 'gpu-node-017\\ngpu-node-018\\ngpu-node-019\\n'\n")
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", DRY_RUN="1", SLURM_JOB_ID="4242",
                  SLURM_JOB_NODELIST="gpu-node-[017-019]", SLURM_NTASKS="3", SLURM_GPUS_ON_NODE="4",
                  SLURM_CPUS_PER_TASK="16")
  [cmd] = dry_run_lines(SLURM, *TRICKY_ARGS, env=env)
  assert cmd[-2:] == ["--coordinator_address=gpu-node-017:24242", "--num_processes=3"]
  assert cmd[cmd.index("env") + 1] == "JAX_LOCAL_DEVICE_IDS=0,1,2,3"  # all four GPUs, not only SLURM_LOCALID's
  assert lmjax_args_of(cmd)[:len(TRICKY_ARGS)] == TRICKY_ARGS


def test_slurm_each_task_gets_its_own_process_id(tmp_path):
  """A stand-in srun runs the command once per task, as srun does, with that task's SLURM_PROCID."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "srun", """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
status=0
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" || status=$?; done
exit "$status"
""")
  write_executable(bin_dir / "scontrol", """#!/usr/bin/env bash
if [[ "$1" == show ]]; then printf 'n1\\nn2\\n'; else echo "$*" > "$STUB_OUT/scontrol"; fi
""")
  out = tmp_path / "out"
  out.mkdir()
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(fake_python(tmp_path)), STUB_OUT=str(out),
                  SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n[1-2]", SLURM_NTASKS="2", STUB_EXIT='{"1": 75}')
  result = run(SLURM, *TRICKY_ARGS, env=env)
  assert result.returncode == 75, result.stderr
  for i in range(2):
    assert recorded_args(out, i) == ["-m", "lmjax.main", *TRICKY_ARGS, "--coordinator_address=n1:20007",
                                     "--num_processes=2", f"--process_id={i}"]
  assert (out / "scontrol").read_text().split() == ["requeue", "7"]  # preempted: back in the queue to resume


@pytest.mark.parametrize("status, requeued", [(75, True), (143, True), (2, False), (4, False)])
def test_slurm_requeues_only_a_stopped_job(tmp_path, status, requeued):
  """75: lmjax stopped on SIGTERM (in the training loop or while starting); 143: SIGTERM came before Python could
  answer it. Bad input or a workdir in use would only fail again."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "srun", "#!/usr/bin/env bash\nexit \"$STUB_STATUS\"\n")
  write_executable(bin_dir / "scontrol", "#!/usr/bin/env bash\necho \"$*\" > \"$STUB_OUT/scontrol\"\n")
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_OUT=str(tmp_path), STUB_STATUS=str(status),
                  SLURM_JOB_ID="9")
  result = run(SLURM, *TRICKY_ARGS, env=env)
  assert result.returncode == status
  assert (tmp_path / "scontrol").exists() == requeued
  if requeued:
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "9"]


@pytest.mark.parametrize("status", [3, 4, 5, 6, 7])
def test_local_retry_does_not_retry_what_needs_a_person(tmp_path, status):
  out = tmp_path / "out"
  out.mkdir()
  env = clean_env(PYTHON=str(fake_python(tmp_path)), STUB_OUT=str(out), STUB_EXIT=json.dumps({"0": status}),
                  RETRY_DELAY="0")
  result = run(LAUNCH / "local_retry.sh", "--retries", "3", "configs/tiny.py", str(tmp_path / "run"), env=env,
               cwd=REPO)
  assert result.returncode == status
  assert "not retrying" in result.stderr and "restarting" not in result.stderr


@pytest.mark.parametrize("status", [1, 75, 137])
def test_local_retry_retries_crashes_and_preemptions(tmp_path, status):
  out = tmp_path / "out"
  out.mkdir()
  env = clean_env(PYTHON=str(fake_python(tmp_path)), STUB_OUT=str(out), STUB_EXIT=json.dumps({"0": status}),
                  RETRY_DELAY="0")
  result = run(LAUNCH / "local_retry.sh", "--retries", "2", "configs/tiny.py", str(tmp_path / "run"), env=env,
               cwd=REPO)
  assert result.returncode == status
  assert result.stderr.count("restarting") == 2 and "giving up after 2 restarts" in result.stderr
  assert (tmp_path / "run" / "train.log").read_text().count("stub process 0") == 3


def test_slurm_without_lmjax_flags_is_one_line():
  assert "--config" in one_line_error(run(SLURM, "--dry-run"))


# --- local multi-process ----------------------------------------------------------------------------------------


def test_local_multiprocess_dry_run():
  env = clean_env(PYTHON=sys.executable)
  cmds = dry_run_lines(LOCAL_MP, "--num_processes", "3", "--devices_per_process", "2", "--dry-run", "--",
                       *TRICKY_ARGS, env=env)
  assert len(cmds) == 3
  ports = set()
  for i, cmd in enumerate(cmds):
    assert cmd[:3] == ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2"]
    assert cmd[3] == sys.executable and lmjax_args_of(cmd)[:len(TRICKY_ARGS)] == TRICKY_ARGS
    address, num, pid = cmd[-3:]
    assert address.startswith("--coordinator_address=localhost:") and num == "--num_processes=3"
    assert pid == f"--process_id={i}"
    ports.add(int(address.rsplit(":", 1)[1]))
  assert len(ports) == 1  # one coordinator for all


def test_local_multiprocess_default_is_two_processes_without_platform_settings():
  cmds = dry_run_lines(LOCAL_MP, "--port", "12355", "--dry-run", "--config=c", env=clean_env())
  assert [c[-1] for c in cmds] == ["--process_id=0", "--process_id=1"]
  assert cmds[0][:4] == ["env", "python", "-m", "lmjax.main"]
  assert cmds[0][-3] == "--coordinator_address=localhost:12355"


@pytest.mark.parametrize("args, expected", [
    (["--num_processes", "two", "--config=c"], "--num_processes"),
    (["--num_processes", "0", "--config=c"], "--num_processes"),
    (["--port", "--config=c"], "--port needs a value"),
    (["--cpu"], "no lmjax flags"),
])
def test_local_multiprocess_bad_input_is_one_line(args, expected):
  assert expected in one_line_error(run(LOCAL_MP, *args, "--dry-run"))


def local_mp_env(tmp_path, **stub):
  out = tmp_path / "out"
  out.mkdir(exist_ok=True)
  return clean_env(PYTHON=str(fake_python(tmp_path)), STUB_OUT=str(out), **stub), out


def test_local_multiprocess_runs_all_and_keeps_their_logs(tmp_path):
  env, out = local_mp_env(tmp_path)
  logs = tmp_path / "logs"
  result = run(LOCAL_MP, "--num_processes", "3", "--port", "12355", "--log_dir", str(logs), "--", *TRICKY_ARGS,
               env=env)
  assert result.returncode == 0, result.stderr
  for i in range(3):
    assert recorded_args(out, i)[-1] == f"--process_id={i}"
    assert (logs / f"process_{i}.log").read_text().strip() == f"stub process {i}"


def test_local_multiprocess_stops_the_rest_when_one_fails(tmp_path):
  env, _ = local_mp_env(tmp_path, STUB_EXIT='{"1": 75}', STUB_WAIT_FOR="3", STUB_SLEEP="60")
  logs = tmp_path / "logs"
  start = time.monotonic()
  result = run(LOCAL_MP, "--num_processes", "3", "--port", "12355", "--log_dir", str(logs), "--config=c", env=env)
  assert result.returncode == 75, result.stderr  # the failing process's status, so a retry wrapper reruns
  assert time.monotonic() - start < 30
  assert "process 1 exited with status 75" in result.stderr
  for i in (0, 2):
    assert "stub got SIGTERM" in (logs / f"process_{i}.log").read_text()


def test_local_multiprocess_passes_sigterm_on(tmp_path):
  env, out = local_mp_env(tmp_path, STUB_SLEEP="60")
  logs = tmp_path / "logs"
  proc = subprocess.Popen(["bash", str(LOCAL_MP), "--port", "12355", "--log_dir", str(logs), "--config=c"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 20
  while not all((out / f"args_{i}.json").exists() for i in range(2)) and time.monotonic() < deadline:
    time.sleep(0.1)
  proc.terminate()
  _, stderr = proc.communicate(timeout=30)
  assert proc.returncode == 75, stderr
  for i in range(2):
    assert "stub got SIGTERM" in (logs / f"process_{i}.log").read_text()
