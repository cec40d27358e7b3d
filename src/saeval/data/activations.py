"""Activation streams at a hook: bounded-memory batches, and an optional safetensors disk cache reused across
SAEs evaluated on the same (model, hook, corpus, n_tokens)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saeval.assets import cache_dir
from saeval.errors import SaevalError


@dataclass
class ActivationBatch:
    tokens_BL: Tensor
    acts_BLD: Tensor
    mask_BL: Tensor  # True at ordinary (non-special) tokens

    def flat(self) -> Tensor:
        """Activations of ordinary tokens only, [n, D]."""
        return self.acts_BLD[self.mask_BL]


def check_finite(acts: Tensor, where: str) -> None:
    if not torch.isfinite(acts).all():
        raise SaevalError(f"activations at {where} contain NaN or inf: check the model dtype and inputs")


def stream_activations(host, hook: str, contexts_NL: Tensor, batch_size: int = 8) -> Iterator[ActivationBatch]:
    """One batch of contexts at a time, capture stopping after the hook's block."""
    for start in range(0, len(contexts_NL), batch_size):
        tokens = contexts_NL[start : start + batch_size]
        acts = host.capture(tokens, [hook])[hook].float()
        check_finite(acts, f"{host.name} {hook}")
        yield ActivationBatch(tokens, acts, host.ordinary_mask(tokens))


def _cache_key(host, hook: str, corpus: str, contexts_NL: Tensor) -> str:
    digest = hashlib.sha1(contexts_NL.numpy().tobytes()).hexdigest()[:12]
    label = f"{host.name}|{hook}|{corpus}|{tuple(contexts_NL.shape)}|{digest}"
    return hashlib.sha1(label.encode()).hexdigest()[:16]


class ActivationCache:
    """Ordinary-token activations at one hook over a set of contexts, stored as safetensors shards.

    Built once (streaming, bounded memory: one shard in RAM at a time), then read shard by shard."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.n_tokens: int = meta["n_tokens"]
        self.d_model: int = meta["d_model"]
        self.shards: list[Path] = [folder / name for name in meta["shards"]]

    @classmethod
    def build(
        cls, host, hook: str, corpus: str, contexts_NL: Tensor, batch_size: int = 8, shard_tokens: int = 65536,
        folder: Path | None = None, progress=None,
    ) -> ActivationCache:
        folder = folder or cache_dir() / "activations" / _cache_key(host, hook, corpus, contexts_NL)
        if (folder / "meta.json").exists():
            return cls(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # A private temp folder per builder: two processes building the same cache never share files.
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        shards: list[str] = []
        pending: list[Tensor] = []
        n_pending = total = 0

        def flush() -> None:
            nonlocal pending, n_pending
            name = f"shard_{len(shards):04d}.safetensors"
            save_file({"acts": torch.cat(pending).contiguous()}, str(tmp / name))
            shards.append(name)
            pending, n_pending = [], 0

        for batch in stream_activations(host, hook, contexts_NL, batch_size):
            flat = batch.flat()
            pending.append(flat)
            n_pending += len(flat)
            total += len(flat)
            if progress is not None:
                progress(len(batch.tokens_BL))
            if n_pending >= shard_tokens:
                flush()
        if pending:
            flush()
        meta = {"n_tokens": total, "d_model": host.d_model, "shards": shards, "model": host.name, "hook": hook,
                "corpus": corpus, "contexts": list(contexts_NL.shape)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same cache first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(folder)

    def __iter__(self) -> Iterator[Tensor]:
        for shard in self.shards:
            try:
                yield load_file(str(shard))["acts"]
            except Exception as err:  # safetensors raises several types on a damaged file
                raise SaevalError(f"activation cache shard {shard} is corrupt: delete {self.folder} and rerun") from err

    def load_all(self) -> Tensor:
        return torch.cat(list(self))
