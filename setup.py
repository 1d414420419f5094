"""hyperclip_jax: HyperCLIP (arXiv 2412.16777) pretraining and deployment in JAX/Flax."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="hyperclip_jax",
    version="0.1.0",
    description="HyperCLIP: hypernetwork-adapted small CLIP/SigLIP image encoders, in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["hyperclip_jax", "hyperclip_jax.*"]),
    package_data={"hyperclip_jax": ["evaluators/data/*", "data/vocab/*"]},
    install_requires=_requirements(),
    # gs:// workdirs and shards (docs/storage.md); gcsfs needs fsspec>=2026.9.0, pinned in requirements.txt
    # --format onnx (hyperclip_jax.export_onnx): the converter's onnx and the export-time check's onnxruntime
    extras_require={"gcs": ["gcsfs==2026.10.1"], "onnx": ["onnx==1.23.2", "onnxruntime==1.32.0"]},
    entry_points={
        "console_scripts": [
            "hyperclip-train=hyperclip_jax.train:main",
            "hyperclip-data=hyperclip_jax.data.cli:main",
            "hyperclip-eval=hyperclip_jax.evaluate:main",
            "hyperclip-export=hyperclip_jax.export:main",
            "hyperclip-predict=hyperclip_jax.predict:main",
        ]
    },
)
