#!/usr/bin/env bash
# Run N processes of one lmjax command on this machine, joined through a local coordinator: a multi-host run in
# miniature, to exercise multi-process code (data sharding, process-0-only logging, collective checkpoints) on one
# CPU machine before it meets a pod or a cluster.
#
#   launch/local_multiprocess.sh [options] [--] lmjax flags...
#   launch/local_multiprocess.sh --cpu --devices_per_process 2 -- --config=configs/tiny.py --workdir=runs/mp
#
# options:
#   --num_processes N        processes to start (default 2)
#   --port PORT              coordinator port on localhost (default: a free one)
#   --cpu                    run on the CPU (JAX_PLATFORMS=cpu); without it every process sees every accelerator
#                            of the machine
#   --devices_per_process K  simulated CPU devices per process (XLA_FLAGS=--xla_force_host_platform_device_count=K);
#                            implies --cpu
#   --log_dir DIR            process i writes DIR/process_i.log (default logs/local_multiprocess)
#   --grace SECONDS          after one process fails, how long the others get to stop on SIGTERM before SIGKILL
#                            (default 30)
#   --dry-run                print the N commands, one per line, and run nothing
#   -h, --help               this help
#
# Environment: PYTHON (default python). The exit status is the first nonzero status of any process (75 when
# preempted, so launch/local_retry.sh-style wrappers know to rerun), else 0. Ctrl-C or SIGTERM is passed on to
# every process as SIGTERM, so each saves its checkpoint and exits with 75; a second one kills them at once.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
  echo "error: $*" >&2
  exit 2
}

# Quoting that bash and Python's shlex read alike, and that stays readable: words that need none get none.
sq() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

num_processes=2
port=""
cpu=0
devices_per_process=""
log_dir="logs/local_multiprocess"
grace=30
dry_run=0

need_value() {
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes|--port|--devices_per_process|--log_dir|--grace) need_value "$@" ;;&
    --num_processes) num_processes="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --devices_per_process) devices_per_process="$2"; cpu=1; shift 2 ;;
    --log_dir) log_dir="$2"; shift 2 ;;
    --grace) grace="$2"; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done

for pair in "--num_processes:$num_processes" "--grace:$grace" ${port:+"--port:$port"} \
            ${devices_per_process:+"--devices_per_process:$devices_per_process"}; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || die "${pair%%:*} must be a whole number, got '${pair#*:}'"
done
[[ "$num_processes" -ge 1 ]] || die "--num_processes must be at least 1"
[[ $# -gt 0 ]] || die "no lmjax flags; usage: $0 [options] [--] --config=CONFIG --workdir=WORKDIR [lmjax flags...]"

python="${PYTHON:-python}"
if [[ -z "$port" ]]; then
  # Asking the kernel for a free port rather than fixing one: other people's runs share this machine.
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi

env_vars=()
if [[ "$cpu" == 1 ]]; then
  env_vars+=(JAX_PLATFORMS=cpu)
fi
if [[ -n "$devices_per_process" ]]; then
  xla_flags="${XLA_FLAGS:-}"
  xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$devices_per_process"
  env_vars+=("XLA_FLAGS=$xla_flags")
fi

# The command of process $1, in the array cmd.
build_cmd() {
  cmd=(env ${env_vars[@]+"${env_vars[@]}"} "$python" -m lmjax.main "${lmjax_args[@]}"
       "--coordinator_address=localhost:$port" "--num_processes=$num_processes" "--process_id=$1")
}
lmjax_args=("$@")

if [[ "$dry_run" == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    build_cmd "$i"
    line=""
    for arg in "${cmd[@]}"; do
      line+="${line:+ }$(sq "$arg")"
    done
    printf '%s\n' "$line"
  done
  exit 0
fi

mkdir -p "$log_dir"
pids=()
first_status=0
stopping=0
deadline=0

# Each process leads its own process group (set -m below), so a signal reaches the helpers it started too, such as
# data-loading workers.
signal_all() {
  local pid
  for pid in "${pids[@]}"; do
    if [[ -n "$pid" ]]; then
      kill "-$1" -- "-$pid" 2>/dev/null || true
    fi
  done
}

# SIGTERM first, so the processes can save a checkpoint and leave cleanly; SIGKILL after the grace period for those
# stuck waiting on a peer that is gone.
stop_all() {
  signal_all TERM
  if [[ "$stopping" == 0 ]]; then
    stopping=1
    deadline=$((SECONDS + grace))
  fi
}

# shellcheck disable=SC2329  # called by the trap below
on_signal() {
  if [[ "$stopping" == 1 ]]; then
    echo "second signal: killing all processes" >&2
    signal_all KILL
  else
    echo "signal received: asking all processes to save and stop" >&2
    stop_all
  fi
}

# No process outlives this script, however it ends.
trap 'signal_all KILL' EXIT
trap on_signal INT TERM

set -m
for ((i = 0; i < num_processes; i++)); do
  build_cmd "$i"
  "${cmd[@]}" > "$log_dir/process_$i.log" 2>&1 < /dev/null &
  pids+=("$!")
done
set +m
echo "started $num_processes processes (coordinator localhost:$port); logs in $log_dir/process_*.log" >&2

running="$num_processes"
while [[ "$running" -gt 0 ]]; do
  for ((i = 0; i < num_processes; i++)); do
    pid="${pids[$i]}"
    if [[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    status=0
    wait "$pid" || status=$?
    pids[i]=""
    running=$((running - 1))
    if [[ "$status" != 0 && "$first_status" == 0 ]]; then
      first_status="$status"
      echo "process $i exited with status $status; stopping the others. Its last lines ($log_dir/process_$i.log):" >&2
      tail -n 5 "$log_dir/process_$i.log" >&2 || true
      stop_all
    fi
  done
  if [[ "$stopping" == 1 && "$SECONDS" -ge "$deadline" ]]; then
    signal_all KILL
  fi
  sleep 0.2
done
exit "$first_status"
