"""Activation streams at a hook: bounded-memory batches, and an optional safetensors disk cache reused across
SAEs evaluated on the same (model content, hook, context tokens)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saeval.data.cache import CacheKey, Verify, get_or_build
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


def run_activations(memo: dict, host, hook: str) -> dict[str, Tensor]:
    """A run's activations at ``hook`` ([B, L, D] as ``host.capture`` returns them), by batch of tokens
    (:func:`tokens_key`), kept in the run's ``memo``: a pass that finds its batch here skips the forward. The
    windows passes and core's passes fill and read it through :class:`SharedCapture`."""
    return memo.setdefault(("hook-activations", id(host), hook), {})


def tokens_key(tokens_BL: Tensor) -> str:
    """A batch of tokens by content, dtype and shape."""
    from saeval.hashing import tensors_fingerprint

    return tensors_fingerprint([("tokens", tokens_BL)])


class SharedCapture:
    """The host with its captures at ``hook`` kept in ``store`` (a run's :func:`run_activations`) by the content of
    each batch of tokens: a second pass over the same contexts (another SAE, another eval at the same hook with
    the same contexts and batch size) finds them there and runs no forward. Any other call goes to the host."""

    def __init__(self, host, hook: str, store: dict[str, Tensor]):
        self._host, self._hook, self._store = host, hook, store

    def __getattr__(self, name: str):
        return getattr(self._host, name)

    def capture(self, tokens_BL: Tensor, hooks, attention_mask_BL: Tensor | None = None,
                interventions=None) -> dict[str, Tensor]:
        if list(hooks) != [self._hook] or attention_mask_BL is not None or interventions:
            return self._host.capture(tokens_BL, hooks, attention_mask_BL, interventions)
        key = tokens_key(tokens_BL)
        if key not in self._store:
            self._store[key] = self._host.capture(tokens_BL, hooks)[self._hook]
        return {self._hook: self._store[key]}


def stream_activations(host, hook: str, contexts_NL: Tensor, batch_size: int = 8) -> Iterator[ActivationBatch]:
    """One batch of contexts at a time, capture stopping after the hook's block."""
    for start in range(0, len(contexts_NL), batch_size):
        tokens = contexts_NL[start : start + batch_size]
        acts = host.capture(tokens, [hook])[hook].float()
        check_finite(acts, f"{host.name} {hook}")
        yield ActivationBatch(tokens, acts, host.ordinary_mask(tokens))


def activation_key(host, hook: str, contexts_NL: Tensor) -> CacheKey:
    """What the activations depend on: the model's content (weights, config, tokenizer), the device kind and
    dtype it runs in, the hook, and the context tokens themselves (the corpus name is only a label)."""
    contexts = contexts_NL.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=8)
    h.update(contexts.numpy().tobytes())
    device, dtype = getattr(host, "device", None), getattr(host, "dtype", None)
    return CacheKey("activations", {
        "format": 2,
        "model": host.fingerprint() if hasattr(host, "fingerprint") else host.name,
        "device": None if device is None else str(getattr(device, "type", device)),
        "dtype": None if dtype is None else str(dtype),
        "hook": hook,
        "contexts": {"shape": list(contexts.shape), "dtype": str(contexts.dtype), "blake2b": h.hexdigest()},
    })


class ActivationCache:
    """Ordinary-token activations at one hook over a set of contexts, stored as safetensors shards.

    Built once (streaming, bounded memory: one shard in RAM at a time) through saeval.data.cache, so two
    processes never compute it twice and a damaged shard is found and rebuilt; then read shard by shard."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.n_tokens: int = meta["n_tokens"]
        self.d_model: int = meta["d_model"]
        self.shards: list[Path] = [folder / name for name in meta["shards"]]

    @classmethod
    def build(
        cls, host, hook: str, corpus: str, contexts_NL: Tensor, batch_size: int = 8, shard_tokens: int = 65536,
        folder: Path | None = None, progress=None, verify: Verify = "full",
    ) -> ActivationCache:
        """The cache for (host, hook, contexts), computed when absent; ``folder`` overrides the keyed place."""

        def write(tmp: Path) -> None:
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

        key = folder if folder is not None else activation_key(host, hook, contexts_NL)
        return cls(get_or_build(key, write, verify=verify))

    def __iter__(self) -> Iterator[Tensor]:
        for shard in self.shards:
            try:
                yield load_file(str(shard))["acts"]
            except Exception as err:  # safetensors raises several types on a damaged file
                raise SaevalError(f"activation cache shard {shard} is corrupt: rerun to rebuild it") from err

    def load_all(self) -> Tensor:
        return torch.cat(list(self))
