"""Class names and prompt templates of zero-shot tasks: shipped lists, demo tasks and user files.

  imagenet1k  CLIP's 1000 cleaned ImageNet class names and its 80 prompt templates
  cifar100    CIFAR-100's 100 fine labels (spaces for underscores) and CLIP's 18 CIFAR templates
  cifar10     CIFAR-10's 10 labels and the same 18 templates
  demo:TASK   a procedural demo task (demo_tasks()), with its own templates
  FILE        UTF-8, one class name per line; templates default to the single 'a photo of a {}.'

Template lists on their own (`templates(spec)`, config.evals templates=...): imagenet1k, cifar, default (the
single 'a photo of a {}.'), or a FILE with one template per line.

The lists live in evaluators/data/ (see its README for their sources) and ship with the package.
"""
from __future__ import annotations

import os
from typing import Sequence

from hyperclip_jax.data.sources import demo

_DATA = os.path.join(os.path.dirname(__file__), "data")
# name -> (class-name file, template file) under evaluators/data/
SHIPPED = {
    "imagenet1k": ("imagenet1k_classes.txt", "imagenet1k_templates.txt"),
    "cifar100": ("cifar100_classes.txt", "cifar_templates.txt"),
    "cifar10": ("cifar10_classes.txt", "cifar_templates.txt"),
}
DEFAULT_TEMPLATES = ("a photo of a {}.",)
TEMPLATES = {"imagenet1k": "imagenet1k_templates.txt", "cifar": "cifar_templates.txt"}


class ClassListError(ValueError):
  """A class or template list that cannot be used; the message names the line and the fix."""


def _read_lines(path: str, what: str) -> list[str]:
  """Non-empty stripped lines; a blank line before the last non-blank one is an error."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise ClassListError(f"{what} file {path!r} does not exist") from None
  except UnicodeDecodeError as e:
    raise ClassListError(f"{what} file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  lines = [l.strip() for l in text.splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  for i, line in enumerate(lines, 1):
    if not line:
      raise ClassListError(f"{what} file {path!r}: line {i} is empty; give one name per line, no blank lines")
  if not lines:
    raise ClassListError(f"{what} file {path!r} is empty; give one name per line")
  return lines


def read_classes(path: str) -> list[str]:
  """Class names from a UTF-8 file, one per line; duplicates and blank lines are errors."""
  names = _read_lines(path, "classes")
  seen: dict[str, int] = {}
  for i, name in enumerate(names, 1):
    if name in seen:
      raise ClassListError(f"classes file {path!r}: {name!r} on line {i} repeats line {seen[name]}; "
                           "class names must be unique")
    seen[name] = i
  return names


def read_templates(path: str) -> list[str]:
  """Prompt templates from a UTF-8 file, one per line, each with exactly one '{}' for the class name."""
  templates = _read_lines(path, "templates")
  for i, t in enumerate(templates, 1):
    if t.count("{}") != 1:
      raise ClassListError(f"templates file {path!r}: line {i} ({t!r}) must contain exactly one {{}} for the "
                           "class name, e.g. 'a photo of a {}.'")
  return templates


def resolve(spec: str, templates_file: str | None = None) -> tuple[list[str], list[str]]:
  """(class names, templates) for a --classes spec (see the module docstring) and an optional --templates file."""
  if spec in SHIPPED:
    classes_name, templates_name = SHIPPED[spec]
    names = read_classes(os.path.join(_DATA, classes_name))
    templates = read_templates(os.path.join(_DATA, templates_name))
  elif spec.startswith("demo:"):
    tasks = demo.demo_tasks(n_eval=1)
    task = tasks.get(spec[len("demo:"):])
    if task is None:
      raise ClassListError(f"--classes {spec!r}: demo task unknown; known: "
                           f"{', '.join('demo:' + t for t in tasks)}")
    names, templates = list(task.class_names), list(task.templates)
  elif os.path.isfile(spec):
    names, templates = read_classes(spec), list(DEFAULT_TEMPLATES)
  else:
    raise ClassListError(f"--classes {spec!r} is neither a file nor a known list; known: "
                         f"{', '.join(SHIPPED)}, demo:TASK, or a file with one class name per line")
  if templates_file:
    templates = read_templates(templates_file)
  return names, templates


def templates(spec: str) -> list[str]:
  """A template list: imagenet1k, cifar, default, or a file with one template (one '{}') per line."""
  if spec == "default":
    return list(DEFAULT_TEMPLATES)
  if spec in TEMPLATES:
    return read_templates(os.path.join(_DATA, TEMPLATES[spec]))
  if os.path.isfile(spec):
    return read_templates(spec)
  raise ClassListError(f"templates {spec!r} is neither a file nor a known list; known: "
                       f"{', '.join([*TEMPLATES, 'default'])}, or a file with one template per line")


def shipped(name: str) -> tuple[list[str], list[str]]:
  """The (class names, templates) of a shipped list: imagenet1k, cifar100 or cifar10."""
  if name not in SHIPPED:
    raise ClassListError(f"class list {name!r} is unknown; known: {', '.join(SHIPPED)}")
  return resolve(name)


__all__: Sequence[str] = ("ClassListError", "DEFAULT_TEMPLATES", "SHIPPED", "TEMPLATES", "read_classes",
                          "read_templates", "resolve", "shipped", "templates")
