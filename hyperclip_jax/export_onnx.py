"""--format onnx: the folded classifier as classifier.onnx, converted from its jaxpr and checked with onnxruntime.

The folded classifier is a plain network (convolutions, dense layers, elementwise activations, sums, a few
static slices; ViTs add attention and LayerNorm arithmetic), so a small jaxpr -> ONNX converter covers it; the
PyPI converter jax2onnx pins an older orbax than this project's. Every equation whose inputs are all constants
(weights, their reshapes, index arithmetic) is evaluated here and stored as an initializer; the rest becomes ONNX
nodes, with the one symbolic dimension (the batch, `n`) read from the input's shape where a shape needs it.

Contract, as the jax artifact's: input `images` uint8 [N, S, S, 3] -> output `logits` float32 [N, C], any N.
Needs `pip install "hyperclip_jax[onnx]"` (onnx, onnxruntime), at export time only.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from hyperclip_jax import export_parity

FILE = "classifier.onnx"
OPSET = 18


class ConversionError(ValueError):
  """A jaxpr construct this converter does not translate; the message names it."""


def _dtype(onnx: Any, dt: Any) -> int:
  return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt))


class _Converter:
  """Walks a jaxpr, folding constants and emitting ONNX nodes."""

  def __init__(self, onnx: Any, batch_dim: Any):
    self.onnx, self.h = onnx, onnx.helper
    self.nodes: list[Any] = []
    self.inits: list[Any] = []
    self.names: dict[Any, str] = {}  # jaxpr var -> ONNX tensor name
    self.consts: dict[Any, np.ndarray] = {}  # jaxpr var -> its value, when known here
    self.batch_dim = batch_dim  # the symbolic dimension `n`
    self.batch_name: str | None = None  # int64 [1]: n, read from the input's shape
    self.count = 0

  def fresh(self, hint: str = "t") -> str:
    self.count += 1
    return f"{hint}_{self.count}"

  def node(self, op: str, inputs: list[str], **attrs) -> str:
    out = self.fresh(op.lower())
    self.nodes.append(self.h.make_node(op, inputs, [out], **attrs))
    return out

  def const(self, value: Any, hint: str = "c") -> str:
    value = np.asarray(value)
    name = self.fresh(hint)
    self.inits.append(self.onnx.numpy_helper.from_array(value, name))
    return name

  def value(self, v: Any) -> np.ndarray | None:
    if isinstance(v, jax_core.Literal):
      return np.asarray(v.val, v.aval.dtype)
    return self.consts.get(v)

  def name(self, v: Any) -> str:
    if isinstance(v, jax_core.Literal):
      return self.const(np.asarray(v.val, v.aval.dtype))
    if v not in self.names:  # a folded constant some node now needs as a tensor
      self.names[v] = self.const(self.consts[v])
    return self.names[v]

  def shape(self, dims: Any) -> str:
    """An int64 shape tensor for `dims`, the batch dimension read at run time."""
    if all(isinstance(d, int) for d in dims):
      return self.const(np.asarray(dims, np.int64), "shape")
    parts = []
    for d in dims:
      if isinstance(d, int):
        parts.append(self.const(np.asarray([d], np.int64), "dim"))
      elif d == self.batch_dim:
        parts.append(self.batch_name)
      else:
        raise ConversionError(f"shape dimension {d} is not the batch dimension or a constant")
    return self.node("Concat", parts, axis=0)

  # ---- the walk ----------------------------------------------------------------------------------------------
  def run(self, jaxpr: Any, inputs: list[Any]) -> list[Any]:
    """Binds jaxpr.invars to `inputs` (names or np values) and converts; returns its outputs likewise."""
    for var, x in zip(jaxpr.invars, inputs):
      if isinstance(x, np.ndarray):
        self.consts[var] = x
      else:
        self.names[var] = x
    for eqn in jaxpr.eqns:
      self.equation(eqn)
    return [self.value(v) if self.value(v) is not None else self.name(v) for v in jaxpr.outvars]

  def equation(self, eqn: Any) -> None:
    prim, params = eqn.primitive.name, eqn.params
    sub = params.get("jaxpr", params.get("call_jaxpr"))
    if prim in ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat"):
      closed = sub if hasattr(sub, "consts") else None
      inner = closed.jaxpr if closed is not None else sub
      for var, c in zip(inner.constvars, closed.consts if closed is not None else ()):
        self.consts[var] = np.asarray(c)
      inputs = [self.value(v) if self.value(v) is not None else self.name(v) for v in eqn.invars]
      for var, out in zip(eqn.outvars, self.run(inner, inputs)):
        self.bind(var, out)
      return
    values = [self.value(v) for v in eqn.invars]
    concrete = all(isinstance(d, int) for o in eqn.outvars for d in o.aval.shape)
    if all(v is not None for v in values) and concrete:  # constant folding
      outs = eqn.primitive.bind(*[jnp.asarray(v) for v in values], **params)
      outs = outs if eqn.primitive.multiple_results else [outs]
      for var, out in zip(eqn.outvars, outs):
        self.consts[var] = np.asarray(out)
      return
    if prim not in _RULES:
      raise ConversionError(f"jax primitive {prim!r} has no ONNX translation here")
    out = _RULES[prim](self, eqn, [self.name(v) for v in eqn.invars], values)
    self.bind(eqn.outvars[0], out)

  def bind(self, var: Any, out: Any) -> None:
    if isinstance(out, np.ndarray):
      self.consts[var] = out
    else:
      self.names[var] = out


# ---- translation rules: (converter, eqn, input names, input constant values or None) -> output name ------------
def _elementwise(op: str) -> Callable[..., str]:
  return lambda c, e, x, v: c.node(op, x)


def _convert(c, e, x, v):
  return c.node("Cast", x, to=_dtype(c.onnx, e.params["new_dtype"]))


def _broadcast(c, e, x, v):
  shape, dims = e.params["shape"], e.params["broadcast_dimensions"]
  in_shape = e.invars[0].aval.shape
  ones = [1] * len(shape)
  for i, d in zip(dims, in_shape):
    ones[i] = d
  y = c.node("Reshape", [x[0], c.shape(ones)]) if len(in_shape) != len(shape) else x[0]
  return c.node("Expand", [y, c.shape(shape)])


def _reshape(c, e, x, v):
  if e.params.get("dimensions") is not None:
    raise ConversionError("reshape with a dimension permutation has no translation here")
  return c.node("Reshape", [x[0], c.shape(e.params["new_sizes"])])


def _conv(c, e, x, v):
  p = e.params
  lhs, rhs, out = p["dimension_numbers"]
  if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
    raise ConversionError("transposed or batch-grouped convolutions have no translation here")
  nchw = c.node("Transpose", [x[0]], perm=list(lhs))
  if v[1] is not None:  # constant kernel: to OIHW here
    kernel = c.const(np.ascontiguousarray(np.transpose(v[1], rhs)), "kernel")
  else:
    kernel = c.node("Transpose", [x[1]], perm=list(rhs))
  pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
  y = c.node("Conv", [nchw, kernel], strides=list(p["window_strides"]), pads=pads,
             dilations=list(p["rhs_dilation"]), group=int(p["feature_group_count"]))
  return c.node("Transpose", [y], perm=list(np.argsort(out)))


def _dot(c, e, x, v):
  (lc, rc), (lb, rb) = e.params["dimension_numbers"]
  ln, rn = len(e.invars[0].aval.shape), len(e.invars[1].aval.shape)
  if not lb and ln == 2 and rn == 2 and tuple(lc) == (1,):  # the dense layers: a plain MatMul
    rhs = x[1]
    if tuple(rc) == (1,):
      rhs = c.const(np.ascontiguousarray(v[1].T)) if v[1] is not None else c.node("Transpose", [x[1]], perm=[1, 0])
    return c.node("MatMul", [x[0], rhs])
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  ls, rs = [next(letters) for _ in range(ln)], [None] * rn
  for i, j in zip(lc, rc):
    rs[j] = ls[i]
  for i, j in zip(lb, rb):
    rs[j] = ls[i]
  rs = [r or next(letters) for r in rs]
  free_l = [ls[i] for i in range(ln) if i not in lc and i not in lb]
  free_r = [rs[j] for j in range(rn) if j not in rc and j not in rb]
  out = "".join([ls[i] for i in lb] + free_l + free_r)
  return c.node("Einsum", x, equation=f"{''.join(ls)},{''.join(rs)}->{out}")


def _reduce(op: str) -> Callable[..., str]:
  return lambda c, e, x, v: c.node(op, [x[0], c.const(np.asarray(e.params["axes"], np.int64))], keepdims=0)


def _gather(c, e, x, v):
  """Static indexing only (x[:, 0], x[..., k]): constant start indices, each slice full or of size one."""
  d = e.params["dimension_numbers"]
  idx, shape, sizes = v[1], e.invars[0].aval.shape, e.params["slice_sizes"]
  if idx is None or idx.ndim != 1 or d.operand_batching_dims or len(d.offset_dims) != len(shape) - len(
      d.collapsed_slice_dims):
    raise ConversionError("gather with run-time or batched indices has no translation here")
  starts = [0] * len(shape)
  for k, dim in enumerate(d.start_index_map):
    starts[dim] = int(idx[k])
  ends = [s + z if isinstance(z, int) else np.iinfo(np.int64).max for s, z in zip(starts, sizes)]
  y = c.node("Slice", [x[0], c.const(np.asarray(starts, np.int64)), c.const(np.asarray(ends, np.int64))])
  if d.collapsed_slice_dims:
    y = c.node("Squeeze", [y, c.const(np.asarray(d.collapsed_slice_dims, np.int64))])
  return y


def _same_dim(a: Any, b: Any) -> bool:
  try:
    return bool(a == b)  # ints, or the symbolic batch dimension against itself
  except Exception:  # noqa: BLE001  (jax's InconclusiveDimensionOperation: a symbolic and a constant size)
    return False


def _slice(c, e, x, v):
  p, shape = e.params, e.invars[0].aval.shape
  strides = p["strides"] or (1,) * len(shape)
  axes = [i for i, (a, b, st, d) in enumerate(zip(p["start_indices"], p["limit_indices"], strides, shape))
          if (a, st) != (0, 1) or not _same_dim(b, d)]  # the axes actually cut; a whole axis (the batch's) stays
  if any(not isinstance(p["limit_indices"][i], int) for i in axes):
    raise ConversionError("a slice along the symbolic batch axis has no translation here")
  pick = lambda values: c.const(np.asarray([values[i] for i in axes], np.int64))  # noqa: E731
  if not axes:
    return c.node("Identity", x)
  return c.node("Slice", [x[0], pick(p["start_indices"]), pick(p["limit_indices"]),
                          c.const(np.asarray(axes, np.int64)), pick(strides)])


def _select(c, e, x, v):
  if len(x) != 3:
    raise ConversionError("select_n with more than two cases has no translation here")
  return c.node("Where", [x[0], x[2], x[1]])  # select_n(pred, false_case, true_case)


def _integer_pow(c, e, x, v):
  return c.node("Pow", [x[0], c.const(np.asarray(e.params["y"], e.invars[0].aval.dtype))])


def _erfc(c, e, x, v):
  return c.node("Sub", [c.const(np.asarray(1, e.invars[0].aval.dtype)), c.node("Erf", x)])


_RULES: dict[str, Callable[..., str]] = {
    "add": _elementwise("Add"), "sub": _elementwise("Sub"), "mul": _elementwise("Mul"), "div": _elementwise("Div"),
    "max": _elementwise("Max"), "min": _elementwise("Min"), "pow": _elementwise("Pow"),
    "logistic": _elementwise("Sigmoid"), "exp": _elementwise("Exp"), "log": _elementwise("Log"),
    "tanh": _elementwise("Tanh"), "sqrt": _elementwise("Sqrt"), "abs": _elementwise("Abs"),
    "neg": _elementwise("Neg"), "erf": _elementwise("Erf"), "erfc": _erfc,
    "rsqrt": lambda c, e, x, v: c.node("Reciprocal", [c.node("Sqrt", x)]),
    "square": lambda c, e, x, v: c.node("Mul", [x[0], x[0]]),
    "integer_pow": _integer_pow,
    "ge": _elementwise("GreaterOrEqual"), "gt": _elementwise("Greater"), "le": _elementwise("LessOrEqual"),
    "lt": _elementwise("Less"), "eq": _elementwise("Equal"), "and": _elementwise("And"), "or": _elementwise("Or"),
    "ne": lambda c, e, x, v: c.node("Not", [c.node("Equal", x)]), "not": _elementwise("Not"),
    "select_n": _select,
    "stop_gradient": _elementwise("Identity"), "copy": _elementwise("Identity"),
    "copy_p": _elementwise("Identity"),
    "convert_element_type": _convert, "broadcast_in_dim": _broadcast, "reshape": _reshape,
    "transpose": lambda c, e, x, v: c.node("Transpose", x, perm=list(e.params["permutation"])),
    "squeeze": lambda c, e, x, v: c.node("Squeeze", [x[0], c.const(np.asarray(e.params["dimensions"], np.int64))]),
    "expand_dims": lambda c, e, x, v: c.node("Unsqueeze", [x[0], c.const(np.asarray(e.params["dimensions"],
                                                                                      np.int64))]),
    "concatenate": lambda c, e, x, v: c.node("Concat", x, axis=int(e.params["dimension"])),
    "conv_general_dilated": _conv, "dot_general": _dot, "gather": _gather, "slice": _slice,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"), "reduce_min": _reduce("ReduceMin"),
}


def convert(fn: Callable[[Any], Any], input_size: int) -> bytes:
  """fn(uint8 images [n, S, S, 3]) -> logits [n, C] as a serialized ONNX model (dynamic batch)."""
  import onnx
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"n, {input_size}, {input_size}, 3"), jnp.uint8)
  closed = jax.make_jaxpr(fn)(spec)
  n = closed.jaxpr.invars[0].aval.shape[0]
  c = _Converter(onnx, n)
  for var, value in zip(closed.jaxpr.constvars, closed.consts):
    c.consts[var] = np.asarray(value)
  shape = c.node("Shape", ["images"])
  c.batch_name = c.node("Slice", [shape, c.const(np.asarray([0], np.int64)), c.const(np.asarray([1], np.int64))])
  (out,) = c.run(closed.jaxpr, ["images"])
  c.nodes.append(c.h.make_node("Identity", [out], ["logits"]))
  num_classes = closed.jaxpr.outvars[0].aval.shape[1]
  used = {i for node in c.nodes for i in node.input}
  c.inits = [t for t in c.inits if t.name in used]  # folded away, or bound before it was known to be constant
  graph = c.h.make_graph(
      c.nodes, "hyperclip_classifier",
      [c.h.make_tensor_value_info("images", onnx.TensorProto.UINT8, ["N", input_size, input_size, 3])],
      [c.h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", num_classes])], c.inits)
  model = c.h.make_model(graph, opset_imports=[c.h.make_opsetid("", OPSET)], producer_name="hyperclip_jax")
  model.ir_version = 8  # the oldest that opset 18 allows: loads in older onnxruntime builds too
  onnx.checker.check_model(model)
  return model.SerializeToString()


def check(path: str, reference: Callable[[Any], Any], input_size: int) -> dict[str, Any]:
  """Runs classifier.onnx with onnxruntime (the check images, then the second alone: the batch dimension is
  dynamic) against the jax artifact; raises ConversionError past export_parity's tolerance."""
  import onnxruntime as ort
  images = export_parity.check_images(input_size)
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  got = session.run(["logits"], {"images": images})[0]
  one = session.run(["logits"], {"images": images[1:2]})[0]
  return export_parity.compare(FILE, got, reference(images), ConversionError, one, onnxruntime=ort.__version__)


def require() -> None:
  """Raises ConversionError unless onnx and onnxruntime import (checked before anything is exported)."""
  try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
  except ImportError:
    raise ConversionError('--format onnx needs onnx and onnxruntime: pip install "hyperclip_jax[onnx]"') from None


def write(out_dir: str, fn: Callable[[Any], Any], input_size: int, reference: Callable[[Any], Any]) -> dict[str, Any]:
  """Writes out_dir/classifier.onnx for fn and checks it against `reference` (the jax artifact); returns the
  manifest's formats.onnx entry. Raises ConversionError (the file is not kept) when it cannot convert or check."""
  require()
  try:
    data = convert(fn, input_size)
  except ConversionError as e:
    raise ConversionError(f"{e}; export --format stablehlo only") from None
  path = os.path.join(out_dir, FILE)
  with open(path, "wb") as f:
    f.write(data)
  try:
    result = check(path, reference, input_size)
  except ConversionError:
    os.remove(path)
    raise
  return {"file": FILE, "opset": OPSET, "input": "images uint8 [N, S, S, 3]", "output": "logits float32 [N, C]",
          "check": result}
