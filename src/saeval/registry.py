"""A name -> spec registry that refuses a second entry under a taken name (as SAELens's does), and names the
valid choices when asked for an unknown one."""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from saeval.errors import SaevalError

SpecT = TypeVar("SpecT")


class Registry(dict[str, SpecT], Generic[SpecT]):
    def __init__(self, kind: str, builtins: str):
        super().__init__()
        self.kind = kind
        self.builtins = builtins  # the package whose import registers the built-in entries

    def add(self, spec: SpecT) -> SpecT:
        name = spec.name  # type: ignore[attr-defined]
        if name in self and self[name] is not spec:
            owner = self[name].config_cls.__module__  # type: ignore[attr-defined]
            raise SaevalError(f"{self.kind} {name!r} is already registered by {owner}")
        self[name] = spec
        return spec

    def named(self, name: str) -> SpecT:
        importlib.import_module(self.builtins)
        if name not in self:
            raise SaevalError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
        return self[name]
