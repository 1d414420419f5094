"""Test setup: 8 fake CPU devices and JAX's persistent compilation cache, set before jax is imported."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"))
# Every program is cached, the sub-second ones too: a warm tiny training run has ~80 of them (eager ops, the
# per-task evaluation programs), ~5 s of compiles each time it starts.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
