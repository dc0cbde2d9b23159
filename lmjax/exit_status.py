"""Which exit status and which one line end a run, by the exception it ended with (the table is in lmjax/cli.py).

It names every kind of failure lmjax raises, so it sits with the commands, above everything it classifies; the
low-level pieces (disk full, not writable) are in lmjax/failures.py.
"""

from __future__ import annotations

import os

from lmjax.failures import DiskFullError, disk_full_message, failed_path, is_not_writable, is_out_of_space


def describe_failure(error: BaseException, workdir: str | os.PathLike | None = None) -> tuple[int, str]:
  """(exit status, the one line for stderr) of a run that ended with this exception; (1, "") for an internal error
  (none of the known kinds), which then ends with its traceback. The statuses are listed in lmjax/cli.py."""
  # pylint: disable=import-outside-toplevel
  from lmjax import cli, preemption
  if isinstance(error, preemption.Preempted):
    return cli.PREEMPTED_EXIT_CODE, f"preempted: {error}"
  if isinstance(error, preemption.Interrupted):
    return cli.PREEMPTED_EXIT_CODE, f"stopped: {error}"
  if isinstance(error, KeyboardInterrupt):
    return 128 + 2, ("interrupted by a second Ctrl-C: stopped at once, without saving; rerun the same command to "
                     "resume from the latest checkpoint")
  if not isinstance(error, Exception):
    return cli.INTERNAL_ERROR_EXIT_CODE, ""
  from lmjax import train
  from lmjax.checkpoint import CheckpointError, NonFiniteStateError
  from lmjax.config import ConfigError
  from lmjax.data.text_files import DataError
  from lmjax.hf.files import HfError
  from lmjax.saved_run import RunError
  from lmjax.workdir import WorkdirError
  from lmjax.workdir_lock import WorkdirLocked
  known = ((cli.DIVERGED_EXIT_CODE, (train.NonFiniteError, NonFiniteStateError)),
           (cli.WORKDIR_LOCKED_EXIT_CODE, (WorkdirLocked,)),
           (cli.DISK_FULL_EXIT_CODE, (DiskFullError,)),
           (cli.WORKDIR_UNUSABLE_EXIT_CODE, (WorkdirError,)),
           (cli.NO_RESTORABLE_CHECKPOINT_EXIT_CODE, (CheckpointError,)),
           (cli.BAD_INPUT_EXIT_CODE, (ConfigError, DataError, RunError, HfError)))
  for status, kinds in known:
    if isinstance(error, kinds):
      return status, f"error: {error}"
  where = workdir if workdir is not None else "."
  if is_out_of_space(error):
    return cli.DISK_FULL_EXIT_CODE, f"error: {disk_full_message(error, where, 'while writing')}"
  if is_not_writable(error):
    path = failed_path(error) or os.fspath(where)
    return cli.WORKDIR_UNUSABLE_EXIT_CODE, (f"error: cannot write {path} ({' '.join(str(error).split())[:300]}); "
                                            f"make it writable or give another --workdir")
  return cli.INTERNAL_ERROR_EXIT_CODE, ""
