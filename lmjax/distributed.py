"""Joining a multi-process run: every host runs the same command, and this connects them before any JAX work.

On a Cloud TPU pod slice and under SLURM, JAX finds the coordinator, the process count and this process's id by
itself; on other GPU clusters they come from flags (or the LMJAX_COORDINATOR_ADDRESS, LMJAX_NUM_PROCESSES and
LMJAX_PROCESS_ID environment variables, which launch scripts find easier to set).
"""

from __future__ import annotations

import os

import jax
from absl import logging


def _on_multi_host_tpu() -> bool:
  # TPU VM workers of a pod slice list every worker's address; a single host lists one or none.
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def _in_multi_task_slurm_job() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
  """Calls jax.distributed.initialize when this is one process of several; returns whether it did.

  Explicit arguments win over the environment. With nothing given on a single machine it does nothing, so the
  same entry point serves laptops and pods.
  """
  coordinator_address = coordinator_address or os.environ.get("LMJAX_COORDINATOR_ADDRESS", "")
  num_processes = num_processes or int(os.environ.get("LMJAX_NUM_PROCESSES", "0") or 0)
  if process_id < 0:
    process_id = int(os.environ.get("LMJAX_PROCESS_ID", "-1") or -1)
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--coordinator_address={coordinator_address} needs --num_processes >= 1 and "
                       f"0 <= --process_id < num_processes (got {num_processes} and {process_id}).")
    # CPU processes exchange collectives through gloo (it only affects the CPU backend, so GPU hosts are unchanged);
    # asking the backend which platform this is would start JAX before initialize, which it forbids.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif _on_multi_host_tpu() or _in_multi_task_slurm_job():
    jax.distributed.initialize()
  else:
    return False
  logging.info("Process %d of %d; %d local devices of %d.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
