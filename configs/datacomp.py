"""The paper's runs: HyperCLIP and its baselines on DataComp, one config per encoder x variant x scale.

  hyperclip-train --config configs/datacomp.py:encoder=efficientnet_b0,variant=hyperclip,scale=medium \
      --workdir /shared/runs/b0_hyperclip_medium --config.data.pattern='/data/datacomp_medium/{00000000..00012895}.tar'

Arguments (after the colon, comma separated):
  encoder   efficientnet_b0 (the paper's main one) | efficientnet_b1 | efficientnet_b2 | tinynet (TinyNet-A)
            | mobilenetv3 (MobileNetV3-Large) | or any image encoder name
  variant   hyperclip | siglip (the baseline: same encoder, no hypernet) | token (prompt-independent control)
            | linear / conv (capacity controls: a generated rank-hyper_rank update of the final projection /
            the last 1x1 conv; models/lowrank.py)
  scale     small | medium | large: DataComp's samples seen (12.8M / 128M / 1.28B) and batch sizes (4096 /
            4096 / 8192); every sample of the pool is seen once
  shards    webdataset shard pattern (also --config.data.pattern=...)
  vocab     CLIP BPE merges file for the text tower's tokenizer ('' = the one shipped with the package)

Settings from PAPER.md where the paper states them (SigLIP loss, text tower 768 wide / 8 heads / MLP 2560,
encoder resolutions), DataComp/OpenCLIP's recipe where it does not (AdamW lr 5e-4, wd 0.2, cosine, 500
warmup steps). Evaluation: zero-shot ImageNet-1k and CIFAR-100. docs/reproduce.md has the expected cost.
"""
import os

import ml_collections

from hyperclip_jax.config import load_config, parse_arg

ENCODERS = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 260, "tinynet": 192,
            "mobilenetv3": 224}
ALIASES = {"tinynet": "tinynet_a", "mobilenetv3": "mobilenetv3_large_100"}
# DataComp (Gadre et al. 2023), Table: pool size = samples seen, and the batch size of each scale.
SCALES = {"small": (12_800_000, 4096), "medium": (128_000_000, 4096), "large": (1_280_000_000, 8192)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, encoder="efficientnet_b0", variant="hyperclip", scale="medium", shards="",
                  vocab="")
  if arg.scale not in SCALES:
    raise ValueError(f"configs/datacomp.py: scale={arg.scale!r} is unknown; known: {', '.join(SCALES)}")
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))  # every key, defaults
  samples, batch = SCALES[arg.scale]
  c.batch_size = batch
  c.total_steps = samples // batch

  c.model.variant = arg.variant
  c.model.embed_dim = 768
  c.model.dtype = "bfloat16"  # bf16 compute on TPU/GPU; params and optimizer state stay f32
  c.model.conv_impl = "auto"  # native library convs on TPU/GPU, shift-add/dot forms on CPU (same math)
  c.model.image.update(dict(name=ALIASES.get(arg.encoder, arg.encoder), width_mult=1.0, depth_mult=1.0,
                            norm_mode="residual", drop_path_rate=0.0,
                            bn_stats="global"))
  # BatchNorm statistics over the batch, not per set: per-set statistics were worst in docs/getting_started.md's
  # BatchNorm ablation (and let a set plus its group's statistics identify the group), and every arm of the study
  # in docs/results.md trained with "global". GradCache (accum_steps > 1) needs "group": the config check says so.
  c.model.text = ml_collections.ConfigDict(dict(preset="paper"))  # 12 x 768, 8 heads, MLP 2560, causal
  c.model.hyper.update(dict(set_size=32, width=256, depth=2, heads=4, bottleneck=64))

  c.loss.name = "sigmoid"
  c.loss.chunked = True  # the [B, B] logits never exist on one device
  # Every image against every caption of the batch: docs/results.md's loss-scope ablation (hyperclip, width 0.1,
  # 3 seeds) found batch over group by +20.2 [+12.5, +28.0] points of zero-shot top-1.
  c.loss.scope = "batch"
  c.accum_steps = 1  # on small memory: raise it with bn_stats='group' (batch a multiple of devices x k x set_size)

  c.optim.update(dict(name="adamw", lr=5e-4, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, clip_norm=1.0))
  c.optim.schedule.update(dict(name="cosine", warmup_steps=500, end_fraction=0.0))

  c.data = ml_collections.ConfigDict(dict(
      name="webdataset", pattern=arg.shards, caption_key="txt", image_size=ENCODERS.get(arg.encoder, 224),
      max_len=77, tokenizer=f"clip_bpe(vocab={arg.vocab!r})" if arg.vocab else "clip_bpe()", pp="",
      shuffle=True, shuffle_block=256,
      mix_shards=16,  # every host batch draws from 16 shards; needs hosts x workers x 16 <= shards
      streams_per_host=0, worker_count="auto", read_threads=2, prefetch_batches=2))  # auto: docs/data.md

  c.mesh.update(dict(data=-1, fsdp=1))  # pure data parallel; the towers fit one chip. fsdp>1 shards params
  # Presets: TFDS imagenet2012 validation and cifar100 test (prepared under $TFDS_DATA_DIR) with the shipped class
  # lists and templates; more evaluators (retrieval, linear probe, any TFDS split or manifest): docs/evaluation.md.
  c.evals = ml_collections.ConfigDict(dict(
      zeroshot=ml_collections.ConfigDict(dict(tasks="imagenet,cifar100", n_eval=50_000, batch_size=1024))))
  c.eval_every_steps = max(c.total_steps // 10, 1)
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.checkpoint_every_secs = 1800.0
  return c
