"""Pieces the benchmark scripts share: a random TopK SAE of the demo's shape and the bare-forward speed reference.

Scripts run as ``python benchmarks/NAME.py``, so this folder is on sys.path and ``from _common import ...`` works.
"""

from __future__ import annotations

import time

import torch


def random_topk_sae(host, hook: str, seed: int, name: str, d_sae: int = 4608, k: int = 32):
    """A TopK SAE of the demo's width at ``hook``: unit random decoder rows (seeded), encoder = decoder
    transposed. Benchmarks whose cost hardly depends on the weights use it when no trained SAE is at hand."""
    from saeval.saes.base import SAEConfig, create_sae

    torch.manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="topk", d_in=host.d_model, d_sae=d_sae, k=k, hook_name=hook, name=name))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, host.d_model), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def bare_forward_seconds(host, repeats: int = 3) -> float:
    """Best of ``repeats`` bare forwards of 8 x 128 tokens (after a warm-up): the machine's speed reference
    that a benchmark's ratios are measured against in the same run."""
    tokens = torch.randint(100, 10_000, (8, 128), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        host.forward(tokens)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            host.forward(tokens)
            best = min(best, time.perf_counter() - start)
    return best
