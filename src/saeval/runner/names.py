"""Result folder names: one safe path component per SAE, distinct within a run."""

from __future__ import annotations

import re

from rich.console import Console

from saeval.errors import SaevalError
from saeval.results import STUDY_FOLDER

console = Console(stderr=True)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]")
IMPORTED_FOLDER = "imported"  # OUT/imported/ holds results imported from other tools (saeval.interop)
RESERVED = (STUDY_FOLDER, IMPORTED_FOLDER)


def safe_component(name: str) -> str:
    """``name`` as one path component: separators become ``__``, other odd characters ``_``, no leading dot, so
    an SAELens ``release/sae_id`` or an id holding ``../`` stays one folder under the output."""
    text = name.replace("\\", "/").replace(":", "/")
    text = "__".join(part for part in text.split("/") if part not in ("", ".", ".."))
    text = _UNSAFE.sub("_", text).lstrip(".")[:200] or "sae"
    return f"{text}_sae" if text in RESERVED else text  # OUT/studies/, OUT/imported/ are not SAE folders


def result_folders(named: list[tuple[str, str]]) -> list[str]:
    """A folder per SAE, from (name, weight fingerprint) pairs: its safe name, with a short weight hash added
    where two SAEs share a name."""
    names = [safe_component(name) for name, _ in named]
    out = []
    for (_, fp), name in zip(named, names, strict=True):
        if names.count(name) > 1:
            unique = f"{name}-{fp[:8]}"
            console.print(f"[yellow]note:[/yellow] several SAEs are named {name}; this one writes to {unique}/")
            name = unique
        out.append(name)
    if len(set(out)) < len(out):
        raise SaevalError("two SAEs have the same name and the same weights: give each SAE once")
    return out
