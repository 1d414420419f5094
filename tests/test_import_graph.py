"""The package's imports are one-way: no cycles, and the libraries (models/, data/) never reach up into the
applications (the trainer, evaluators, exporter, command-line tools).

The graph is read from the source with `ast`, so it holds every import statement, at module level and inside
functions alike (an import deferred into a function is still a dependency). An edge goes to the module an
import names: `from hyperclip_jax.models import two_towers` -> hyperclip_jax.models.two_towers, `from
hyperclip_jax.models import build_image_encoder` -> hyperclip_jax.models (the package's __init__).
"""
import ast
import os

PACKAGE = "hyperclip_jax"
ROOT = os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, PACKAGE)
LIBRARIES = (f"{PACKAGE}.models", f"{PACKAGE}.data")
# Applications besides the console entry points (setup.py), and the layers built on the libraries for them (the
# train state, config validation): nothing in a library imports them.
APPLICATIONS = (f"{PACKAGE}.train", f"{PACKAGE}.evaluate", f"{PACKAGE}.evaluators", f"{PACKAGE}.export",
                f"{PACKAGE}.predict", f"{PACKAGE}.state", f"{PACKAGE}.validation")
# Imports allowed inside functions: heavy optional dependencies that only some runs install (not in
# requirements.txt; gcsfs is loaded by fsspec, never imported by name; onnx and onnxruntime: the [onnx] extra;
# tensorflow, jax2tf (which needs it) and ai_edge_litert: --format tflite's own venv, `make tflite`).
LOCAL_OK = {"tensorflow_datasets", "gcsfs", "onnx", "onnxruntime", "tensorflow", "jax.experimental.jax2tf",
            "ai_edge_litert"}
# Modules whose imports stay inside functions on purpose, and why.
DEFERRED = {f"{PACKAGE}.export": "load_classifier (and hyperclip-predict) must run with jax and numpy alone, "
                                 "so Flax and the model code are imported inside the export functions",
            PACKAGE: "`import hyperclip_jax` stays free of jax and flax: load_model is resolved on first use"}


def _modules() -> dict[str, str]:
  """module name -> file path, for every .py file of the package."""
  out = {}
  for dirpath, _, files in os.walk(SRC):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


def _imports(name: str, path: str, modules: dict[str, str]) -> list[tuple[str, int, bool]]:
  """(imported package module, line, inside a function) for every import statement of module `name`."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith("__init__.py")
  found = []

  def visit(node: ast.AST, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
      if isinstance(child, ast.Import):
        for alias in child.names:
          found.append((alias.name, child.lineno, in_function))
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:  # relative: resolve against this module's package
          anchor = name.split(".") if is_package else name.split(".")[:-1]
          anchor = anchor[:len(anchor) - (child.level - 1)]
          base = ".".join(anchor + ([base] if base else []))
        for alias in child.names:
          sub = f"{base}.{alias.name}"
          found.append((sub if sub in modules else base, child.lineno, in_function))
      visit(child, local)

  visit(tree, False)
  return found


def _graph() -> dict[str, dict[str, int]]:
  """module -> {imported package module: line of the first such import}."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    edges = graph.setdefault(name, {})
    for target, line, _ in _imports(name, path, modules):
      while target not in modules and "." in target:  # `import hyperclip_jax.x.attr` style: the module part
        target = target.rsplit(".", 1)[0]
      if target in modules and target != name:
        edges.setdefault(target, line)
  return graph


def _cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state, stack = {}, []  # state: 1 on the stack, 2 done

  def dfs(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = dfs(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = dfs(node)
      if found:
        return found
  return None


def _entry_point_modules() -> set[str]:
  """The modules of setup.py's console_scripts (e.g. hyperclip_jax.data.cli)."""
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "=" in node.value and ":" in node.value:
      out.add(node.value.split("=", 1)[1].split(":", 1)[0].strip())
  return out


def _within(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read_from_the_source(tmp_path):
  graph = _graph()
  assert len(graph) > 40
  assert "hyperclip_jax.models.two_towers" in graph["hyperclip_jax.train"]
  assert "hyperclip_jax.models.layers" in graph["hyperclip_jax.models.efficientnet"]
  # a function-level import counts: this synthetic module imports the trainer only inside a function
  fake = {"hyperclip_jax.x": "", "hyperclip_jax.train": ""}
  src = "import os\n\ndef f():\n  from hyperclip_jax import train\n  return train\n"
  path = str(tmp_path / "x.py")
  with open(path, "w", encoding="utf-8") as f:
    f.write(src)
  assert ("hyperclip_jax.train", 4, True) in _imports("hyperclip_jax.x", path, fake)
  assert _cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycles():
  cycle = _cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_libraries_never_import_applications():
  entry_points = _entry_point_modules()
  assert f"{PACKAGE}.data.cli" in entry_points and f"{PACKAGE}.train" in entry_points
  bad = _library_violations(_graph(), set(APPLICATIONS) | entry_points)
  assert not bad, "libraries import applications:\n" + "\n".join(bad)
  # the check itself: a data module reaching into the evaluators is caught, the data CLI doing so is not
  fake = {f"{PACKAGE}.data.pp": {f"{PACKAGE}.evaluators.classnames": 7},
          f"{PACKAGE}.data.cli": {f"{PACKAGE}.evaluators.classnames": 3}}
  assert _library_violations(fake, set(APPLICATIONS) | entry_points) == [
      f"{PACKAGE}.data.pp (line 7) imports {PACKAGE}.evaluators.classnames"]


def _library_violations(graph: dict[str, dict[str, int]], applications: set[str]) -> list[str]:
  bad = []
  for name, edges in sorted(graph.items()):
    if not _within(name, LIBRARIES) or _within(name, applications):
      continue
    for target, line in sorted(edges.items()):
      if _within(target, applications):
        bad.append(f"{name} (line {line}) imports {target}")
  return bad


def test_imports_sit_at_module_top():
  """Only a heavy optional dependency may be imported inside a function (LOCAL_OK), or in DEFERRED modules."""
  modules = _modules()
  assert set(DEFERRED) <= set(modules)
  bad = []
  for name, path in sorted(modules.items()):
    if name in DEFERRED:
      continue
    for target, line, in_function in _imports(name, path, modules):
      if in_function and not _within(target, LOCAL_OK):
        bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target} inside a function")
  assert not bad, "move these imports to the module top:\n" + "\n".join(bad)


def test_config_depends_on_nothing_in_the_package():
  """config.py (loading, overrides, ConfigError) is the leaf every module may import; package checks are in
  validation.py."""
  assert _graph()[f"{PACKAGE}.config"] == {}
