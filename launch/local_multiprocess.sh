#!/usr/bin/env bash
# Runs hyperclip-train as N cooperating JAX processes on this machine (CPU devices, gloo collectives): the
# multi-host code path (jax.distributed, host-local data feeding, collective Orbax saves) without a cluster.
#
#   launch/local_multiprocess.sh [--dry-run] --num-processes N [--devices-per-process D] [--port P]
#                                [--log-dir DIR] -- --config CFG --workdir DIR [--config.a.b=v ...]
#
#   --num-processes N        processes to start (required, >= 1)
#   --devices-per-process D  fake CPU devices per process (default 1)
#   --port P                 coordinator port on localhost (default 12355)
#   --log-dir DIR            per-process logs DIR/process_<i>.log (default: WORKDIR/logs)
#   --dry-run                print the exact commands and exit
#   after --                 the hyperclip-train arguments, passed unchanged to every process
#
# Env: PYTHON (>= 3.11; default .venv/bin/python when present, else python3). Exit status: the first failing
# process's, else 0. All processes must see the same workdir (here: the same disk).
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "local_multiprocess.sh: error: $*" >&2; exit 2; }

num_processes="" devices=1 port=12355 log_dir="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num-processes|--devices-per-process|--port|--log-dir) [[ $# -ge 2 ]] || die "$1 needs a value" ;;
  esac
  case "$1" in
    --num-processes) num_processes="${2:-}"; shift 2 ;;
    --devices-per-process) devices="${2:-}"; shift 2 ;;
    --port) port="${2:-}"; shift 2 ;;
    --log-dir) log_dir="${2:-}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
done
train_args=("$@")

[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || die "--num-processes N (a positive integer) is required"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "--devices-per-process must be a positive integer, got '$devices'"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"
workdir=""
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[i]}" in
    --workdir) workdir="${train_args[i + 1]:-}" ;;
    --workdir=*) workdir="${train_args[i]#--workdir=}" ;;
  esac
done
[[ -n "$workdir" ]] || die "the training arguments after -- need --workdir DIR"
log_dir="${log_dir:-$workdir/logs}"

root="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi

commands=()
for ((i = 0; i < num_processes; i++)); do
  env_part=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
            "JAX_COORDINATOR_ADDRESS=localhost:$port" "JAX_NUM_PROCESSES=$num_processes" "JAX_PROCESS_ID=$i")
  cmd=("${env_part[@]}" "$PYTHON" -m hyperclip_jax.train "${train_args[@]}")
  printf -v line '%q ' "${cmd[@]}"
  commands+=("$line> $(printf '%q' "$log_dir/process_$i.log") 2>&1")
done

if [[ "$dry_run" == 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || die "$PYTHON is \
$("$PYTHON" -V 2>&1 || echo missing); hyperclip_jax needs Python >= 3.11 (set PYTHON=...)"
mkdir -p "$log_dir"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM
cd "$root"
for ((i = 0; i < num_processes; i++)); do
  echo "+ ${commands[i]}" >&2
  bash -c "${commands[i]}" &
  pids+=("$!")
done
status=0
for ((i = 0; i < num_processes; i++)); do
  rc=0
  wait "${pids[i]}" || rc=$?
  if [[ "$rc" != 0 ]]; then
    echo "local_multiprocess.sh: process $i failed (exit $rc); log: $log_dir/process_$i.log" >&2
    [[ "$status" == 0 ]] && status=$rc
    cleanup
  fi
done
exit "$status"
