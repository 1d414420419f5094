#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (single host or pod): create (or queue) the TPU, copy this checkout to every
# worker, install, run hyperclip-train on --worker=all (jax.distributed auto-detects the pod), fetch the log.
#
#   launch/tpu_pod.sh [--dry-run] --name NAME --zone ZONE --accelerator TYPE --config CFG --workdir DIR
#                     [--project P] [--version RUNTIME] [--queued] [--spot] [--steps LIST] [--log-dir DIR]
#                     [-- OVERRIDES]
#
#   --name NAME         TPU VM (and queued-resource) name                               (required)
#   --zone ZONE         e.g. us-central2-b                                              (required)
#   --accelerator TYPE  e.g. v4-32, v5litepod-16                                        (required)
#   --config CFG        e.g. configs/datacomp.py:encoder=efficientnet_b0,scale=medium   (required)
#   --workdir DIR       run directory that every worker sees: a gcsfuse or Filestore mount (required)
#   --project P         GCP project (default: gcloud's configured one)
#   --version RUNTIME   TPU software version (default tpu-ubuntu2204-base)
#   --queued            create through a queued resource and wait until it is ACTIVE
#   --spot              spot capacity
#   --steps LIST        comma list of create,copy,install,run,logs (default: all five)
#   --log-dir DIR       where worker 0's log is fetched to (default runs/tpu_logs/NAME)
#   --dry-run           print every command, run none
#   after --            extra hyperclip-train arguments, e.g. --config.batch_size=16384
#
# Rerunning with --steps run resumes from the newest checkpoint in DIR.
set -euo pipefail

die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

name="" zone="" accelerator="" config="" workdir="" project="" version="tpu-ubuntu2204-base"
queued=0 spot=0 steps="create,copy,install,run,logs" log_dir="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name|--zone|--accelerator|--config|--workdir|--project|--version|--steps|--log-dir)
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
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
done
overrides=("$@")
for required in name zone accelerator config workdir; do
  [[ -n "${!required}" ]] || die "--$required is required; see --help"
done
for step in ${steps//,/ }; do
  case "$step" in create|copy|install|run|logs) ;; *) die "--steps: '$step' is unknown; known: create,copy,install,run,logs" ;; esac
done
log_dir="${log_dir:-runs/tpu_logs/$name}"
root="$(cd "$(dirname "$0")/.." && pwd)"

common=(--zone "$zone")
[[ -n "$project" ]] && common+=(--project "$project")
spot_flag=()
[[ "$spot" == 1 ]] && spot_flag=(--spot)

run() {
  printf '+ ' >&2; printf '%q ' "$@" >&2; echo >&2
  if [[ "$dry_run" == 0 ]]; then "$@"; fi
}
wants() { [[ ",$steps," == *",$1,"* ]]; }
on_all() { run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command "$1"; }

if wants create; then
  if [[ "$queued" == 1 ]]; then
    run gcloud compute tpus queued-resources create "$name" --node-id "$name" "${common[@]}" \
      --accelerator-type "$accelerator" --runtime-version "$version" "${spot_flag[@]}"
    if [[ "$dry_run" == 0 ]]; then
      until [[ "$(gcloud compute tpus queued-resources describe "$name" "${common[@]}" \
                  --format='value(state.state)')" == ACTIVE ]]; do
        echo "waiting for queued resource $name to become ACTIVE ..." >&2
        sleep 60
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$name" "${common[@]}" --accelerator-type "$accelerator" \
      --version "$version" "${spot_flag[@]}"
  fi
fi

if wants copy; then
  archive="/tmp/hyperclip_jax_$name.tgz"
  run tar -C "$root" -czf "$archive" --exclude=.venv --exclude=.jax_cache --exclude=runs --exclude=.git .
  run gcloud compute tpus tpu-vm scp "$archive" "$name:hyperclip_jax.tgz" "${common[@]}" --worker=all
  on_all "mkdir -p hyperclip_jax && tar -xzf hyperclip_jax.tgz -C hyperclip_jax"
fi

if wants install; then
  on_all "cd hyperclip_jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' \
&& .venv/bin/pip install -q --no-deps -e ."
fi

if wants run; then
  printf -v train_cmd '%q ' .venv/bin/python -m hyperclip_jax.train --config "$config" --workdir "$workdir" \
    --config.distributed.mode=on "${overrides[@]}"
  on_all "set -o pipefail; cd hyperclip_jax && ${train_cmd}2>&1 | tee train.log"
fi

if wants logs; then
  run mkdir -p "$log_dir"
  run gcloud compute tpus tpu-vm scp "$name:hyperclip_jax/train.log" "$log_dir/train_worker0.log" \
    "${common[@]}" --worker=0
fi
