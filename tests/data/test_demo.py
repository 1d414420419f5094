"""Procedural demo source and zero-shot tasks: determinism, caption/metadata agreement, held-out pairs."""
import numpy as np
import pytest

from hyperclip_jax.data import cli
from hyperclip_jax.data.sources import demo
from hyperclip_jax.data.sources.demo import DemoSource, demo_tasks


def test_sample_is_a_pure_function_of_seed_and_index():
  a, b = DemoSource(64, seed=3), DemoSource(64, seed=3)
  later = [a.sample(i) for i in (100, 7, 41)]  # out of order, as a resumed stream reads
  for i, (image, scene) in zip((100, 7, 41), later):
    image_b, scene_b = b.sample(i)
    np.testing.assert_array_equal(image, image_b)
    assert scene == scene_b
  assert a[7]["caption"] == later[1][1].caption


def test_different_seeds_and_indices_differ():
  a, b = DemoSource(64, seed=0), DemoSource(64, seed=1)
  assert sum(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(20)) == 0
  assert sum(a[i]["caption"] == b[i]["caption"] for i in range(20)) < 3
  assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_images_have_requested_size_and_dtype():
  for size in (32, 64):
    image = DemoSource(size)[0]["image"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
  with pytest.raises(ValueError, match="image_size"):
    DemoSource(8)
  with pytest.raises(ValueError, match="two_objects_prob"):
    DemoSource(64, two_objects_prob=1.5)


def test_captions_name_every_mentioned_attribute():
  source = DemoSource(64, seed=0)
  n_full = n_two = 0
  for i in range(600):
    _, scene = source.sample(i)
    n_two += len(scene.objects) == 2
    for obj in scene.objects:
      n_full += len(obj.mentioned) == len(demo.ATTRIBUTES)
      for attribute in obj.mentioned:
        if attribute == "texture" and obj.texture == "solid":
          continue  # solid is the unmarked texture: naming it is optional
        assert demo.caption_mentions(scene.caption, attribute, getattr(obj, attribute)), (scene, attribute)
  assert 120 < n_two < 240  # two_objects_prob=0.3 of 600
  assert n_full > 0.7 * (600 + n_two)


def test_objects_are_drawn_in_their_stated_quadrant():
  source = DemoSource(64, seed=0, two_objects_prob=0.0)
  quadrant = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
  checked = 0
  for i in range(200):
    image, scene = source.sample(i)
    obj = scene.objects[0]
    if obj.position not in quadrant or obj.size != "large" or obj.texture != "solid":
      continue
    deviation = np.abs(image.astype(np.float32) - np.median(image, axis=(0, 1))).sum(-1)  # [H, W]
    blocks = deviation.reshape(2, 32, 2, 32).mean(axis=(1, 3))  # [2, 2] mean per quadrant
    assert np.unravel_index(blocks.argmax(), blocks.shape) == quadrant[obj.position], scene
    checked += 1
  assert checked >= 10


def test_contrast_sets_differ_from_their_first_scene_in_one_named_attribute():
  source = DemoSource(32, seed=0, two_objects_prob=0.0, contrast_prob=1.0, contrast_group=4)
  changed = {a: 0 for a in demo.ATTRIBUTES}
  for i in range(300):
    if i % 4 == 0:
      continue
    (_, base), (_, variant) = source.sample(i - i % 4), source.sample(i)
    a, b = base.objects[0], variant.objects[0]
    diff = [attr for attr in demo.ATTRIBUTES if getattr(a, attr) != getattr(b, attr)]
    assert len(diff) == 1, (base, variant)
    changed[diff[0]] += 1
    assert diff[0] in b.mentioned and (b.colour, b.shape) in demo.SEEN_PAIRS
    if not (diff[0] == "texture" and b.texture == "solid"):
      assert demo.caption_mentions(variant.caption, diff[0], getattr(b, diff[0])), variant
  assert min(changed.values()) > 0 and changed["shape"] > changed["size"]  # shape/texture weighted x2
  with pytest.raises(ValueError, match="contrast_group"):
    DemoSource(32, contrast_group=1)


def test_contrast_attributes_choose_what_the_variants_change():
  source = DemoSource(32, seed=1, two_objects_prob=0.0, contrast_prob=1.0, contrast_attributes=("texture",))
  for i in range(1, 60, 2):
    (_, base), (_, variant) = source.sample(i - 1), source.sample(i)
    a, b = base.objects[0], variant.objects[0]
    assert [x for x in demo.ATTRIBUTES if getattr(a, x) != getattr(b, x)] == ["texture"], (base, variant)
    assert variant.caption != base.caption
  for bad in ((), ("texture", "weight"), "texture"):
    with pytest.raises(ValueError, match="contrast_attributes"):
      DemoSource(32, contrast_attributes=bad)


def test_solid_named_prob_sets_how_often_solid_is_said():
  """A caption that names a solid object's texture says "solid" with probability solid_named_prob; other textures
  are always said when texture is mentioned, and the images do not depend on the knob."""
  said = {}
  for p in (0.0, 0.4, 1.0):
    source = DemoSource(32, seed=3, two_objects_prob=0.0, partial_caption_prob=0.0, solid_named_prob=p)
    hits = n = 0
    for i in range(300):
      image, scene = source.sample(i)
      obj = scene.objects[0]
      if obj.texture == "solid":
        n += 1
        hits += demo.caption_mentions(scene.caption, "texture", "solid")
      else:
        assert demo.caption_mentions(scene.caption, "texture", obj.texture), scene.caption
      if p == 0.4 and i < 20:
        np.testing.assert_array_equal(image, DemoSource(32, seed=3, two_objects_prob=0.0, partial_caption_prob=0.0,
                                                        solid_named_prob=1.0).sample(i)[0])
    said[p] = hits / n
  assert said[0.0] == 0.0 and said[1.0] == 1.0 and 0.25 < said[0.4] < 0.55, said
  with pytest.raises(ValueError, match="solid_named_prob"):
    DemoSource(32, solid_named_prob=1.5)


def test_contrast_sets_off_leave_the_stream_unchanged():
  plain, off = DemoSource(32, seed=5), DemoSource(32, seed=5, contrast_prob=0.0)
  on = DemoSource(32, seed=5, contrast_prob=0.5)
  for i in range(12):
    np.testing.assert_array_equal(plain[i]["image"], off[i]["image"])
  assert plain[0]["caption"] == on[0]["caption"]  # even positions are never partners
  assert sum(plain[i]["caption"] != on[i]["caption"] for i in range(1, 40, 2)) >= 5
  with pytest.raises(ValueError, match="contrast_prob"):
    DemoSource(32, contrast_prob=-0.1)


def test_heldout_pairs_never_occur_in_training_stream():
  heldout = set(demo.HELDOUT_PAIRS)
  assert len(heldout) == 7 and not heldout & set(demo.SEEN_PAIRS)
  assert len(demo.SEEN_PAIRS) + len(heldout) == len(demo.COLOURS) * len(demo.SHAPES)
  source = DemoSource(32, seed=0)
  seen = set()
  for i in range(5000):
    _, scene = source.sample(i)
    seen |= {(o.colour, o.shape) for o in scene.objects}
  assert not seen & heldout
  assert seen == set(demo.SEEN_PAIRS)


def test_heldout_task_shows_only_and_all_heldout_pairs():
  task = demo_tasks(32, n_eval=28)["heldout_colour_shape"]
  pairs = []
  for i in range(task.n_eval):
    _, scene, label = task.sample_fn.sample(i)
    (obj,) = scene.objects
    assert f"{obj.colour} {obj.shape}" == task.class_names[label]
    pairs.append((obj.colour, obj.shape))
  assert set(pairs) == set(demo.HELDOUT_PAIRS)


def test_task_labels_are_balanced_and_match_the_drawn_object():
  tasks = demo_tasks(32, n_eval=24)
  sizes = {name: len(t.class_names) for name, t in tasks.items()}
  assert sizes == {"colour": 8, "shape": 6, "colour_shape": 41, "position": 5, "size_position": 10, "texture": 3,
                   "heldout_colour_shape": 7}
  assert len(set(sizes.values())) == len(sizes)  # the hypernetwork sees set sizes that all differ
  for name, task in tasks.items():
    assert len(task.templates) >= 3 and all(t.count("{}") == 1 for t in task.templates)
    assert len(task.prompts()) == len(task.class_names)
    for i in range(6):
      image, label = task.sample_fn(i)
      assert image.shape == (32, 32, 3) and label == i % len(task.class_names)
      _, scene, _ = task.sample_fn.sample(i)
      (obj,) = scene.objects
      if "colour_shape" in name:
        value = f"{obj.colour} {obj.shape}"
      elif name == "size_position":
        value = f"{obj.size} shape {demo.SYNONYMS['position'][obj.position][0]}"
      else:
        value = getattr(obj, name)
      assert value == task.class_names[label]


def test_eval_tasks_are_deterministic_and_seeded():
  a, b = demo_tasks(32, 8, seed=5)["colour"], demo_tasks(32, 8, seed=5)["colour"]
  c = demo_tasks(32, 8, seed=6)["colour"]
  np.testing.assert_array_equal(a.sample_fn(3)[0], b.sample_fn(3)[0])
  assert not np.array_equal(a.sample_fn(3)[0], c.sample_fn(3)[0])


def test_cli_writes_pngs_and_captions(tmp_path):
  cli.main(["demo", "--out", str(tmp_path / "train"), "--n", "3", "--size", "32"])
  lines = (tmp_path / "train" / "captions.txt").read_text().splitlines()
  assert len(lines) == 3 and lines[0].split("\t")[1] == DemoSource(32)[0]["caption"]
  assert sorted(p.name for p in (tmp_path / "train").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
  cli.main(["demo", "--out", str(tmp_path / "task"), "--n", "2", "--size", "32", "--task", "size_position"])
  assert (tmp_path / "task" / "captions.txt").read_text().splitlines()[1] == "00001.png\tsmall shape at the top right"


def test_object_scale_grows_objects_and_reaches_the_eval_tasks():
  def covered(image):  # pixels far from the background grey: the object's area (mild noise stays below 40)
    return int((np.abs(image.astype(np.int32) - np.median(image.reshape(-1, 3), axis=0)).max(-1) > 40).sum())

  small, big = DemoSource(64, seed=2, two_objects_prob=0.0), DemoSource(64, seed=2, two_objects_prob=0.0,
                                                                        object_scale=1.4)
  for i in range(8):
    assert small[i]["caption"] == big[i]["caption"]  # same scenes, only the radii differ
  ratio = np.mean([covered(big[i]["image"]) / max(covered(small[i]["image"]), 1) for i in range(8)])
  assert 1.6 < ratio < 2.4  # area ~ scale**2 = 1.96
  a = demo_tasks(32, 4, object_scale=1.4)["shape"].sample_fn(0)[0]
  b = demo_tasks(32, 4)["shape"].sample_fn(0)[0]
  assert covered(a) > covered(b)
  with pytest.raises(ValueError, match="object_scale"):
    DemoSource(64, object_scale=3.0)
