#!/usr/bin/env bash
# Run one lmjax training job on this machine and start it again after a crash, up to N times.
# Every restart resumes from the workdir's latest checkpoint, so a flaky or preemptible machine loses at most
# the steps since the last checkpoint.
#
#   launch/local_retry.sh [--retries N] [--dry-run] CONFIG WORKDIR [lmjax flags...]
#   launch/local_retry.sh --retries 5 configs/default.py runs/default --config.train.num_steps=10000
#
# Retried: a crash (exit status 1, or killed by a signal) and a preemption (75). Not retried, since they need a
# person: bad input (2), divergence (3), a workdir in use by another run (4), an unusable workdir (5), a full disk
# (6), checkpoints that do not restore (7). RETRY_DELAY sets the seconds between attempts (default 5).
set -euo pipefail

retries=3
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --retries) retries="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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

# The log lives in the workdir; when the workdir cannot be made, lmjax itself says why (exit status 5).
log=/dev/null
if mkdir -p "$workdir" 2>/dev/null && : >> "$workdir/train.log" 2>/dev/null; then
  log="$workdir/train.log"
fi
attempt=0
until "${cmd[@]}" 2>&1 | tee -a "$log"; do
  status=${PIPESTATUS[0]}
  case "$status" in
    2) reason="bad input: fix the config, flags or data" ;;
    3) reason="training diverged: see the error above" ;;
    4) reason="the workdir is in use by another run" ;;
    5) reason="the workdir cannot be used" ;;
    6) reason="the disk is full: free space first" ;;
    7) reason="no checkpoint restores" ;;
    *) reason="" ;;
  esac
  if [[ -n "$reason" ]]; then
    echo "$reason (exit status $status); not retrying" >&2
    exit "$status"
  fi
  attempt=$((attempt + 1))
  if [[ "$attempt" -gt "$retries" ]]; then
    echo "giving up after $retries restarts (last exit status $status)" >&2
    exit "$status"
  fi
  echo "exit status $status; restarting ($attempt/$retries) from the latest checkpoint in $workdir" >&2
  sleep "${RETRY_DELAY:-5}"
done
