"""Corpora, labeled sets, images, activation streams and the one cache primitive.

Nothing is imported eagerly: light modules here (budget) must stay importable without torch."""

from __future__ import annotations

from typing import Any

_LAZY = {"ActivationBatch": "activations", "ActivationCache": "activations", "stream_activations": "activations",
         "iter_documents": "corpora", "load_contexts": "corpora", "make_contexts": "corpora"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"saeval.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'saeval.data' has no attribute {name!r}")
