"""Input-pipeline throughput on webdataset shards of real JPEGs, which this script writes first.

  .venv/bin/python bench/input_pipeline.py [--workers 1,2] [--images 512] [--source-px 512]

Prints one JSON line per figure: decoded + augmented images per CPU-second at 224 px in one worker (read tar,
decode JPEG, augment, tokenize; one core) with the default reduced-scale JPEG decode, with full decode
(decode(draft=False)) and with decode(draft_upscale=1.5); then images/s of the whole grain pipeline
(make_train_iterator) with N worker processes; the workers per chip that keep a chip fed at --chip-rate
images/s (default: the hyperclip EfficientNet-B0 224 px bf16 train step measured on an H200,
docs/benchmarks.md); eval decoding images/s in this process and with N grain workers; and the mixing
figure: distinct shards per host batch with mix_shards 1 and --mix.
"""
import argparse
import io
import json
import math
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import figures  # noqa: E402 - bench/ is the script's directory, so on sys.path

from hyperclip_jax.data import input_pipeline, pixels, streaming  # noqa: E402
from hyperclip_jax.data.sources import webdataset  # noqa: E402
from hyperclip_jax.data.tokenizers import get_tokenizer  # noqa: E402

TRAIN_PP = "decode|inception_crop(224)|flip_lr|value_range(-1, 1)|tokenize|keep('image', 'text')"


def _photo(rng: np.random.Generator, w: int, h: int) -> bytes:
  """A photo-like JPEG: smooth colour fields plus fine texture (compresses and decodes like a photo)."""
  coarse = rng.integers(0, 255, (6, 8, 3), np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.int16)
  image = np.clip(image + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_shards(root: str, n_images: int, source_px: int, per_shard: int) -> tuple[str, int]:
  rng = np.random.default_rng(0)
  n_shards = math.ceil(n_images / per_shard)
  total_bytes = 0
  for k in range(n_shards):
    with tarfile.open(os.path.join(root, f"{k:05d}.tar"), "w") as tar:
      for j in range(per_shard):
        i = k * per_shard + j
        w = source_px
        h = int(source_px * rng.uniform(0.6, 1.0))  # landscape photos, as in LAION / DataComp
        for ext, data in (("jpg", _photo(rng, w, h)), ("txt", f"a photo of thing number {i}".encode())):
          info = tarfile.TarInfo(f"{i:08d}.{ext}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
          total_bytes += len(data)
  return os.path.join(root, f"{{00000..{n_shards - 1:05d}}}.tar"), total_bytes


def per_worker_rate(pattern: str, pp: str, size: int, max_len: int, seconds: float = 3.0) -> float:
  """Images per CPU-second of one stream in this process (tar read, decode, augment, tokenize): CPU time, so
  that other processes on a shared machine do not lower it."""
  shards = webdataset.expand_pattern(pattern)
  process = streaming.Preprocess(pp, get_tokenizer("bytes"), max_len, size)
  streams = streaming.ShardStreams(pattern, shards, 1, 0, True, 64, 1, "txt", process, 1)
  examples = streams.examples(0, streams.start(0))
  for _ in range(8):  # warm-up
    next(examples)
  start, count = time.process_time(), 0
  while count < 64 or time.process_time() - start < seconds:
    item, _ = next(examples)
    count += not isinstance(item, Exception)
  return count / (time.process_time() - start)


def mixing(pattern: str, per_shard: int, mix: int, batch: int, steps: int) -> tuple[float, int]:
  """(mean, min) distinct shards per host batch over `steps` batches of one host with mix_shards=mix."""
  import ml_collections
  config = ml_collections.ConfigDict(dict(
      name="webdataset", pattern=pattern, pp="decode|resize(8)|value_range(-1, 1)|tokenize|keep('image', 'text')",
      image_size=8, max_len=32, worker_count=0, read_threads=0, streams_per_host=1, shuffle_block=256,
      mix_shards=mix))
  tok = get_tokenizer("bytes")
  it = input_pipeline.make_train_iterator(config, tok, batch, seed=0)
  try:
    counts = [len({int(t.split()[-1]) // per_shard for t in tok.decode(next(it)["text"])}) for _ in range(steps)]
  finally:
    it.close()
  return float(np.mean(counts)), int(min(counts))


def loader_rate(pattern: str, pp: str, size: int, max_len: int, workers: int, batch: int, seconds: float) -> float:
  """Images/s of make_train_iterator with `workers` grain processes (after a warm-up of their start)."""
  import ml_collections
  config = ml_collections.ConfigDict(dict(
      name="webdataset", pattern=pattern, pp=pp, image_size=size, max_len=max_len, worker_count=workers,
      streams_per_host=workers, shuffle_block=64, worker_buffer_size=2))
  it = input_pipeline.make_train_iterator(config, get_tokenizer("bytes"), batch, seed=0)
  try:
    for _ in range(2 * workers):
      next(it)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
      n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - start)
  finally:
    it.close()


def eval_rate(root: str, n_images: int, source_px: int, size: int, workers: int, batch: int) -> float:
  """Images/s of eval decoding (resize_small + central_crop) over a manifest of JPEG files, `workers` grain
  processes (0: in this process), after the first batch (worker start-up)."""
  from hyperclip_jax.data import eval_input
  from hyperclip_jax.evaluators.eval_data import LabelledManifest
  manifest = os.path.join(root, "eval.jsonl")
  if not os.path.exists(manifest):
    rng = np.random.default_rng(1)
    with open(manifest, "w") as f:
      for i in range(n_images):
        with open(os.path.join(root, f"{i}.jpg"), "wb") as img:
          img.write(_photo(rng, source_px, int(source_px * rng.uniform(0.6, 1.0))))
        f.write(json.dumps({"image": f"{i}.jpg", "label": str(i % 10)}) + "\n")
  source = LabelledManifest(manifest, [str(c) for c in range(10)])
  batches = eval_input.sharded_eval_batches(source, size, batch, worker_count=workers)
  n = len(next(batches)[1])
  start = time.perf_counter()
  n = sum(len(labels) for _, labels in batches)
  return n / (time.perf_counter() - start)


def transfer_bytes(pp: str, size: int) -> dict[str, int]:
  """Host-to-device bytes per image: float32 pixels (the value_range on the host, as before images travelled as
  uint8) and what the pipeline ships now (the value_range runs in the train step: data/pixels.py)."""
  _, affine = pixels.split_device_affine(pp)
  now = np.dtype(np.uint8 if affine is not None else np.float32).itemsize
  return {"float32_host_value_range": size * size * 3 * 4, "now": size * size * 3 * now}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=512, help="JPEGs to write")
  parser.add_argument("--source-px", type=int, default=512, help="width of the written JPEGs")
  parser.add_argument("--per-shard", type=int, default=64)
  parser.add_argument("--size", type=int, default=224, help="model input size")
  parser.add_argument("--pp", default=TRAIN_PP)
  parser.add_argument("--workers", default="1,2", help="comma-separated worker counts for the loader figures")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=8.0, help="timing window per loader figure")
  parser.add_argument("--worker-seconds", type=float, default=3.0, help="CPU-time window per per-worker figure")
  parser.add_argument("--mix", type=int, default=16, help="mix_shards for the mixing figure")
  parser.add_argument("--eval-images", type=int, default=512, help="JPEG files for the eval figures")
  parser.add_argument("--chip-rate", type=float, default=7590.0,
                      help="images/s one accelerator chip trains (default: hyperclip B0 224 px bf16, H200)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    pattern, nbytes = write_shards(root, args.images, args.source_px, args.per_shard)
    common = {"pp": args.pp, "image_px": args.size, "source_px": args.source_px,
              "mean_jpeg_kb": round(nbytes / args.images / 1024, 1), "cpus": os.cpu_count()}
    one = per_worker_rate(pattern, args.pp, args.size, 64, args.worker_seconds)
    figures.emit("images_per_sec_per_worker", round(one, 1), "images/s", **common)
    if args.pp.startswith("decode|"):  # the same chain without / with a looser reduced-scale JPEG decode
      for name, decode in (("full_decode", "decode(draft=False)"), ("draft_upscale_1.5", "decode(draft_upscale=1.5)")):
        pp = decode + args.pp[len("decode"):]
        rate = per_worker_rate(pattern, pp, args.size, 64, args.worker_seconds)
        figures.emit(f"images_per_sec_per_worker_{name}", round(rate, 1), "images/s",
                     default_vs_this=round(one / rate, 2), **dict(common, pp=pp))
    for name, nbytes in transfer_bytes(args.pp, args.size).items():
      figures.emit(f"host_to_device_bytes_per_image_{name}", nbytes, "bytes", image_px=args.size)
    for workers in (int(w) for w in args.workers.split(",") if w):
      rate = loader_rate(pattern, args.pp, args.size, 64, workers, args.batch, args.seconds)
      figures.emit("loader_images_per_sec", round(rate, 1), "images/s", workers=workers, **common)
    figures.emit("workers_per_chip", math.ceil(args.chip_rate / one), "workers", chip_images_per_sec=args.chip_rate,
                 per_worker=round(one, 1))
  with tempfile.TemporaryDirectory() as root:
    for workers in [0] + [int(w) for w in args.workers.split(",") if w]:
      rate = eval_rate(root, args.eval_images, args.source_px, args.size, workers, args.batch)
      figures.emit("eval_images_per_sec", round(rate, 1), "images/s", workers=workers,
                   pp=f"resize_small({args.size})|central_crop({args.size})", source_px=args.source_px,
                   cpus=os.cpu_count())
  with tempfile.TemporaryDirectory() as root:  # many small shards of tiny images: mixing only
    per_shard = 64
    pattern, _ = write_shards(root, 64 * per_shard, 16, per_shard)
    for mix in (1, args.mix):
      mean, least = mixing(pattern, per_shard, mix, args.batch, 32)
      figures.emit("distinct_shards_per_host_batch", round(mean, 2), "shards", min=least, mix_shards=mix,
                   host_batch=args.batch, shards=64)


if __name__ == "__main__":
  main()
