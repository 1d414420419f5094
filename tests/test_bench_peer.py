"""bench/vs_open_clip.py: our side is built the same size as the PyTorch peer it specifies (no torch here)."""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import figures  # noqa: E402
import peer_client  # noqa: E402
import vs_open_clip  # noqa: E402

from hyperclip_jax.models import two_towers  # noqa: E402

# timm 1.0.29: sum of parameters of create_model(name, num_classes=0), and its pooled output width.
TIMM_ENCODER = {"tinynet_e": (761_972, 1280)}


def _peer_text_params(t: dict, embed_dim: int) -> int:
  """Parameters of bench/peer_torch.py's TextTower: nn.Embedding, positions, TransformerEncoderLayer x depth
  (in_proj 3W x W + 3W, out_proj, linear1/linear2, two LayerNorms), final LayerNorm, bias-free projection."""
  w, m = t["width"], t["mlp_dim"]
  block = (3 * w * w + 3 * w) + (w * w + w) + (w * m + m) + (m * w + w) + 4 * w
  return t["vocab_size"] * w + t["max_len"] * w + t["depth"] * block + 2 * w + w * embed_dim


def test_our_towers_have_the_peers_parameter_counts():
  config = vs_open_clip.make_config("tinynet_e", 32, 128, "siglip")
  shapes = jax.eval_shape(two_towers.build_model(config).init, jax.random.PRNGKey(0))["params"]
  ours = vs_open_clip.count_params(shapes)
  spec = vs_open_clip.peer_spec(config)
  trunk, width = TIMM_ENCODER["tinynet_e"]
  assert ours["img"] == trunk + width * spec["embed_dim"] == 925_812
  assert ours["txt"] == _peer_text_params(spec["text"], spec["embed_dim"]) == 293_248
  assert ours["total"] == ours["img"] + ours["txt"] + 2  # + t' and b
  assert spec["text"]["max_len"] == config.data.max_len == 32 and spec["batch"] == 128


def test_paper_text_tower_spec_is_the_papers_size():
  config = vs_open_clip.make_config("tinynet_e", 32, 128, "hyperclip", text="paper")
  t = vs_open_clip.peer_spec(config)["text"]
  assert (t["width"], t["depth"], t["heads"], t["mlp_dim"], t["max_len"], t["causal"]) == (768, 12, 8, 2560, 77, True)
  assert config.model.hyper.width == 256 and config.model.hyper.set_size == 16


def test_shared_batch_recipe_pads_after_each_caption():
  ids = peer_client.tokens(0, 64, 32, 59, 0)
  assert ids.shape == (64, 32) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, peer_client.tokens(0, 64, 32, 59, 0))  # both sides regenerate it
  lengths = (ids != 0).sum(1)
  assert lengths.min() >= 3 and lengths.max() <= 31
  for row, n in zip(ids, lengths):  # ids first, then only padding
    assert (row[:n] >= 3).all() and (row[:n] < 59).all() and (row[n:] == 0).all()
  x = peer_client.images(0, 2, 8)
  assert x.shape == (2, 8, 8, 3) and x.dtype == np.float32 and -1.0 <= x.min() < x.max() <= 1.0


def test_figure_line_has_the_bench_fields(capsys):
  row = figures.emit("train_images_per_sec", 12.5, "images/s", side="ours")
  printed = json.loads(capsys.readouterr().out)
  assert printed == row
  assert {"name", "value", "unit", "backend", "device", "command"} <= set(printed)
  assert printed["value"] == 12.5 and printed["backend"] == "cpu" and printed["command"].startswith("python bench/")


def test_flop_count_is_read_from_xla_and_nan_where_the_backend_gives_none():
  lowered = jax.jit(lambda a, b: a @ b).lower(np.ones((8, 16), np.float32), np.ones((16, 4), np.float32))
  assert vs_open_clip._flops(lowered) == 2 * 8 * 16 * 4

  class NoCost:  # jax 0.11's GPU backend: Lowered.cost_analysis() is None
    def cost_analysis(self):
      return None
  assert np.isnan(vs_open_clip._flops(NoCost()))


def test_profile_summary_sums_xla_ops_by_kind_and_skips_runtime_events():
  import profile_step  # bench/profile_step.py
  events = [
      {"ph": "X", "name": "multiply_add_fusion.7", "dur": 30}, {"ph": "X", "name": "multiply_add_fusion.12", "dur": 10},
      {"ph": "X", "name": "dot.3", "dur": 5}, {"ph": "X", "name": "dot.3", "dur": 5},
      {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 1000}, {"ph": "X", "name": "$api.py:1 jit", "dur": 1000},
      {"ph": "X", "name": "SlinkyThreadPool::Await", "dur": 1000}, {"ph": "i", "name": "dot.3", "dur": 99},
  ]
  per_op, per_kind, calls = profile_step.summarize(events)
  assert per_kind == {"multiply_add_fusion": 40, "dot": 10}
  assert per_op["dot.3"] == 10 and calls["dot.3"] == 2 and calls["multiply_add_fusion.7"] == 1
  assert profile_step.op_kind("copy_bitcast_fusion.87") == "copy_bitcast_fusion"


def test_peer_comparison_trains_the_papers_sigmoid_loss_whatever_the_demo_trains(monkeypatch):
  from hyperclip_jax import config as config_lib
  load = config_lib.load_config

  def softmax_demo(path, *args, **kwargs):
    config = load(path, *args, **kwargs)
    config.loss.name = "softmax"
    return config

  monkeypatch.setattr(config_lib, "load_config", softmax_demo)
  assert config_lib.load_config(vs_open_clip.DEMO_CONFIG).loss.name == "softmax"
  assert vs_open_clip.make_config("tinynet_e", 32, 128, "hyperclip").loss.name == "sigmoid"
