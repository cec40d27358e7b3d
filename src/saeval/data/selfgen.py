"""The host's own text: unconditional samples from a BOS prompt at temperature 1 (FaithfulSAE, methods.md C2).

Samples are generated in batches (``host.sample_unconditional``), cut before the first special token (end of
text). Each batch is one record of token ids in saeval.data.cache (kind ``selfgen``), keyed by (model
fingerprint, seed, temperature, sample length, batch size, batch index) and written as soon as it is sampled:
a run killed mid-generation resumes at the first missing batch, a later request for more tokens adds batches,
and the same request always returns the same tokens (batch b is sampled with seed ``seed * 1_000_003 + b``).
``load_contexts(host, "self-generated", n_tokens, ctx_len, seed)`` draws its contexts from these samples.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import Tensor

from saeval.data.cache import CacheKey, read_record, write_record
from saeval.errors import SaevalError
from saeval.progress import progress_bar

CORPUS_NAME = "self-generated"
FORMAT = 3  # 3: sampled by LanguageHost.sample_unconditional


def batch_key(host, seed: int, temperature: float, sample_len: int, batch_size: int, batch: int) -> CacheKey:
    # Keyed by the model's content (weights, config, tokenizer), not its name. Batch b is sampled with its own
    # seed, so the batch size and the sampler (LanguageHost.sample_unconditional's loop, inverse-CDF sampling)
    # decide which samples come out: both are part of the key.
    return CacheKey("selfgen", {"format": FORMAT, "model": host.fingerprint(), "seed": seed,
                                "temperature": temperature, "sample_len": sample_len, "batch_size": batch_size,
                                "sampler": "inverse-cdf-unconditional-loop", "batch": batch})


def _cut(row: Tensor, special: Tensor) -> Tensor:
    """Tokens before the first special token (EOS, pad): the rest is not the model's text."""
    stop = torch.isin(row, special).nonzero()
    return row[: int(stop[0])] if len(stop) else row


def _sample(host, batch_size: int, sample_len: int, temperature: float, seed: int) -> list[list[int]]:
    # The same tokens as host.generate from a BOS prompt cut by _cut, without computing rows that have ended.
    return host.sample_unconditional(batch_size, sample_len, temperature, seed, stop_ids=host.special_ids)


def generate_documents(
    host,
    n_tokens: int,
    sample_len: int = 127,
    batch_size: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
    min_doc_tokens: int = 1,
) -> list[Tensor]:
    """At least ``n_tokens`` tokens of unconditional samples (each up to ``sample_len`` tokens), cached."""
    if sample_len < 1 or batch_size < 1:
        raise SaevalError("self-generated corpus needs sample_len >= 1 and batch_size >= 1")
    docs: list[Tensor] = []
    total = batch = 0
    with ExitStack() as stack:
        bar = task = None
        while total < n_tokens:
            key = batch_key(host, seed, temperature, sample_len, batch_size, batch)
            stored = read_record(key)
            if stored is None:
                if bar is None:  # a bar only when something is generated, started at what the cache held
                    bar = stack.enter_context(progress_bar())
                    task = bar.add_task(f"self-generating {n_tokens} tokens ({host.name}, T={temperature})",
                                        total=n_tokens)
                    bar.advance(task, total)
                stored = {"docs": _sample(host, batch_size, sample_len, temperature, seed * 1_000_003 + batch)}
                write_record(key, stored)  # before the next batch: an interrupted run keeps what it generated
            batch += 1
            for row in stored["docs"]:
                doc = torch.tensor(row, dtype=torch.int32)
                docs.append(doc)
                if len(doc) >= min_doc_tokens:
                    total += len(doc)
                    if bar is not None:
                        bar.advance(task, len(doc))
            if batch > 50 and total == 0:
                raise SaevalError(f"{host.name} samples end immediately from BOS: it cannot self-generate text")
    return docs


def load_selfgen_contexts(
    host, n_tokens: int, ctx_len: int = 128, seed: int = 0, batch_size: int = 128, temperature: float = 1.0
) -> Tensor:
    """Contexts [BOS, ctx_len - 1 sampled tokens] holding about ``n_tokens`` tokens of the host's own text.

    Each sample is generated ctx_len - 1 tokens long from BOS, so one complete sample fills one context;
    samples that stopped early (end of text) are skipped. ``seed`` selects the samples, so a train seed and
    an eval seed see different text."""
    from saeval.data.corpora import make_contexts

    n_contexts = max(1, -(-n_tokens // ctx_len))
    body = ctx_len - 1
    docs: list[Tensor] = []
    need = n_contexts * body
    while True:
        docs = generate_documents(host, need, body, batch_size, temperature, seed, min_doc_tokens=body)
        full = [d for d in docs if len(d) >= body]
        if len(full) >= n_contexts:
            break
        need += (n_contexts - len(full)) * body
    # The first n_contexts complete samples: the result does not depend on how much the cache already holds.
    return make_contexts(full[:n_contexts], ctx_len, n_contexts, host.bos_id, seed)
