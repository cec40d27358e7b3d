"""Content fingerprints: results and caches are addressed by what made them, never by a name or a path.

Digests are BLAKE2b over the raw bytes, truncated to 16 hex digits (64 bits: collisions are not a concern at
the scale of one user's results).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

DIGEST = 16


def text_digest(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=DIGEST // 2).hexdigest()


def json_digest(value: Any) -> str:
    """Digest of a JSON value with sorted keys, so equal configs hash equal whatever their field order."""
    return text_digest(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


def tensors_fingerprint(named_tensors) -> str:
    """Digest of (name, dtype, shape, bytes) of each tensor, in name order."""
    import torch

    h = hashlib.blake2b(digest_size=DIGEST // 2)
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def module_fingerprint(module) -> str:
    """Digest of every parameter and buffer of an nn.Module (tied weights counted once)."""
    seen: dict[int, str] = {}
    items = []
    for name, tensor in module.state_dict(keep_vars=False).items():
        key = tensor.data_ptr() if tensor.numel() else id(tensor)
        items.append((name if key not in seen else f"{name}->{seen[key]}", tensor if key not in seen else tensor[:0]))
        seen.setdefault(key, name)
    return tensors_fingerprint(items)


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """Content digest of a file, memoised per process by (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.blake2b(digest_size=DIGEST // 2)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def tree_digest(path: Path, patterns: tuple[str, ...] = ("*",)) -> str:
    """Content digest of a file, or of every file under a folder matching ``patterns`` (relative names too)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    files = sorted({f for p in patterns for f in path.rglob(p) if f.is_file()})
    return json_digest([[str(f.relative_to(path)), file_digest(f)] for f in files if not f.name.startswith(".")])

