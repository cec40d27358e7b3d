"""SAE architectures (one registry, strict about duplicates), readers per library (formats/), the trainer.

Imports are lazy so that light modules here (train_config) load without torch."""

from __future__ import annotations

from typing import Any

_LAZY = {"SAE": "base", "SAE_REGISTRY": "base", "SAEConfig": "base", "create_sae": "base",
         "load_sae": "formats", "save_sae": "formats", "wrap_sae": "adapter"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"saeval.saes.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'saeval.saes' has no attribute {name!r}")
