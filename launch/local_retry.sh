#!/usr/bin/env bash
# Run one lmjax training job on this machine and start it again after a crash, up to N times.
# Every restart resumes from the workdir's latest checkpoint, so a flaky or preemptible machine loses at most
# the steps since the last checkpoint.
#
#   launch/local_retry.sh [--retries N] [--dry-run] CONFIG WORKDIR [lmjax flags...]
#   launch/local_retry.sh --retries 5 configs/default.py runs/default --config.train.num_steps=10000
set -euo pipefail

retries=3
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --retries) retries="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--retries N] [--dry-run] CONFIG WORKDIR [lmjax flags...]" >&2
  exit 2
fi
config="$1"; workdir="$2"; shift 2
python="${PYTHON:-python}"
cmd=("$python" -m lmjax.main "--config=$config" "--workdir=$workdir" "$@")

if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi

mkdir -p "$workdir"
attempt=0
until "${cmd[@]}" 2>&1 | tee -a "$workdir/train.log"; do
  status=${PIPESTATUS[0]}
  case "$status" in
    2) echo "bad input (exit status 2): fix the config or flags; not retrying" >&2; exit 2 ;;
    3) echo "training diverged (exit status 3): see the error above; not retrying" >&2; exit 3 ;;
  esac
  attempt=$((attempt + 1))
  if [[ "$attempt" -gt "$retries" ]]; then
    echo "giving up after $retries restarts (last exit status $status)" >&2
    exit "$status"
  fi
  echo "exit status $status; restarting ($attempt/$retries) from the latest checkpoint in $workdir" >&2
  sleep 5
done
