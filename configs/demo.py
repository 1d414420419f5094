"""The embedded default: HyperCLIP on procedural scenes, on one laptop CPU, no download.

  hyperclip-train --config configs/demo.py --workdir runs/demo
  hyperclip-train --config configs/demo.py:variant=siglip --workdir runs/demo_siglip
  hyperclip-train --config configs/demo.py:variant=token,steps=200 --workdir runs/x --config.batch_size=64

Arguments (after the colon, comma separated): variant (siglip | hyperclip | token | linear | conv), steps,
encoder (any image encoder name; the width/depth multipliers below keep it tiny), tiny (true: a seconds-long
config for tests and smoke runs; it evaluates three of the seven demo tasks).
"""
import math

import ml_collections

from hyperclip_jax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="hyperclip", steps=900, encoder="efficientnet_b0", tiny=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps
  c.batch_size = 128  # global; forms batch_size / set_size groups, each with its own generated norm params

  c.model = ml_collections.ConfigDict()
  c.model.variant = arg.variant
  c.model.embed_dim = 128
  c.model.dtype = "float32"  # compute dtype (params stay f32); bf16 is slower than f32 on CPUs without AMX
  c.model.remat = False  # recompute each block's activations in the backward pass (less memory, ~1.3x compute)
  c.model.conv_impl = "auto"  # conv lowering (same math): auto = cpu_fast on CPU, native on GPU/TPU
  c.model.t_init = math.log(10.0)  # SigLIP's t' = log 10
  c.model.b_init = -10.0  # SigLIP's b
  c.model.image = ml_collections.ConfigDict(dict(
      name=arg.encoder, width_mult=0.25, depth_mult=0.34, norm_mode="residual", drop_path_rate=0.0,
      # BatchNorm training statistics: global (over the whole batch) | group (per set_size images, the code's
      # default). The demo uses global: same model, and at this size it decides what zero-shot learns
      # (docs/getting_started.md: shape 0.176 -> 0.648, colour 0.736 -> 1.000 at 900 steps).
      bn_stats="global"))
  c.model.text = ml_collections.ConfigDict(dict(
      width=128, depth=2, heads=4, mlp_dim=256, causal=True, pool="eot"))
  c.model.hyper = ml_collections.ConfigDict(dict(set_size=16, width=128, depth=2, heads=4, bottleneck=64))
  c.model.hyper_rank = 32  # rank of the generated weight update of the linear / conv variants (docs/models.md)

  # The paper's SigLIP sigmoid loss (with every scene in a contrast pair: data.contrast_prob below). CLIP's
  # softmax (`--config.loss.name=softmax`) learns texture better on this data (docs/getting_started.md).
  # chunked: the sigmoid's ring form.
  # scope: which pairs are scored, "batch" (all B x B) | "group" (each image against its own set's captions only)
  c.loss = ml_collections.ConfigDict(dict(name="sigmoid", chunked=False, scope="batch"))
  c.accum_steps = 1  # > 1: GradCache micro-batches, exact for the contrastive loss (hyperclip_jax/accumulate.py)

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=2e-3, b1=0.9, b2=0.98, eps=1e-8, weight_decay=1e-4, clip_norm=1.0,
      schedule=ml_collections.ConfigDict(dict(name="cosine", warmup_steps=100, end_fraction=0.0)),
      wd_mults=[(".*/kernel$", 1.0), (".*", 0.0)],
      lr_mults=[(".*", 1.0)],
      frozen=[]))

  c.data = ml_collections.ConfigDict(dict(
      name="demo", image_size=64, max_len=32, tokenizer="demo_words", two_objects_prob=0.0,
      partial_caption_prob=0.2,
      # contrast pairs: scenes come in pairs that differ in one attribute, so a batch holds negatives only shape
      # or texture tell apart; with the sigmoid loss, all of them (docs/getting_started.md: texture 1.14x chance
      # at 0.5, 1.29x at 1.0)
      contrast_prob=1.0, contrast_group=2,
      # what a contrast-set variant changes (a name given twice is changed twice as often)
      contrast_attributes=("shape", "shape", "texture", "texture", "colour", "size", "position"),
      object_scale=1.0,  # object radii x this (the eval tasks render with the same scale)
      solid_named_prob=0.4,  # how often a caption that names texture says "solid" (the unmarked case)
      # share of task-shaped conditioning sets (one attribute, distinct values, class prompts; sigmoid loss
      # only; docs/data.md)
      task_sets=0.0,
      read_threads=1,
      worker_count=0))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, param_rules=[(".*", "fsdp")]))
  c.distributed = ml_collections.ConfigDict(dict(  # see hyperclip_jax/distributed.py
      mode="auto", coordinator_address="", num_processes=0, process_id=-1,
      allow_fewer_devices=False))  # true: start although this process sees fewer accelerators than assigned

  c.evals = ml_collections.ConfigDict(dict(
      # condition: the set the hypernet reads at test time, "classes" (each task's prompts) or "train_captions"
      zeroshot=ml_collections.ConfigDict(dict(tasks="demo", n_eval=512, batch_size=128, condition="classes"))))
  c.eval_every_steps = 450

  c.log_every_steps = 25
  c.checkpoint_every_steps = 500
  c.checkpoint_every_secs = 30.0
  c.keep_checkpoints = 3
  c.resume = "auto"  # auto: newest usable checkpoint, error if all are damaged; fresh: start at step 0
  c.skip_nonfinite_steps = False  # true: a NaN/Inf step is skipped and counted instead of stopping the run
  # jax.profiler trace of steps first_step+1 .. first_step+num_steps into WORKDIR/profile (num_steps 0: off)
  c.profile = ml_collections.ConfigDict(dict(first_step=10, num_steps=0))

  if arg.tiny:  # seconds per step on 2 cores: tests and smoke runs
    c.total_steps = arg.steps if arg.steps != 900 else 6
    c.batch_size = 32
    c.model.embed_dim = 32
    c.model.image.width_mult = 0.1
    c.model.image.bn_stats = "group"  # the per-group path (exact GradCache, per-group parity tests); the study's
    # tiny mode runs global as its ablation
    c.model.image.depth_mult = 0.2
    c.model.text.update(dict(width=32, depth=1, heads=2, mlp_dim=64))
    c.model.hyper.update(dict(set_size=4, width=32, depth=1, heads=2, bottleneck=16))
    c.data.image_size = 32
    c.data.max_len = 24
    c.data.contrast_prob = 0.0  # the plain stream (tests); tests/data/test_demo.py covers the pairs
    c.optim.schedule.warmup_steps = 2
    # three of the seven tasks (each task is its own set of eval programs to compile)
    c.evals.zeroshot.update(dict(tasks="demo:colour,demo:shape,demo:position", n_eval=32, batch_size=32))
    c.eval_every_steps = 0
    c.log_every_steps = 2
    c.checkpoint_every_steps = 3
  return c
