#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (one host or a pod): create (or queue) the TPU, copy this checkout to every
# worker, install a Python >= 3.11 venv there, and start hyperclip-train detached on every worker (it keeps
# running when this terminal or its ssh session goes away); `status`, `logs` and `stop` look after it.
#
#   launch/tpu_pod.sh [up] --name NAME --zone ZONE --accelerator TYPE --config CFG --workdir DIR [options]
#                          [-- TRAIN_ARGS]
#   launch/tpu_pod.sh status --name NAME --zone ZONE        state of the TPU and of each worker's run
#   launch/tpu_pod.sh logs   --name NAME --zone ZONE [--log-dir DIR] [--lines N] [--follow]
#                                       copy every worker's log to DIR/worker_<i>.log and print their tails;
#                                       --follow: tail -F worker 0's log (Ctrl-C stops the tail, not the run)
#   launch/tpu_pod.sh stop   --name NAME --zone ZONE        SIGTERM on every worker: checkpoint, exit 75
#
#   --name NAME         TPU VM (and queued-resource) name                                       (required)
#   --zone ZONE         e.g. us-central2-b                                                      (required)
#   --accelerator TYPE  v4-32, v5litepod-16, v5p-32, v6e-16, ...                         (required by create)
#   --config CFG        e.g. configs/datacomp.py:encoder=efficientnet_b0,scale=medium          (required by run)
#   --workdir DIR       run directory every worker sees: gs://bucket/path (the [gcs] extra is installed) or a
#                       shared mount (Filestore/NFS; gcsfuse needs care: docs/scaling.md)     (required by run)
#   --project P         GCP project (default: gcloud's configured one)
#   --version RUNTIME   TPU software version; default per family: v4 (and older) tpu-ubuntu2204-base,
#                       v5litepod/v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
#   --queued            create through a queued resource; wait until ACTIVE (FAILED/SUSPENDED: error)
#   --wait-timeout S    give up waiting for the queued resource after S seconds (default 86400)
#   --poll S            seconds between queued-resource state checks (default 60)
#   --spot              spot capacity (can be preempted: the run saves a checkpoint and exits 75)
#   --python MODE       how workers get Python >= 3.11: uv (default), deadsnakes, system (see below)
#   --env KEY=VALUE     extra environment for the trainer on every worker (repeatable), e.g. --env XLA_FLAGS=...
#                       or --env JAX_COMPILATION_CACHE_DIR=gs://b/cache; TFDS_DATA_DIR, LIBTPU_INIT_ARGS and
#                       every HYPERCLIP_* variable set here are passed on as they are
#   --steps LIST        up: comma list of create,copy,install,run (default: all four)
#   --log-dir DIR       logs: where the worker logs go (default runs/tpu_logs/NAME)
#   --workers N         logs: worker count (default: asked of gcloud; in --dry-run from the accelerator type)
#   --dry-run           print every command (gcloud, tar, the remote scripts), run none
#   after --            extra hyperclip-train arguments, e.g. --config.batch_size=16384
#
# Python: jax 0.10, numpy 2.4, flax, orbax and grain need Python >= 3.11; the TPU runtimes above ship Ubuntu
# 22.04's 3.10. Default `uv`: pip installs uv (a pinned PyPI wheel) for the user, uv downloads a standalone
# CPython 3.11 and makes the venv: no sudo, no apt (fresh TPU VMs often hold the dpkg lock for minutes running
# unattended upgrades), no python3-venv package, the same Python on every worker. It needs the workers to reach
# PyPI and GitHub (where uv's Python builds live). `deadsnakes`: apt installs python3.11 + python3.11-venv from
# the deadsnakes PPA (needs sudo and Launchpad). `system`: the image's python3 (a custom image with >= 3.11).
# Then pip installs requirements.txt, jax[tpu] at requirements.txt's jax pin (libtpu comes from PyPI) and this
# package with its [gcs] extra.
#
# On each worker the run lives in ~/hyperclip_jax/logs: train.log (appended across reruns), train.pid,
# exit_code. Exit 75 = stopped with a checkpoint saved (SIGTERM, spot preemption, `stop`): rerun
# `launch/tpu_pod.sh up ... --steps run` (or the whole `up` if the TPU is gone) to resume from DIR.
set -euo pipefail

die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }  # usage errors
fail() { echo "tpu_pod.sh: error: $*" >&2; exit 1; }  # runtime errors

UV_VERSION=0.13.8  # the uv wheel the workers install from PyPI
MIN_PYTHON=3.11
REMOTE=hyperclip_jax  # checkout on each worker, relative to the ssh user's home
# Passed on to the trainer when set here, with every HYPERCLIP_*; the rest only by --env (XLA_FLAGS set for this
# machine may not suit a TPU).
FORWARDED_ENV=(TFDS_DATA_DIR LIBTPU_INIT_ARGS)

command="up"
name="" zone="" accelerator="" config="" workdir="" project="" version="" python_mode="uv"
queued=0 spot=0 steps="create,copy,install,run" log_dir="" dry_run=0 wait_timeout=86400 poll=60
lines=20 follow=0 workers=""
extra_env=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name|--zone|--accelerator|--config|--workdir|--project|--version|--steps|--log-dir|--wait-timeout|\
    --poll|--python|--env|--lines|--workers)
      [[ $# -ge 2 ]] || die "$1 needs a value" ;;
  esac
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --wait-timeout) wait_timeout="$2"; shift 2 ;;
    --poll) poll="$2"; shift 2 ;;
    --python) python_mode="$2"; shift 2 ;;
    --env) [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$2'"
           extra_env+=("$2"); shift 2 ;;
    --lines) lines="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --follow) follow=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    up|status|logs|stop) command="$1"; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 && !/^#SBATCH/' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
done
overrides=("$@")

wants() { [[ "$command" == up && ",$steps," == *",$1,"* ]]; }
for required in name zone; do
  [[ -n "${!required}" ]] || die "--$required is required; see --help"
done
if [[ "$command" == up ]]; then
  for step in ${steps//,/ }; do
    case "$step" in
      create|copy|install|run) ;;
      logs) die "--steps: 'logs' is a command now: launch/tpu_pod.sh logs --name $name --zone $zone" ;;
      *) die "--steps: '$step' is unknown; known: create,copy,install,run" ;;
    esac
  done
  if wants create; then [[ -n "$accelerator" ]] || die "--accelerator is required; see --help"; fi
  if wants run; then
    [[ -n "$config" ]] || die "--config is required; see --help"
    [[ -n "$workdir" ]] || die "--workdir is required; see --help"
  fi
elif [[ ${#overrides[@]} -gt 0 ]]; then
  die "training arguments after -- belong to 'up', not '$command'"
fi
for number in wait_timeout poll lines; do
  [[ "${!number}" =~ ^[0-9]+$ ]] || die "--${number//_/-} must be a whole number, got '${!number}'"
done
[[ -z "$workers" || "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$workers'"
case "$python_mode" in
  uv|deadsnakes|system) ;;
  *) die "--python: '$python_mode' is unknown; known: uv, deadsnakes, system" ;;
esac

# The TPU software version Google documents for JAX on each TPU family (cloud.google.com/tpu/docs/runtimes).
default_version() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}
# Hosts of a slice, from its type: v2-v4 and v5p count TensorCores (2 per chip, 4 chips per host), v5e and
# v6e count chips (up to 8 on one host, 4 per host beyond). Used when gcloud is not asked (--dry-run).
hosts_of() {
  local family="${1%-*}" n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || return 1
  case "$family" in
    v2|v3|v4|v5p) echo $(( n > 8 ? n / 8 : 1 )) ;;
    v5litepod|v5e|v6e) echo $(( n > 8 ? n / 4 : 1 )) ;;
    *) return 1 ;;
  esac
}
if wants create && [[ -z "$version" ]]; then
  version="$(default_version "$accelerator")" || die "no default TPU software version for --accelerator \
'$accelerator' (known families: v4, v5litepod/v5e, v5p, v6e); pass --version RUNTIME"
fi

log_dir="${log_dir:-runs/tpu_logs/$name}"
root="$(cd "$(dirname "$0")/.." && pwd)"
common=(--zone "$zone")
[[ -n "$project" ]] && common+=(--project "$project")
spot_flag=()
[[ "$spot" == 1 ]] && spot_flag=(--spot)

squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }  # one shell word, single-quoted
run() {
  printf '+ ' >&2; printf '%q ' "$@" >&2; echo >&2
  if [[ "$dry_run" == 0 ]]; then "$@"; fi
}
ssh_workers() {  # ssh_workers WORKER SCRIPT: run SCRIPT (bash) on one worker or on all
  local cmd=(gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" "--worker=$1" --command)
  # Printed with the script in single quotes, line by line: readable, and pastes back into a shell.
  printf '+ ' >&2; printf '%q ' "${cmd[@]}" >&2; squote "$2" >&2; echo >&2
  if [[ "$dry_run" == 0 ]]; then "${cmd[@]}" "$2"; fi
}

# Shell scripts run on the workers (bash, in the ssh user's home). $W names the worker in what they print.
# shellcheck disable=SC2016  # expanded on the worker, not here
worker_id='W=$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'
py_ok=".venv/bin/python -c 'import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))'"

install_script() {
  local make_venv jax_pin
  jax_pin="$(sed -n 's/^jax==\([^ #]*\).*/\1/p' "$root/requirements.txt")"
  [[ -n "$jax_pin" ]] || fail "requirements.txt has no 'jax==VERSION' line to match jax[tpu] to"
  case "$python_mode" in
    uv) make_venv="python3 -m pip --version >/dev/null 2>&1 ||
    { sudo apt-get update -q && sudo apt-get install -y -q python3-pip; }
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user uv==$UV_VERSION  # a user install of one binary
  ~/.local/bin/uv python install $MIN_PYTHON
  ~/.local/bin/uv venv --seed --python $MIN_PYTHON .venv" ;;
    deadsnakes) make_venv="sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python$MIN_PYTHON python$MIN_PYTHON-venv
  python$MIN_PYTHON -m venv .venv" ;;
    system) make_venv="python3 -c 'import ensurepip' 2>/dev/null || sudo apt-get install -y -q python3-venv
  python3 -m venv .venv" ;;
  esac
  cat <<EOF
set -euo pipefail
$worker_id
cd $REMOTE
if ! $py_ok 2>/dev/null; then  # none yet, or one of an older Python
  rm -rf .venv
  $make_venv
fi
$py_ok || { echo "worker \$W: error: .venv has \$(.venv/bin/python -V 2>&1); need Python >= $MIN_PYTHON" >&2; exit 1; }
.venv/bin/python -m pip install -q -r requirements.txt 'jax[tpu]==$jax_pin'
.venv/bin/python -m pip install -q -e '.[gcs]'  # gs:// workdirs and shards, the usual case on TPU VMs
echo "worker \$W: installed, \$(.venv/bin/python -V)"
EOF
}

run_script() {
  local env_args=() var train wrapper
  for var in "${FORWARDED_ENV[@]}" $(compgen -v HYPERCLIP_ || true); do
    if [[ -n "${!var:-}" ]]; then env_args+=("$var=${!var}"); fi
  done
  env_args+=("${extra_env[@]}")
  printf -v train '%q ' env "${env_args[@]}" .venv/bin/python -m hyperclip_jax.train --config "$config" \
    --workdir "$workdir" --config.distributed.mode=on "${overrides[@]}"
  # The wrapper records the trainer's pid and, once it ends, its exit code; the trainer gets SIGTERM from `stop`.
  # Both files are written to a temporary name and renamed, so a reader never sees one half written.
  wrapper="${train}& echo \$! > logs/train.pid.tmp; mv logs/train.pid.tmp logs/train.pid; wait \$!; rc=\$?"
  wrapper+="; echo \$rc > logs/exit_code.tmp; mv logs/exit_code.tmp logs/exit_code"
  wrapper+="; echo \"=== \$(date -u +%FT%TZ) exit \$rc\""
  wrapper="$(squote "$wrapper")"
  cat <<EOF
set -euo pipefail
$worker_id
cd $REMOTE
mkdir -p logs
$py_ok || { echo "worker \$W: error: no Python >= $MIN_PYTHON venv; run: launch/tpu_pod.sh up ... --steps install" >&2
  exit 1; }
if [ -s logs/train.pid ] && kill -0 "\$(cat logs/train.pid)" 2>/dev/null; then
  echo "worker \$W: error: a run is going (pid \$(cat logs/train.pid)); see launch/tpu_pod.sh status / stop" >&2; exit 1
fi
rm -f logs/exit_code logs/train.pid
echo "=== \$(date -u +%FT%TZ) start" >> logs/train.log
# Detached: its own session (setsid), immune to hangups (nohup), no terminal; ending this ssh session leaves it be.
setsid nohup bash -c $wrapper >> logs/train.log 2>&1 < /dev/null &
# Return only once the wrapper, already in its own session, has recorded the trainer's pid.
for _ in \$(seq 300); do [ -s logs/train.pid ] && break; sleep 0.1; done
[ -s logs/train.pid ] || { echo "worker \$W: error: the run did not start; see ~/$REMOTE/logs/train.log" >&2; exit 1; }
echo "worker \$W: started (pid \$(cat logs/train.pid)); log ~/$REMOTE/logs/train.log"
EOF
}

status_script() {
  cat <<EOF
$worker_id
cd $REMOTE 2>/dev/null || { echo "worker \$W: no checkout"; exit 0; }
if [ -s logs/train.pid ] && kill -0 "\$(cat logs/train.pid)" 2>/dev/null; then s="running (pid \$(cat logs/train.pid))"
elif [ -s logs/exit_code ]; then
  case "\$(cat logs/exit_code)" in
    0) s="finished (exit 0)" ;;
    75) s="stopped with a checkpoint (exit 75): rerun 'up ... --steps run' to resume" ;;
    *) s="failed (exit \$(cat logs/exit_code)): see the log" ;;
  esac
else s="not started"; fi
echo "worker \$W: \$s | last log line: \$(tail -n 1 logs/train.log 2>/dev/null)"
EOF
}

stop_script() {
  cat <<EOF
$worker_id
cd $REMOTE
if [ -s logs/train.pid ] && kill -0 "\$(cat logs/train.pid)" 2>/dev/null; then
  kill -TERM "\$(cat logs/train.pid)" && echo "worker \$W: SIGTERM sent: the run saves a checkpoint and exits 75"
else echo "worker \$W: no run going"; fi
EOF
}

wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "$name" "${common[@]}" --format='value(state.state)')
  if [[ "$dry_run" == 1 ]]; then
    run "${describe[@]}"
    echo "  (polled every ${poll}s until ACTIVE; FAILED/SUSPENDED or ${wait_timeout}s end with an error)" >&2
    return
  fi
  local start=$SECONDS state
  while true; do
    state="$("${describe[@]}")" || fail "could not read queued resource '$name' in $zone (gcloud failed above)"
    case "$state" in
      ACTIVE) echo "queued resource $name is ACTIVE" >&2; return ;;
      FAILED|SUSPENDING|SUSPENDED)
        fail "queued resource '$name' is $state; details: gcloud compute tpus queued-resources describe $name \
--zone $zone; delete it (gcloud compute tpus queued-resources delete $name --zone $zone --force) before retrying" ;;
    esac
    if (( SECONDS - start >= wait_timeout )); then
      fail "queued resource '$name' is still ${state:-in no state} after ${wait_timeout}s (--wait-timeout); \
it stays queued: rerun with --steps copy,install,run once it is ACTIVE"
    fi
    echo "queued resource $name: ${state:-?}; next check in ${poll}s" >&2
    sleep "$poll"
  done
}

worker_count() {
  local endpoints
  if [[ -n "$workers" ]]; then echo "$workers"; return; fi
  if [[ "$dry_run" == 1 ]]; then
    run gcloud compute tpus tpu-vm describe "$name" "${common[@]}" --format='value(networkEndpoints[].ipAddress)'
    hosts_of "$accelerator" 2>/dev/null || echo 1
    return
  fi
  endpoints="$(gcloud compute tpus tpu-vm describe "$name" "${common[@]}" \
    --format='value(networkEndpoints[].ipAddress)')" || fail "could not describe TPU '$name' in $zone"
  local addresses=()
  read -ra addresses <<< "${endpoints//[;,]/ }"  # one word per worker's address
  [[ ${#addresses[@]} -gt 0 ]] || fail "TPU '$name' lists no workers; is it READY? (launch/tpu_pod.sh status)"
  echo "${#addresses[@]}"
}

case "$command" in
  up)
    if wants create; then
      if [[ "$queued" == 1 ]]; then
        run gcloud compute tpus queued-resources create "$name" --node-id "$name" "${common[@]}" \
          --accelerator-type "$accelerator" --runtime-version "$version" "${spot_flag[@]}"
        wait_until_active
      else
        run gcloud compute tpus tpu-vm create "$name" "${common[@]}" --accelerator-type "$accelerator" \
          --version "$version" "${spot_flag[@]}"
      fi
    fi
    if wants copy; then
      archive="${TMPDIR:-/tmp}/hyperclip_jax_$name.tgz"
      run tar -C "$root" -czf "$archive" --exclude='.venv*' --exclude=.jax_cache --exclude=runs --exclude=.git \
        --exclude=__pycache__ .
      run gcloud compute tpus tpu-vm scp "$archive" "$name:$REMOTE.tgz" "${common[@]}" --worker=all
      ssh_workers all "mkdir -p $REMOTE && tar -xzf $REMOTE.tgz -C $REMOTE"
    fi
    if wants install; then ssh_workers all "$(install_script)"; fi
    if wants run; then
      ssh_workers all "$(run_script)"
      echo "detached on every worker; follow it with: launch/tpu_pod.sh status|logs --name $name --zone $zone" >&2
    fi
    ;;
  status)
    run gcloud compute tpus tpu-vm describe "$name" "${common[@]}" --format='value(state,health,acceleratorType)'
    ssh_workers all "$(status_script)"
    ;;
  stop)
    ssh_workers all "$(stop_script)"
    ;;
  logs)
    if [[ "$follow" == 1 ]]; then
      ssh_workers 0 "tail -n $lines -F $REMOTE/logs/train.log"
      exit 0
    fi
    n="$(worker_count)"
    run mkdir -p "$log_dir"
    for ((i = 0; i < n; i++)); do
      run gcloud compute tpus tpu-vm scp "$name:$REMOTE/logs/train.log" "$log_dir/worker_$i.log" "${common[@]}" \
        "--worker=$i"
    done
    for ((i = 0; i < n; i++)); do
      if [[ "$dry_run" == 1 ]]; then run tail -n "$lines" "$log_dir/worker_$i.log"; continue; fi
      echo "==> worker $i ($log_dir/worker_$i.log) <=="
      tail -n "$lines" "$log_dir/worker_$i.log"
    done
    ;;
esac
