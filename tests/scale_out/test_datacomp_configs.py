"""configs/datacomp.py: every encoder x variant x scale loads and validates; the scales are DataComp's."""
import os

import pytest
import scale_helpers as h

from hyperclip_jax import config as config_lib
from hyperclip_jax import validation

DATACOMP = os.path.join(h.ROOT, "configs", "datacomp.py")


@pytest.mark.parametrize("encoder", ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "tinynet",
                                     "mobilenetv3"])
def test_every_paper_config_loads_and_validates(encoder):
  for variant in ("siglip", "hyperclip", "token"):
    for scale in ("small", "medium", "large"):
      config = config_lib.load_config(f"{DATACOMP}:encoder={encoder},variant={variant},scale={scale}")
      validation.validate(config, 64)  # 4096 = 64 devices x 2 groups of 32
      assert config.data.name == "webdataset" and config.loss.chunked
      assert config.evals.zeroshot.tasks == "imagenet,cifar100"


def test_scales_match_datacomp():
  for scale, samples, batch in (("small", 12_800_000, 4096), ("medium", 128_000_000, 4096),
                                ("large", 1_280_000_000, 8192)):
    config = config_lib.load_config(f"{DATACOMP}:scale={scale},shards=/d/{{0..9}}.tar")
    assert (config.total_steps * config.batch_size, config.batch_size) == (samples, batch)
    assert config.data.pattern == "/d/{0..9}.tar" and config.model.image.name == "efficientnet_b0"


def test_unknown_scale_is_refused():
  with pytest.raises(ValueError, match="scale='huge' is unknown"):
    config_lib.load_config(f"{DATACOMP}:scale=huge")
