#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it, put lmjax on every worker, run one command on all workers at once,
# fetch the logs, delete it. A slice of more than one host is several VMs, and JAX needs the same program started
# on each of them (it finds its peers by itself), which is what gcloud's --worker=all does.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh SUBCOMMAND [options] [-- lmjax flags...]
       (options may also come before the subcommand: launch/tpu_pod.sh --dry-run run ...)

subcommands:
  create   create the slice (needs --accelerator)
  setup    copy this checkout (git archive of --ref) to every worker, or git clone --repo there, and
           install it with its tpu extra (pip install -e '.[tpu]': lmjax and jax[tpu])
  run      run `python3 -m lmjax.main FLAGS` on every worker at once, FLAGS being everything after --;
           each worker appends its output to DIR/logs/lmjax-HOSTNAME.log
  logs     copy every worker's log into --log_dir
  delete   delete the slice

options ([environment variable] and default):
  --name NAME             the TPU's name [TPU_NAME]; required
  --zone ZONE             e.g. us-central2-b [ZONE]; required
  --project PROJECT       [PROJECT]; default: gcloud's configured project
  --accelerator TYPE      e.g. v4-32 [ACCELERATOR_TYPE]; required by create
  --version VERSION       TPU software version [TPU_VERSION]; default tpu-ubuntu2204-base (v4, v5p); v5e
                          and v6e take v2-alpha-tpuv5-lite and v2-alpha-tpuv6e
  --spot                  create a Spot slice: cheaper, and can be taken away at any time
  --preemptible           create a (legacy) preemptible slice
  --repo URL              setup: git clone URL on the workers instead of copying this checkout
  --ref REF               setup: commit, branch or tag to install; default HEAD (uncommitted changes are not copied)
  --dir DIR               the checkout on each worker, relative to its home directory; default lmjax
  --retries N             run: restart a stopped run up to N times on each worker (launch/local_retry.sh); a
                          preempted Spot slice is gone instead: delete, create, setup and run it again with the
                          same --workdir, and it resumes from the latest checkpoint
  --detach                run: start in the background on the workers and return at once; follow with `logs`
  --log_dir DIR           logs: where to put them; default logs/NAME
  --python PYTHON         the workers' Python; default python3
  --yes                   delete without asking
  --dry-run               print the commands, one per line, and run nothing
  -h, --help              this help

The --workdir of a multi-host run must be one directory that every worker sees at the same path (an NFS share such
as Filestore, or a bucket mounted with gcsfuse): checkpoints are written by all processes together.

  launch/tpu_pod.sh create --name lm --zone us-central2-b --accelerator v4-32 --spot
  launch/tpu_pod.sh setup  --name lm --zone us-central2-b
  launch/tpu_pod.sh run    --name lm --zone us-central2-b -- --config=configs/gpt2_small.py:lm1b --workdir=/mnt/runs/gpt2
  launch/tpu_pod.sh logs   --name lm --zone us-central2-b
  launch/tpu_pod.sh delete --name lm --zone us-central2-b
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

# Shell quoting that means the same in bash, dash and Python's shlex (newlines included): the remote command is read
# by the worker's login shell, and the printed commands should stay readable for review and copy-paste.
sq() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run_cmd() {
  if [[ "$dry_run" == 1 ]]; then
    local line="" arg
    for arg in "$@"; do
      line+="${line:+ }$(sq "$arg")"
    done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

subcommand=""
name="${TPU_NAME:-}"
zone="${ZONE:-}"
project="${PROJECT:-}"
accelerator="${ACCELERATOR_TYPE:-}"
version="${TPU_VERSION:-tpu-ubuntu2204-base}"
capacity=""
repo_url=""
ref="HEAD"
remote_dir="lmjax"
retries=""
detach=0
log_dir=""
python="python3"
yes=0
dry_run=0
lmjax_args=()

need_value() {
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  if [[ "$1" == --*=* ]]; then
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case "$1" in
    --name|--zone|--project|--accelerator|--version|--repo|--ref|--dir|--retries|--log_dir|--python)
      need_value "$@" ;;&
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --repo) repo_url="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --dir) remote_dir="$2"; shift 2 ;;
    --retries) retries="$2"; shift 2 ;;
    --log_dir) log_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --spot) capacity="--spot"; shift ;;
    --preemptible) capacity="--preemptible"; shift ;;
    --detach) detach=1; shift ;;
    --yes) yes=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; lmjax_args=("$@"); break ;;
    # Options may come before the subcommand as well as after it: `--dry-run run ...` and `run --dry-run ...`.
    create|setup|run|logs|delete)
      [[ -z "$subcommand" ]] || die "two subcommands, '$subcommand' and '$1'; give one (see --help)"
      subcommand="$1"; shift ;;
    -*) die "unknown option '$1'${subcommand:+ for $subcommand}; lmjax flags go after -- (see --help)" ;;
    *)
      if [[ -z "$subcommand" ]]; then
        die "unknown subcommand '$1'; expected one of create, setup, run, logs, delete (see --help)"
      fi
      die "unexpected argument '$1' for $subcommand; lmjax flags go after -- (see --help)" ;;
  esac
done
[[ -n "$subcommand" ]] || die "no subcommand; expected one of create, setup, run, logs, delete (see --help)"

[[ -n "$name" ]] || die "--name is required (or set TPU_NAME)"
[[ -n "$zone" ]] || die "--zone is required (or set ZONE)"
if [[ -n "$retries" && ! "$retries" =~ ^[0-9]+$ ]]; then
  die "--retries must be a whole number, got '$retries'"
fi

tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
if [[ -n "$project" ]]; then
  where+=("--project=$project")
fi

# Worker hostnames differ, so the logs of all workers can land in one local directory without overwriting each other.
# shellcheck disable=SC2016  # expanded by the worker's shell, not here
remote_log='logs/lmjax-$(hostname).log'

case "$subcommand" in
  create)
    [[ -n "$accelerator" ]] || die "--accelerator is required for create (e.g. v4-32, or set ACCELERATOR_TYPE)"
    cmd=("${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator" "--version=$version")
    if [[ -n "$capacity" ]]; then
      cmd+=("$capacity")
    fi
    run_cmd "${cmd[@]}"
    ;;

  setup)
    install="cd $(sq "$remote_dir") && $(sq "$python") -m pip install -e '.[tpu]'"
    if [[ -n "$repo_url" ]]; then
      # Fetching the ref and checking out FETCH_HEAD works alike for a branch, a tag or a commit, and on a rerun
      # updates the existing clone instead of failing on it.
      fetch="{ test -d $(sq "$remote_dir/.git") || git clone $(sq "$repo_url") $(sq "$remote_dir"); }"
      fetch+=" && git -C $(sq "$remote_dir") fetch origin $(sq "$ref")"
      fetch+=" && git -C $(sq "$remote_dir") checkout --detach FETCH_HEAD"
      run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$fetch && $install"
    else
      repo_root="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
      tarball="${TMPDIR:-/tmp}/lmjax-$name-$$.tar.gz"
      if [[ "$dry_run" != 1 ]]; then
        trap 'rm -f "$tarball"' EXIT
        if [[ "$ref" == HEAD && -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
          echo "note: uncommitted changes are not copied; the workers get HEAD" >&2
        fi
      fi
      run_cmd git -C "$repo_root" archive --format=tar.gz -o "$tarball" "$ref"
      run_cmd "${tpu[@]}" scp "$tarball" "$name:lmjax.tar.gz" "${where[@]}" --worker=all
      # Unpacked over any earlier copy rather than into a fresh directory, so logs/ and local runs there survive.
      unpack="mkdir -p $(sq "$remote_dir") && tar -xzf lmjax.tar.gz -C $(sq "$remote_dir") && rm lmjax.tar.gz"
      run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$unpack && $install"
    fi
    ;;

  run)
    [[ ${#lmjax_args[@]} -gt 0 ]] || die "run needs lmjax flags after --, e.g. -- --config=configs/tiny.py --workdir=runs/tiny"
    if [[ -n "$retries" ]]; then
      # local_retry.sh takes the config and workdir as positional arguments.
      config=""
      workdir=""
      rest=()
      i=0
      while [[ $i -lt ${#lmjax_args[@]} ]]; do
        arg="${lmjax_args[$i]}"
        case "$arg" in
          --config=*) config="${arg#--config=}" ;;
          --workdir=*) workdir="${arg#--workdir=}" ;;
          --config|--workdir)
            [[ $((i + 1)) -lt ${#lmjax_args[@]} ]] || die "$arg needs a value"
            i=$((i + 1))
            if [[ "$arg" == --config ]]; then config="${lmjax_args[$i]}"; else workdir="${lmjax_args[$i]}"; fi ;;
          *) rest+=("$arg") ;;
        esac
        i=$((i + 1))
      done
      [[ -n "$config" && -n "$workdir" ]] || die "--retries needs --config=... and --workdir=... among the lmjax flags"
      program="env PYTHON=$(sq "$python") bash launch/local_retry.sh --retries $retries $(sq "$config") $(sq "$workdir")"
      for arg in ${rest[@]+"${rest[@]}"}; do
        program+=" $(sq "$arg")"
      done
    else
      program="$(sq "$python") -m lmjax.main"
      for arg in "${lmjax_args[@]}"; do
        program+=" $(sq "$arg")"
      done
    fi
    remote="cd $(sq "$remote_dir") && mkdir -p logs && "
    if [[ "$detach" == 1 ]]; then
      # nohup and no terminal: the run outlives this ssh session (and a laptop going to sleep).
      remote+="nohup $program >> $remote_log 2>&1 < /dev/null &"
    else
      # pipefail, so the worker's exit status is the program's, not tee's; tee -p keeps writing the log (and the
      # program keeps running) if this ssh connection drops.
      remote+="set -o pipefail && $program 2>&1 | tee -a -p $remote_log"
    fi
    run_cmd "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote"
    ;;

  logs)
    log_dir="${log_dir:-logs/$name}"
    run_cmd mkdir -p "$log_dir"
    # The pattern is expanded on each worker; a directory copy would nest differently for the first worker to
    # arrive than for the rest.
    run_cmd "${tpu[@]}" scp "$name:$remote_dir/logs/lmjax-*.log" "$log_dir" "${where[@]}" --worker=all
    ;;

  delete)
    cmd=("${tpu[@]}" delete "$name" "${where[@]}")
    if [[ "$yes" == 1 ]]; then
      cmd+=(--quiet)
    fi
    run_cmd "${cmd[@]}"
    ;;
esac
