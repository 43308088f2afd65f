"""Command-line overrides of an experiment file, Hydra style: ``train.epochs=1 grid.seed=[0]``.

Each override is ``dotted.path=value``. The value is read as YAML (``1`` an integer, ``[0, 1]`` a
list, ``{kind: ramp, ...}`` a mapping, ``mnist`` a string) and set in the file's parsed mapping
before validation, so an override is checked exactly as the same text in the file would be.
Missing mappings on the path are created; a number selects a list item (``extra.0.set.lr=0.01``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from invssl.errors import ConfigError


def parse(item: str) -> tuple[list[str], Any]:
    """``"grid.seed=[0, 1]"`` -> ``(["grid", "seed"], [0, 1])``."""
    path, sep, text = item.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. train.epochs=1")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {item!r}: cannot read the value as YAML: {problem}") from None
    return [k.strip() for k in keys], value


def apply(raw: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with every override set, in order (a later one wins)."""
    import copy

    out = copy.deepcopy(raw)
    for item in items:
        keys, value = parse(item)
        node: Any = out
        for depth, key in enumerate(keys[:-1]):
            node = _child(node, key, item, ".".join(keys[: depth + 1]))
        _set(node, keys[-1], value, item)
    return out


def _child(node: Any, key: str, item: str, where: str) -> Any:
    if isinstance(node, dict):
        if node.get(key) is None:
            node[key] = {}
        return node[key]
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    raise ConfigError(f"override {item!r}: {where} is not a mapping in the experiment file")


def _set(node: Any, key: str, value: Any, item: str) -> None:
    if isinstance(node, dict):
        node[key] = value
    elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
        node[int(key)] = value
    else:
        raise ConfigError(f"override {item!r}: cannot set {key!r} there (not a mapping)")
