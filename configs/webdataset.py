"""HyperCLIP on your own image-text data: webdataset shards, a manifest, or a TFDS dataset.

  hyperclip-train --config 'configs/webdataset.py:pattern=/data/shards/{00000000..00012556}.tar' --workdir runs/x
  hyperclip-train --config configs/webdataset.py:source=manifest,manifest=/data/captions.jsonl --workdir runs/y
  hyperclip-train --config configs/webdataset.py:source=tfds,tfds_name=coco_captions --workdir runs/z

The model, optimizer and schedule are the demo config's (configs/demo.py, same arguments variant, steps,
encoder, tiny); this file swaps the data. Arguments: source (webdataset | manifest | tfds), pattern, manifest,
tfds_name, tokenizer (a spec, e.g. "sentencepiece(model='c4_en.model')"), image_size, max_len, workers
(grain worker processes per host, or auto). Everything else under config.data is a `--config.data.KEY=VALUE`
override; see hyperclip_jax/data/input_pipeline.py for the keys and docs/data.md for worked examples.
"""
import os

import ml_collections

from hyperclip_jax.config import load_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, source="webdataset", pattern="", manifest="", tfds_name="", tokenizer="bytes",
                  image_size=0, max_len=0, workers="0", variant="hyperclip", steps=900, encoder="efficientnet_b0",
                  tiny=False)
  demo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
  c = load_config(f"{demo}:variant={arg.variant},steps={arg.steps},encoder={arg.encoder},tiny={arg.tiny}")
  image_size = arg.image_size or c.data.image_size
  c.data = ml_collections.ConfigDict(dict(
      name=arg.source,
      pattern=arg.pattern,            # webdataset: brace pattern of .tar shards, any etils.epath filesystem
      manifest=arg.manifest,          # manifest: .jsonl / .csv of {"image": relative path, "caption": ...}
      caption_key="",                 # '' = 'txt' (webdataset) / 'caption' (manifest); or 'json:FIELD'
      image_key="image",              # manifest column of the image path
      pp="",                          # '' = decode|resize(image_size)|value_range(-1, 1)|tokenize|keep(...)
      image_size=image_size,
      max_len=arg.max_len or c.data.max_len,
      tokenizer=arg.tokenizer,
      shuffle=True,
      shuffle_block=256,              # webdataset: raw samples permuted together (held in memory) per stream
      mix_shards=1,                   # webdataset: shards a stream interleaves; 16-64 on many shards (mixing)
      streams_per_host=0,             # webdataset: 0 = max(worker_count, 1); fixes the sample order
      worker_count=arg.workers,       # an integer, or 'auto' (the cores this process may use, less 2)
      worker_buffer_size=2,
      read_threads=1,
      prefetch_batches=2,
      tfds_name=arg.tfds_name,
      tfds_split="train",
      tfds_data_dir="",
      tfds_image_key="image",
      tfds_text_key="",               # '' = the dataset's default (coco_captions: captions/text)
      tfds_label_key="",              # classification datasets: captions from class names
  ))
  if arg.source == "manifest":
    c.data.caption_key = "caption"
  # Evaluators (docs/evaluation.md; keys in hyperclip_jax/evaluators/__init__.py): the demo zero-shot tasks
  # stay; add your own, e.g. on prepared TFDS splits (`tfds build cifar100`) or a labelled manifest:
  # c.evals.zeroshot_cifar100 = dict(type="zeroshot", data=dict(name="tfds", dataset="cifar100", split="test"),
  #                                  classes="cifar100", templates="cifar", pp="resize(32)|value_range(-1, 1)",
  #                                  n_eval=0, batch_size=256)      # -> zeroshot/cifar100/top1, .../top5
  # c.evals.zeroshot_mine = dict(type="zeroshot", data=dict(name="manifest", manifest="/data/val.jsonl"),
  #                              classes="/data/classes.txt")      # rows {"image": "a.jpg", "label": "cat"}
  # c.evals.retrieval_coco = dict(type="retrieval", num_pairs=5000,
  #                               data=dict(name="tfds", dataset="coco_captions", split="val"))
  # c.evals.linear_probe_cifar10 = dict(type="linear_probe", train_data=dict(split="train"), n_train=10000,
  #                                     data=dict(name="tfds", dataset="cifar10", split="test"), n_eval=10000)
  # c.eval_every_steps = 1000
  return c
