"""Nested dicts flattened to dotted keys, so two configs can be compared field by field and the differing
fields named (``config.n_eval_tokens``). Torch-free: the report and the runner's fingerprints both use it."""

from __future__ import annotations

from typing import Any


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c": [2]}``: dicts are walked, every other value (lists
    included) is a leaf; an empty dict gives no key."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}
