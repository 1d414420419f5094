"""Regex rules, the project's one semantics (big_vision's): a parameter is named by its path with keys joined
by '/' (`img/stem/conv/kernel`), a rule list is `[(regex, value), ...]`, the regex must match the whole path
(`re.fullmatch`), the first matching rule wins, and every parameter must be matched by some rule.

The optimizer's weight-decay / lr-multiplier / frozen lists (optim.py) and the partition rules (sharding.py)
both read their rules through `param_paths` and `match_rules`.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax

Rules = Sequence[tuple[str, Any]]


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_paths(tree: Any) -> Any:
  """The tree of '/'-joined key paths of `tree`'s leaves, e.g. {'img': {'conv': {'kernel': 'img/conv/kernel'}}}.

  Works on arrays and abstract leaves (jax.ShapeDtypeStruct) alike.
  """
  return jax.tree_util.tree_map_with_path(lambda kp, _: "/".join(_key_str(k) for k in kp), tree)


def compile_rules(rules: Any, what: str) -> list[tuple[re.Pattern, Any]]:
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ValueError(f"{what} must be a list of (regex, value) pairs; got {rules!r}")
  compiled = []
  for rule in rules:
    if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2:
      raise ValueError(f"{what}: each rule must be a (regex, value) pair; got {rule!r}")
    pattern, value = rule
    try:
      compiled.append((re.compile(pattern), value))
    except (re.error, TypeError) as e:
      raise ValueError(f"{what}: {pattern!r} is not a valid regex ({e})") from None
  return compiled


def match_rules(paths: Any, rules: Rules, what: str) -> Any:
  """Maps each path string in the tree `paths` to the value of the first rule whose regex fullmatches it.

  `what` names the rule list in errors (e.g. 'config.optim.wd_mults'). A path that no rule matches is an
  error: rule lists must be exhaustive, so add a catch-all ('.*', value) at the end.
  """
  compiled = compile_rules(rules, what)

  def first_match(path: str) -> Any:
    for pattern, value in compiled:
      if pattern.fullmatch(path):
        return value
    raise ValueError(
        f"{what}: param {path!r} matches no rule; rules: {[p.pattern for p, _ in compiled]}. "
        f"Add a rule for it or a catch-all ('.*', value) at the end")

  return jax.tree.map(first_match, paths)
