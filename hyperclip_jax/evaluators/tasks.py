"""Labelled eval data with its class list: the part zero-shot classification and the linear probe share."""
from __future__ import annotations

from typing import Any

from hyperclip_jax.evaluators import classnames, eval_data


def classes(s: dict[str, Any], source_names: Any, where: str) -> tuple[list[str], list[str]]:
  """(class names, templates) from the classes / templates settings, or the dataset's own label names."""
  try:
    if s["classes"]:
      names, templates = classnames.resolve(s["classes"])
    elif source_names:
      names, templates = list(source_names), list(classnames.DEFAULT_TEMPLATES)
    else:
      raise ValueError(f"{where}.classes is missing and the dataset has no label names; give a class list")
    if s["templates"]:
      templates = classnames.templates(s["templates"])
  except classnames.ClassListError as e:
    raise ValueError(f"{where}: {e}") from None
  return names, templates


def labelled(data: dict[str, Any], s: dict[str, Any], where: str) -> tuple[Any, list[str], list[str]]:
  """(labelled source, class names, templates); a TFDS dataset's label count must match the class list."""
  if data["name"] == "manifest":
    names, templates = classes(s, None, where)
    return eval_data.labelled_source(data, names), names, templates
  source = eval_data.labelled_source(data, None)
  names, templates = classes(s, source.class_names, where)
  if source.class_names and len(names) != len(source.class_names):
    raise ValueError(f"{where}.classes={s['classes']!r} has {len(names)} names but {data['dataset']} has "
                     f"{len(source.class_names)} labels")
  return source, names, templates
