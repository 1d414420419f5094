#!/usr/bin/env bash
# GPU figures in one short run (parts capped at GPU_SH_BUDGET=520 s in all; see docs/benchmarks.md). Every part
# prints JSON lines and is time-boxed by `timeout`; a part that fails or runs out of time prints one
# {"part": ..., "status": ...} line and the script goes on:
#   1. train step, demo config (efficientnet_b0 x0.25, 64 px, batch 128, f32): siglip, hyperclip, loader
#   2. train step, efficientnet_b0 full size, 224 px, batch 256, bf16 compute
#   3. exported classifier latency at batch 1 and 32, 224 px: exported vs plain encoder vs timm eager PyTorch
#      channels_last on the same GPU and input (bench/export.py)
#   4. the torch peer's train step vs our siglip step, interleaved (bench/vs_open_clip.py): efficientnet_b0,
#      224 px, batch 128, bf16 on both sides, plus the 2048 matmul peaks and MFU
#   5. conv_impl parity on the GPU: native vs cpu_fast convolutions, forward and gradients (bench/conv_parity.py,
#      efficientnet_b0 --tiny at 64 px: every block kind and stride, a compile that fits the budget)
#   6. per-device memory of the paper-size step at 256 per device from the GPU's buffer assignment
#      (bench/step_memory.py: compiled, never run; docs/scaling.md has the CPU backend's figures)
# Expects the machine's jax/flax/optax/orbax and torch/timm (python3); the wheels missing there (grain,
# ml_collections, array_record, portpicker, tensorboardX) may be carried in .whl/. No network.
# Knobs: GPU_SH_QUICK=1 shrinks every part to a tiny CPU smoke check; GPU_SH_SKIP_TRAIN=1 skips parts 1-2 (their
# GPU figures are in docs/benchmarks.md already); GPU_SH_BUDGET caps the seconds of all parts together;
# GPU_SH_PYTHON (python3) runs the JAX side, GPU_SH_PEER_PYTHON (python3) the torch side. On the dev machine:
#   GPU_SH_QUICK=1 GPU_SH_PYTHON=.venv/bin/python GPU_SH_PEER_PYTHON=.venv-peer/bin/python bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY="${GPU_SH_PYTHON:-python3}"
PEER_PY="${GPU_SH_PEER_PYTHON:-python3}"
QUICK="${GPU_SH_QUICK:-0}"
if compgen -G ".whl/*.whl" > /dev/null && ! "$PY" -c "import grain, ml_collections" 2> /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"

# The whole script stops starting work after GPU_SH_BUDGET seconds (default 520): each part's limit is cut to
# what is left, and a part with under 10 s left is skipped with a JSON line.
BUDGET="${GPU_SH_BUDGET:-520}"

# part NAME SECONDS CMD...: runs CMD with a time limit; a failure is one JSON line, never the end of the script.
part() {
  local name="$1" secs="$2"
  shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 10 ]; then
    echo "{\"part\": \"$name\", \"status\": \"skipped: the script's budget of ${BUDGET}s is spent\"}"
    return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "# part: $name (limit ${secs}s, ${left}s left) $(date -u +%H:%M:%S)"
  local t0=$SECONDS
  timeout -k 5 "$secs" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    local why="failed"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="timed out"
    echo "{\"part\": \"$name\", \"status\": \"$why\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}"
  fi
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null || true
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
"$PEER_PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  || echo '{"part": "peer_python", "status": "torch/timm not importable: parts 4-5 run without the peer"}'

if [ "$QUICK" = 1 ]; then  # a CPU smoke check of every part: generous limits, a shared 2-core machine is slow
  BUDGET="${GPU_SH_BUDGET:-3000}"
  if [ "${GPU_SH_SKIP_TRAIN:-0}" != 1 ]; then
    part train_demo 900 "$PY" bench/train_step.py --config configs/demo.py:tiny=true --steps 1
  fi
  part conv_parity 600 "$PY" bench/conv_parity.py --tiny --image-size 32 --batch 4
  part step_memory 600 "$PY" bench/step_memory.py --config configs/demo.py:tiny=true --per-device 8
  part export_vs_timm 600 "$PY" bench/export.py --config configs/demo.py:tiny=true,encoder=tinynet_e --reps 5 \
    --config.model.image.width_mult=1.0 --config.model.image.depth_mult=1.0 --peer-python "$PEER_PY"
  part peer_train_step 900 "$PY" bench/vs_open_clip.py --quick --sweep "" --variants siglip --peer-impl plain \
    --peer-python "$PEER_PY"
  exit 0
fi

if [ "${GPU_SH_SKIP_TRAIN:-0}" != 1 ]; then
  echo "# demo config (efficientnet_b0 x0.25, 64 px, batch 128)"
  part train_demo 70 "$PY" bench/train_step.py --steps 30 --config.data.read_threads=4
  echo "# efficientnet_b0 full size, 224 px, batch 256, bf16 compute"
  part train_b0_224_bf16 95 "$PY" bench/train_step.py --steps 20 --config.data.image_size=224 \
    --config.model.image.width_mult=1.0 --config.model.image.depth_mult=1.0 --config.batch_size=256 \
    --config.model.dtype=bfloat16 --config.data.read_threads=8
fi
# Parts 3-4 share the GPU with a torch process: JAX must not take 75% of its memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
echo "# exported classifier vs plain encoder vs timm channels_last (efficientnet_b0 full, 224 px, fresh init)"
part export_vs_timm 170 "$PY" bench/export.py --reps 50 --config.model.image.width_mult=1.0 \
  --config.model.image.depth_mult=1.0 --config.data.image_size=224 --peer-python "$PEER_PY" --peer-device cuda
echo "# train step vs the torch peer (efficientnet_b0, 224 px, batch 128, bf16, demo text tower)"
part peer_train_step 200 "$PY" bench/vs_open_clip.py --encoders efficientnet_b0 --sizes 224 --batch 128 \
  --variants siglip --dtype bfloat16 --rounds 5 --steps 5 --sweep "" --peer-impl plain --peer-python "$PEER_PY" \
  --peer-device cuda
echo "# per-device memory of the paper-size step (efficientnet_b0, 224 px, bf16, paper text tower), compile only"
part step_memory 90 "$PY" bench/step_memory.py --per-device 256
# Last: XLA's GPU compile of the cpu_fast form (9 shifted slices per depthwise layer, forward and backward) is the
# slowest part: the full B0 did not compile in 140 s at 224 px nor in 130 s at 64 px on an H200, so this runs
# the tiny tower (width 0.1, depth 0.2: every block kind and stride, fewer repeats).
echo "# conv_impl parity: native vs cpu_fast on this GPU (efficientnet_b0 tiny, 64 px, batch 8, f32 at 'highest')"
part conv_parity 130 "$PY" bench/conv_parity.py --tiny --encoder efficientnet_b0 --image-size 64 --batch 8 \
  --precisions highest
echo "# done $(date -u +%H:%M:%S)"
