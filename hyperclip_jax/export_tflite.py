"""--format tflite: the folded classifier as classifier.tflite, converted by TensorFlow and checked with LiteRT.

Route: the classifier's jax.export artifact (traced with library convolutions, as for ONNX) -> jax2tf (native
serialization: one XlaCallModule op carrying the StableHLO) -> the TFLite converter, which legalizes the
StableHLO to TFLite builtin ops -> classifier.tflite, float32. The file then runs in the LiteRT interpreter
(ai-edge-litert) on fixed images, and its logits are compared with the jax artifact's here.

TensorFlow is never part of the base install. The conversion runs in this process when tensorflow and
ai_edge_litert import here; otherwise in another python that has them (`--tflite-python PATH` or
$HYPERCLIP_TFLITE_PYTHON; `make tflite` creates .venv-tflite with TFLITE_PINS), as a subprocess:
  PYTHON -m hyperclip_jax.export_tflite convert ARTIFACT OUT.tflite IMAGES.npz RESULT.npz
  PYTHON -m hyperclip_jax.export_tflite run FILE.tflite IMAGES.npz RESULT.npz  (logits; tests/tflite)
  PYTHON -m hyperclip_jax.export_tflite time FILE.tflite SIZE BATCH REPS       (bench/export.py)
That side needs only jax, numpy, tensorflow and ai_edge_litert (the package's other modules are not imported).

Contract, as the jax artifact's: input `images` uint8 [N, S, S, 3] -> output logits float32 [N, C]; the batch
dimension is dynamic (resize the interpreter's input, as `run` does).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from hyperclip_jax import export_parity

FILE = "classifier.tflite"
INT8_FILE = "classifier_int8.tflite"
ENV = "HYPERCLIP_TFLITE_PYTHON"
PINS = "tensorflow-cpu==2.21.0 ai-edge-litert==2.3.0"  # as the Makefile's TFLITE_PINS (with our jax, numpy)
NEEDS = ("tensorflow", "ai_edge_litert", "jax")
MARK = "hyperclip_jax.export_tflite: error: "  # the subprocess's error line, among TensorFlow's log lines
INSTALL = (f"run `make tflite` and pass --tflite-python .venv-tflite/bin/python (or set {ENV}), or install "
           f"{PINS} into this python")


class ConversionError(ValueError):
  """A classifier TensorFlow could not convert or LiteRT could not run; the message says what to do."""


# ---- where the converter runs (this side needs no TensorFlow) ----------------------------------------------------
def _importable_here() -> bool:
  try:
    return all(importlib.util.find_spec(m) is not None for m in NEEDS)
  except (ImportError, ValueError):  # ValueError: sys.modules[m] is None (blocked, as in tests)
    return False


def resolve_python(explicit: str | None = None) -> str | None:
  """The python that converts: None for this process; explicit / $HYPERCLIP_TFLITE_PYTHON when given (checked
  to have NEEDS). Raises ConversionError naming the install command when none can."""
  python = explicit or os.environ.get(ENV) or None
  if python is None:
    if _importable_here():
      return None
    raise ConversionError(f"--format tflite needs TensorFlow and LiteRT, which this python lacks: {INSTALL}")
  if not (os.path.isfile(python) and os.access(python, os.X_OK)):
    raise ConversionError(f"--tflite-python {python!r} is not an executable file; {INSTALL}")
  probe = ("import importlib.util as u, sys; missing = [m for m in sys.argv[1:] if u.find_spec(m) is None]; "
           "print(' '.join(missing)); sys.exit(3 if missing else 0)")
  done = subprocess.run([python, "-c", probe, *NEEDS], capture_output=True, text=True, timeout=120)
  if done.returncode:
    missing = done.stdout.strip() or done.stderr.strip().splitlines()[-1:]
    raise ConversionError(f"--tflite-python {python!r} lacks {missing}; {INSTALL}")
  return python


def _package_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subprocess(python: str, *args: str, timeout: float = 1800) -> str:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])),
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([python, "-m", "hyperclip_jax.export_tflite", *args], capture_output=True, text=True,
                        env=env, timeout=timeout)
  if done.returncode:
    lines = [l for l in done.stderr.strip().splitlines() if l.strip()]
    ours = [l[len(MARK):] for l in lines if l.startswith(MARK)]
    why = (ours[-1] if ours else f"killed by signal {-done.returncode}" if done.returncode < 0 else
           lines[-1] if lines else f"exit status {done.returncode}")
    raise ConversionError(f"the TFLite converter in {python} failed: {why}")
  return done.stdout


# ---- the TensorFlow side --------------------------------------------------------------------------------------
def convert(artifact: bytes, input_size: int, representative: np.ndarray | None = None) -> bytes:
  """A jax.export artifact (uint8 [n, S, S, 3] -> logits) -> the bytes of a float32 .tflite file, or, given
  representative images uint8 [R, S, S, 3], of an int8 one (post-training quantisation of weights and
  activations, calibrated on them one by one; ops without an int8 kernel stay float, and so do the DIVs: the
  sigmoids lower to 1 / (1 + exp(-x)), and LiteRT's int8 DIV stops on a divisor that quantises to zero)."""
  import jax.experimental.jax2tf as jax2tf  # imports tensorflow
  import tensorflow as tf
  exported = jax.export.deserialize(bytearray(artifact))
  s = input_size
  fn = jax2tf.convert(exported.call, polymorphic_shapes=[f"(n, {s}, {s}, 3)"],
                      native_serialization_platforms=("cpu",))
  module = tf.Module()
  module.logits = tf.function(fn, autograph=False,
                              input_signature=[tf.TensorSpec([None, s, s, 3], tf.uint8, name="images")])
  converter = tf.lite.TFLiteConverter.from_concrete_functions([module.logits.get_concrete_function()], module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: LiteRT alone runs it
  if representative is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    calibration = lambda: ([representative[i:i + 1]] for i in range(len(representative)))  # noqa: E731
    converter.representative_dataset = calibration
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["DIV"])
  try:
    if representative is None:
      return converter.convert()
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=calibration,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model()  # quantised, the denylisted ops left float
  except Exception as e:  # the converter's errors are long MLIR dumps: keep the first line
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConversionError(f"TensorFlow {tf.__version__} could not convert the classifier: {first}") from None


def _interpreter(path: str) -> Any:
  from ai_edge_litert.interpreter import Interpreter
  return Interpreter(model_path=path)


def run(interpreter: Any, images: np.ndarray) -> np.ndarray:
  """Logits of a LiteRT interpreter for uint8 images [N, S, S, 3] (resizes its batch when N changes)."""
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  if tuple(inp["shape"]) != images.shape:
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
  interpreter.set_tensor(inp["index"], images)
  interpreter.invoke()
  return np.array(interpreter.get_tensor(out["index"]))


def _versions() -> dict[str, str]:
  import ai_edge_litert
  import tensorflow as tf
  return {"tensorflow": tf.__version__, "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown")}


def _batched(interpreter: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
  return np.concatenate([run(interpreter, images[i:i + batch]) for i in range(0, len(images), batch)])


def convert_and_run(artifact_path: str, out_path: str, images_path: str, result_path: str) -> None:
  """The subprocess's work: convert, write out_path, run LiteRT on the check images (batch N, then the second
  image alone); with `representative` and `eval` images in images_path, also write INT8_FILE beside out_path
  and run both files on the eval images. Logits and versions go to result_path (.npz)."""
  with open(images_path, "rb") as f:
    given = dict(np.load(f))
  images = given["images"]
  with open(artifact_path, "rb") as f:
    artifact = f.read()
  with open(out_path, "wb") as f:
    f.write(convert(artifact, int(images.shape[1])))
  interpreter = _interpreter(out_path)
  interpreter.allocate_tensors()
  result = {"batch": run(interpreter, images), "one": run(interpreter, images[1:2])}
  if "representative" in given:
    int8_path = os.path.join(os.path.dirname(out_path), INT8_FILE)
    result["eval_float32"] = _batched(interpreter, given["eval"])
    try:
      with open(int8_path, "wb") as f:
        f.write(convert(artifact, int(images.shape[1]), given["representative"]))
      quantised = _interpreter(int8_path)
      quantised.allocate_tensors()
      result["eval_int8"] = _batched(quantised, given["eval"])
    except (ConversionError, RuntimeError, ValueError) as e:  # e.g. an int8 DIV whose divisor quantised to 0
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConversionError(f"the int8 file (--tflite-int8) failed: {first}; export without --tflite-int8") from None
  with open(result_path, "wb") as f:
    np.savez(f, versions=json.dumps(_versions()), **result)


def run_file(path: str, images_path: str, result_path: str) -> None:
  """LiteRT's logits for the images of images_path (.npz `images`) -> result_path (.npz `logits`)."""
  with open(images_path, "rb") as f:
    images = np.load(f)["images"]
  interpreter = _interpreter(path)
  interpreter.allocate_tensors()
  with open(result_path, "wb") as f:
    np.savez(f, logits=run(interpreter, images))


def time_file(path: str, input_size: int, batch: int, reps: int) -> list[float]:
  """Seconds per LiteRT call on uint8 images [batch, S, S, 3] (3 warm-up calls first)."""
  interpreter = _interpreter(path)
  interpreter.allocate_tensors()
  images = np.random.default_rng(batch).integers(0, 256, (batch, input_size, input_size, 3), dtype=np.uint8)
  for _ in range(3):
    run(interpreter, images)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    run(interpreter, images)
    times.append(time.perf_counter() - t0)
  return times


# ---- the export side ------------------------------------------------------------------------------------------
def compare(batch: np.ndarray, one: np.ndarray, want: np.ndarray, versions: dict[str, str]) -> dict[str, Any]:
  """The check's entry: LiteRT's logits (`batch`, and `one` for the second image alone) against the jax
  artifact's (`want`); raises ConversionError past export_parity's tolerance."""
  return export_parity.compare(FILE, batch, want, ConversionError, one, **versions, interpreter="ai_edge_litert")


def int8_report(result: dict[str, np.ndarray], want: np.ndarray, labels: np.ndarray, task: str,
                representative: int) -> dict[str, Any]:
  """The manifest's formats.tflite.int8 entry: top-1 of the jax artifact (`want`), the float32 and the int8 file
  on the run's eval images of `task`, and the int8 logits' distance from the jax ones."""
  top1 = lambda logits: float(np.mean(np.argmax(logits, -1) == labels))  # noqa: E731
  jax_top1, int8_top1 = top1(want), top1(result["eval_int8"])
  return {"file": INT8_FILE, "quantisation": "post-training int8 (weights and activations; DIV and ops without int8 kernels float)",
          "representative_images": int(representative),
          "eval": {"task": task, "images": int(len(labels)), "top1_jax": jax_top1,
                   "top1_float32": top1(result["eval_float32"]), "top1_int8": int8_top1,
                   "top1_change": int8_top1 - jax_top1,
                   "max_abs_logit_diff": float(np.max(np.abs(result["eval_int8"] - want))),
                   "top1_agreement_with_jax": float(np.mean(result["eval_int8"].argmax(-1) == want.argmax(-1)))}}


def write(out_dir: str, artifact: bytes, input_size: int, reference: Callable[[Any], Any],
          python: str | None, quant: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes out_dir/classifier.tflite from `artifact` (a jax.export of the classifier, cpu) in `python` (None:
  here) and checks it against `reference` (the jax artifact); returns the manifest's formats.tflite entry.
  quant {"task", "representative", "images", "labels"}: also INT8_FILE, calibrated on the representative
  images, its top-1 on the eval images reported (int8_report). Raises ConversionError (no file is kept) when it
  cannot convert or check."""
  path, int8_path = os.path.join(out_dir, FILE), os.path.join(out_dir, INT8_FILE)
  images = export_parity.check_images(input_size)
  with tempfile.TemporaryDirectory(prefix="hyperclip_tflite_") as tmp:
    args = [os.path.join(tmp, n) for n in ("classifier.jaxexport", "images.npz", "result.npz")]
    with open(args[0], "wb") as f:
      f.write(artifact)
    with open(args[1], "wb") as f:
      extra = {"representative": quant["representative"], "eval": quant["images"]} if quant else {}
      np.savez(f, images=images, **extra)
    try:
      if python is None:
        convert_and_run(args[0], path, args[1], args[2])
      else:
        _subprocess(python, "convert", args[0], path, args[1], args[2])
      with open(args[2], "rb") as f:
        result = dict(np.load(f))
      versions = json.loads(str(result["versions"]))
      entry = {"file": FILE, "dtype": "float32", "input": "images uint8 [N, S, S, 3]",
               "output": "logits float32 [N, C]",
               "converter": "jax2tf (native serialization) + tf.lite.TFLiteConverter, TFLITE_BUILTINS",
               "check": compare(result["batch"], result["one"], np.asarray(reference(images)), versions)}
      if quant:
        want = np.concatenate([np.asarray(reference(quant["images"][i:i + 64]))
                               for i in range(0, len(quant["images"]), 64)])
        entry["int8"] = int8_report(result, want, quant["labels"], quant["task"], len(quant["representative"]))
    except (ConversionError, subprocess.TimeoutExpired, OSError, KeyError) as e:
      for p in (path, int8_path):
        if os.path.exists(p):
          os.remove(p)
      raise ConversionError(str(e)) from None
  return entry


def time_in(python: str | None, path: str, input_size: int, batch: int, reps: int) -> list[float]:
  """time_file here (python None) or in `python` (a subprocess)."""
  if python is None:
    return time_file(path, input_size, batch, reps)
  return json.loads(_subprocess(python, "time", path, str(input_size), str(batch), str(reps)))


def main(argv: list[str]) -> int:
  """The subprocess entry point (see the module docstring)."""
  try:
    if argv[:1] == ["convert"] and len(argv) == 5:
      convert_and_run(*argv[1:])
    elif argv[:1] == ["run"] and len(argv) == 4:
      run_file(*argv[1:])
    elif argv[:1] == ["time"] and len(argv) == 5:
      print(json.dumps(time_file(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))))
    else:
      print("usage: python -m hyperclip_jax.export_tflite convert ARTIFACT OUT IMAGES RESULT | "
            "run FILE IMAGES RESULT | time FILE SIZE BATCH REPS", file=sys.stderr)
      return 2
  except ConversionError as e:
    print(f"{MARK}{e}", file=sys.stderr, flush=True)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
