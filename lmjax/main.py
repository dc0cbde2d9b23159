r"""Train and evaluate a model.

  python -m lmjax.main --config=configs/default.py --workdir=runs/default
  python -m lmjax.main --config=configs/nanogpt_cpu.py --workdir=runs/x --config.model.num_layers=6

Rerunning the same command in the same workdir resumes from the latest checkpoint. Every way a run can end has its
own exit status and, unless it is an internal error, one line on stderr (the table is in lmjax/cli.py and in the
README's "What happens when").
"""

# A stop signal during the imports below must already end in one line and status 75, so this comes first.
from lmjax import preemption  # pylint: disable=g-bad-import-order

preemption.stop_outside_the_loop()

# pylint: disable=wrong-import-position
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from lmjax import cli, console
from lmjax.cli import describe_command, parse_flags
from lmjax.exit_status import describe_failure

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for multi-process runs outside Cloud TPU and SLURM "
    "(there it is found automatically).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])


def _claim_workdir(workdir: str, process_index: int, process_count: int, lock, fresh) -> None:
  """Process 0 creates the workdir, takes its lock and arms the fresh-start cleanup; the others then check that
  they see and can write the same directory. Every process ends with the same outcome, or the same exception."""
  from lmjax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from lmjax.workdir_lock import LOCK_FILE, WorkdirLocked, holder  # pylint: disable=import-outside-toplevel
  outcome, error = 0, None
  if process_index == 0:
    try:
      workdir_lib.prepare_workdir(workdir)
      existed = (workdir_lib.Path(workdir) / LOCK_FILE).exists()
      lock.acquire()
      fresh.arm(own=() if existed else (LOCK_FILE,))
    except WorkdirLocked as e:
      outcome, error = 1, e
    except Exception as e:  # pylint: disable=broad-except
      outcome, error = 2, e
  if process_count > 1:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    outcome = int(multihost_utils.broadcast_one_to_all(np.int32(outcome)))
    if process_index != 0 and outcome == 1:
      error = WorkdirLocked(f"--workdir={workdir} is in use by another run: "
                            f"{holder(workdir_lib.Path(workdir) / LOCK_FILE)}; wait for it to finish or stop it, or "
                            f"give another --workdir")
    elif process_index != 0 and outcome == 2:
      error = workdir_lib.WorkdirError(f"--workdir={workdir} could not be prepared by process 0 (see its error)")
    elif outcome == 0:
      try:
        if process_index != 0:
          workdir_lib.prepare_workdir(workdir, create=False)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      failed = multihost_utils.process_allgather(np.int32(error is not None))
      if error is None and np.asarray(failed).any():
        error = workdir_lib.WorkdirError(f"--workdir={workdir} cannot be used by process "
                                         f"{int(np.argmax(np.asarray(failed)))} (see its error)")
  if error is not None:
    raise error


def run_training(config, workdir: str) -> None:
  """Validates, joins the other processes, claims the workdir, trains; raises what went wrong."""
  # pylint: disable=import-outside-toplevel
  from lmjax import distributed, train
  from lmjax.config import ConfigError
  from lmjax.config_validation import validate
  from lmjax.workdir import FreshStart
  from lmjax.workdir_lock import WorkdirLock
  validate(config)  # bad fields fail before anything exists
  try:
    multi = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if multi:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  else:
    process_index, process_count = 0, 1
  lock = WorkdirLock(workdir)
  try:
    with FreshStart(workdir) as fresh:
      _claim_workdir(workdir, process_index, process_count, lock, fresh)
      train.train_and_evaluate(config, workdir)
  finally:
    lock.release()


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  console.setup()
  try:
    run_training(_CONFIG.value, _WORKDIR.value)
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, SystemExit):
      raise
    status, line = describe_failure(e, _WORKDIR.value)
    if status == cli.INTERNAL_ERROR_EXIT_CODE:
      raise
    print(line, file=sys.stderr)  # the one line; logging it as well would print it twice
    if isinstance(e, (preemption.Interrupted, KeyboardInterrupt)):
      # Cut off anywhere (inside a compilation, say), the runtime's own teardown can crash; nothing is left to do.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)  # pylint: disable=protected-access
    sys.exit(status)


def run() -> None:
  """The `lmjax-train` command."""
  describe_command(__name__)
  try:
    app.run(main, flags_parser=parse_flags)
  except preemption.Interrupted as e:  # while parsing flags (a config file can take its time)
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(cli.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  run()
