#!/usr/bin/env bash
# GPU figures in one short run (see docs/benchmarks.md): the train-step benchmark on the demo config and on
# full-size EfficientNet-B0 at 224 px. Expects the jax/flax/optax/orbax of the machine; missing wheels
# (grain, ml_collections, array_record, portpicker, tensorboardX) may be carried in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
echo "# demo config (efficientnet_b0 x0.25, 64 px, batch 128)"
python3 bench/train_step.py --steps 30 --config.data.read_threads=4
echo "# efficientnet_b0 full size, 224 px, batch 256, bf16 compute"
python3 bench/train_step.py --steps 20 --config.data.image_size=224 --config.model.image.width_mult=1.0 \
  --config.model.image.depth_mult=1.0 --config.batch_size=256 --config.model.dtype=bfloat16 \
  --config.data.read_threads=8
