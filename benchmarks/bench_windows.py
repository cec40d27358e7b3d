"""Top-activated-windows pass vs bare activation capture on SmolLM2 (target: throughput ratio >= 0.8).

The bare pass only captures blocks.15.hook_resid_post batch by batch (what any SAE eval must do); the windows
pass also encodes with a demo SAE (d_sae 4608) and updates the top-10 mean/density/max buffers, the reservoir
and the non-activating pool, for 20 latents (the case study's load) and for all 4608 latents. Passes are
interleaved (bare, windows, bare, ...) so background load affects both alike; the best of the repeats counts.

    python benchmarks/bench_windows.py [--tokens 8192] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from saeval.data.corpora import load_contexts
from saeval.demo import DEMO_HOOK, demo_saes
from saeval.evals.windows import collect_windows
from saeval.hosts import LanguageHost


def bare(host, contexts, batch_size: int) -> float:
    start = time.time()
    for s in range(0, len(contexts), batch_size):
        host.capture(contexts[s : s + batch_size], [DEMO_HOOK])
    return time.time() - start


def windows(host, sae, latents, contexts, batch_size: int) -> float:
    start = time.time()
    collect_windows(host, [(sae, latents)], contexts, DEMO_HOOK, window=30, k=10, batch_size=batch_size,
                    reservoir=200, n_pool=400)
    return time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    host = LanguageHost.load("smollm2-135m")
    sae = demo_saes(host)[0]
    contexts = load_contexts(host, "sotu", args.tokens, 128, seed=0)
    n_tok = contexts.numel()
    few = sorted(torch.randperm(sae.d_sae)[:20].tolist())
    times: dict[str, list[float]] = {"bare": [], "20 latents": [], "all latents": []}
    for _ in range(args.repeats):
        times["bare"].append(bare(host, contexts, args.batch_size))
        times["20 latents"].append(windows(host, sae, few, contexts, args.batch_size))
        times["bare"].append(bare(host, contexts, args.batch_size))
        times["all latents"].append(windows(host, sae, list(range(sae.d_sae)), contexts, args.batch_size))
    best = {k: min(v) for k, v in times.items()}
    for k, t in best.items():
        print(f"{k:12s} {t:7.2f}s  {n_tok / t:8.0f} tokens/s")
    for k in ("20 latents", "all latents"):
        print(f"windows pass ({k}) throughput / bare capture: {best['bare'] / best[k]:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
