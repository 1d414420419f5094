"""Test setup: 8 fake CPU devices and JAX's persistent compilation cache, set before jax is imported."""
import os

import pytest

# Compile speed over run speed: the suite's ~450 tests run tiny programs, so XLA's compile time, not the run
# time, is most of `make test`. With the LLVM backend at -O0 and its expensive passes off, the cold compile of
# tests/scale_out/test_grad_cache.py drops from 101 s to 71 s and bench/studies/reproduce.py --tiny from 367 s to
# 298 s on 2 cores. The numerics are XLA's own either way; every comparison in the suite runs both sides
# under the same flags. `make demo` and the benchmarks keep XLA's defaults.
XLA_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {XLA_COMPILE_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
# Every program is cached, the sub-second ones too: a warm tiny training run has ~80 of them (eager ops, the
# per-task evaluation programs), ~5 s of compiles each time it starts.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Scheduling: `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`, which hands out whole files in
# collection order. The files that take minutes (cold compiles, subprocess trainings; figures from `--durations`
# of a fresh-clone run) go first, longest first, so that the short files fill the end and neither worker idles
# while the other finishes a long one. Files not listed keep their order after these.
SLOW_FILES_FIRST = (
    "tests/test_reproduce.py",
    "tests/export/test_export.py",
    "tests/reliability/test_interrupted_runs.py",
    "tests/test_train.py",
    "tests/scale_out/test_multiprocess.py",
    "tests/scale_out/test_restore_topology.py",
    "tests/scale_out/test_mesh_equivalence.py",
    "tests/models/test_two_towers.py",
    "tests/evaluators/test_registry.py",
    "tests/scale_out/test_grad_cache.py",
    "tests/data/test_train_real_data.py",
    "tests/reliability/test_damaged_checkpoints.py",
    "tests/reliability/test_kill_resume.py",
    "tests/reliability/test_soak.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def one_device_env():
  """The environment for a subprocess on one CPU device, with the suite's compile flags."""
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {XLA_COMPILE_FLAGS}"}
