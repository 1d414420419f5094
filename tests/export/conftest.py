"""A run trained by hyperclip-train (the tiny demo config) and its exported classifier, once per session."""
import pytest
from export_runs import tiny_config

from hyperclip_jax import export, train
from hyperclip_jax import workdir as workdir_lib
from hyperclip_jax.evaluators import classnames


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """The tiny demo config (efficientnet_b0, hyperclip) trained for 2 steps by the real trainer."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train(tiny_config(), workdir)
  return workdir


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
  """trained_run exported (hyperclip-export's code path) for the demo colour task: the directory."""
  out = tmp_path_factory.mktemp("exported") / "clf"
  names, templates = classnames.resolve("demo:colour")
  export.export_classifier(workdir_lib.load_run(trained_run), names, templates, str(out))
  return out
