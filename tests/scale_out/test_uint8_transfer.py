"""Images travel to the device as uint8 and the value_range runs inside the step: same loss as float32
images rendered on the host, within the rounding of one multiply-add (XLA fuses it into an FMA)."""
import jax
import numpy as np
import scale_helpers as h

from hyperclip_jax import sharding, train
from hyperclip_jax.data import input_pipeline, pixels


def test_all_256_levels_match_the_host_value_range_within_one_ulp():
  levels = np.arange(256, dtype=np.uint8)
  host = input_pipeline.to_model_image(levels)
  device = np.asarray(jax.jit(pixels.DEFAULT.apply)(levels))
  assert device.dtype == np.float32 and device[0] == -1.0 and device[255] == 1.0
  np.testing.assert_array_max_ulp(device, host, maxulp=1)


def test_uint8_batch_gives_the_float_batchs_loss():
  config = h.fast_config()
  mesh = h.mesh_of(8, 1)
  rng = np.random.default_rng(0)
  b, s = config.batch_size, config.data.image_size
  pixels_u8 = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
  text = h.fixed_batch(config)["text"]
  losses = {}
  for name, image in (("uint8", pixels_u8), ("float32", input_pipeline.to_model_image(pixels_u8))):
    model, tx, schedule, state = h.setup(config, mesh)
    step = jax.jit(train.make_train_step(model, tx, config.loss.name, schedule, mesh=mesh))
    batch = sharding.put_batch({"image": image, "text": text}, mesh)
    assert batch["image"].dtype == image.dtype
    _, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses[name] = float(metrics["train/loss"])
  assert np.isclose(losses["uint8"], losses["float32"], rtol=1e-5), losses


def test_host_bytes_per_image_drop_fourfold():
  config = h.tiny_config()
  from hyperclip_jax.data import tokenizers
  it = input_pipeline.make_train_iterator(config.data, tokenizers.get_tokenizer(config.data.tokenizer), 8, seed=0)
  try:
    image = next(it)["image"]
  finally:
    it.close()
  s = config.data.image_size
  assert image.dtype == np.uint8 and image.nbytes // len(image) == s * s * 3  # float32 was 4 * s * s * 3


def test_value_range_moves_to_the_device_only_when_it_is_the_last_image_op():
  spec, affine = pixels.split_device_affine("decode|resize(64)|value_range(-1, 1)|tokenize|keep('image', 'text')")
  assert spec == "decode|resize(64)|tokenize|keep('image', 'text')" and affine == pixels.DEFAULT
  spec, affine = pixels.split_device_affine("decode|resize(8)|value_range(0, 1, clip_values=True)")
  assert spec == "decode|resize(8)" and affine == pixels.PixelAffine(0.0, 1.0, 0.0, 255.0, True)
  x = np.array([0, 51, 255], np.uint8)
  np.testing.assert_allclose(np.asarray(affine.apply(x)), [0.0, 0.2, 1.0], rtol=1e-6)
  for stays in ("decode|value_range(-1, 1)|resize(64)", "decode|resize(64)"):
    assert pixels.split_device_affine(stays) == (stays, None)
  float_image = np.ones((2, 2, 3), np.float32)
  assert affine.apply(float_image) is float_image  # a host-side value_range: passed through
