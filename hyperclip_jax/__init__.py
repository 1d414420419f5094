"""hyperclip_jax: HyperCLIP (arXiv 2412.16777) pretraining and deployment in JAX/Flax.

`hyperclip_jax.load_model(DIR)` rebuilds a model directory written by `hyperclip-export --model-only`
(hyperclip_jax.model_dir); importing the package itself imports nothing else.
"""


def __getattr__(name: str):
  if name == "load_model":  # lazy: `import hyperclip_jax` stays free of jax/flax
    from hyperclip_jax.model_dir import load_model
    return load_model
  raise AttributeError(f"module 'hyperclip_jax' has no attribute {name!r}")
