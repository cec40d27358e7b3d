"""The one atomic writer: every file saeval leaves on disk goes through a private temp name and a rename.

A reader never sees a half-written file, two writers never share a temp name, and results are readable by
others (0644, not mkstemp's 0600). JSON is strict: NaN and infinities become null, since bare ``NaN`` is not
JSON and no other tool can read it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE_MODE = 0o644


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively), so ``json.dump`` stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


@contextmanager
def atomic_path(path: Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a private temp path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, payload: Any, indent: int | None = 1) -> Path:
    """Strict JSON (null for NaN/inf), written through a private temp file and a rename."""
    text = json.dumps(strict_json(payload), indent=indent, allow_nan=False)
    return write_text_atomic(path, text)
