r"""Train and evaluate a model.

  python -m lmjax.main --config=configs/default.py --workdir=runs/default
  python -m lmjax.main --config=configs/nanogpt_cpu.py --workdir=runs/x --config.model.num_layers=6

Rerunning the same command in the same workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from lmjax import console, distributed, train
from lmjax.cli import DIVERGED_EXIT_CODE, describe_command, fail, parse_flags
from lmjax.config import ConfigError
from lmjax.preemption import PREEMPTED_EXIT_CODE, Preempted

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, for multi-process runs outside Cloud TPU and SLURM "
    "(there it is found automatically).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.setup()
  config = _CONFIG.value
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    train.train_and_evaluate(config, _WORKDIR.value)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_CODE)
  except train.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(DIVERGED_EXIT_CODE)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    # Bad input is reported in one line, not as a traceback.
    fail(str(e))


def run() -> None:
  """The `lmjax-train` command."""
  describe_command(__name__)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
