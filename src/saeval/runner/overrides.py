"""``--set EVAL.FIELD=VALUE`` and config files (.toml, .yaml, .json) into nested override dicts.

VALUE is parsed as JSON and falls back to a plain string, so ``tpp.n_values=[2,5]``, ``core.compute_ce=false``
and ``shift.judge=embedding`` all work. Dots after the first name nested fields: ``tpp.probe.lr=1e-3``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saeval.errors import SaevalError


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=VALUE"`` -> (["a", "b", "c"], parsed VALUE)."""
    key, sep, value = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise SaevalError(f"--set {item!r}: write NAME.FIELD=VALUE, e.g. --set core.n_eval_tokens=4096")
    return parts, parse_value(value)


def nest(path: list[str], value: Any, into: dict[str, Any]) -> dict[str, Any]:
    node = into
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SaevalError(f"--set {'.'.join(path)}: {part} is already set to a plain value")
        node = child
    node[path[-1]] = value
    return into


def parse_sets(items: list[str] | None, min_depth: int = 2) -> dict[str, Any]:
    """Nested overrides from repeated ``--set`` items; ``min_depth=2`` asks for EVAL.FIELD, 1 allows FIELD."""
    out: dict[str, Any] = {}
    for item in items or []:
        path, value = parse_set(item)
        if len(path) < min_depth:
            raise SaevalError(f"--set {item!r}: name the eval too, e.g. --set core.{path[0]}=...")
        nest(path, value, out)
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """A run config from .toml, .yaml/.yml or .json, as a dict."""
    path = Path(path)
    if not path.is_file():
        raise SaevalError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise SaevalError(f"--config {path}: use a .toml, .yaml or .json file")
    except SaevalError:
        raise
    except Exception as err:  # tomllib, yaml and json each raise their own error types
        raise SaevalError(f"--config {path}: not valid {path.suffix[1:]} ({' '.join(str(err).split())[:200]})") from err
    if not isinstance(data, dict):
        raise SaevalError(f"--config {path}: expected a table/mapping at the top level")
    return data
