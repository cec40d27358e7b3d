"""Self-explanation on SmolLM2: generations per second batched vs unbatched, and the scale sweep's rate.

Generation: G prompts (latents x scales of a demo SAE, the "Repeat X four times" template, 16 new tokens at
temperature 1) sampled in one batch vs one at a time, with the placeholder replacement active. Sweep: prompt
variants per second when all scales of a latent run as one stacked batch from the rep layer (run_from).

    python benchmarks/bench_explain.py [--latents 4] [--scales 4] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from saeval.demo import demo_saes
from saeval.evals.self_explanation.config import SelfExplanationConfig
from saeval.evals.self_explanation.explain import build_prompt, generate_with_vectors, scale_sweep, unit_decoder_rows
from saeval.hosts import LanguageHost


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", type=int, default=4)
    ap.add_argument("--scales", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("SAEVAL_QUIET", "1")
    host = LanguageHost.load("smollm2-135m")
    sae = demo_saes(host)[0]
    latents = list(range(0, 40 * args.latents, 40))
    dirs = unit_decoder_rows(sae, latents)
    cfg = SelfExplanationConfig()
    ids, pos = build_prompt(host, cfg.template)
    scales = torch.linspace(50, 150, args.scales)
    vectors = torch.stack([s * d for d in dirs for s in scales])
    prompts = [(ids, pos)] * len(vectors)
    G = len(prompts)

    def run(batch_size: int) -> tuple[float, float]:
        wall, cpu = time.time(), time.process_time()
        generate_with_vectors(host, prompts, vectors, cfg.rep_hook, args.new_tokens, 1.0, batch_size=batch_size)
        return time.time() - wall, time.process_time() - cpu

    (batched, batched_cpu), (single, single_cpu) = run(G), run(1)
    print(f"generations: {G} x {args.new_tokens} new tokens (prompt {len(ids)} tokens)")
    print(f"batched   {G / batched:6.3f} generations/s ({batched:.1f}s wall, {batched_cpu:.1f}s cpu)")
    print(f"unbatched {G / single:6.3f} generations/s ({single:.1f}s wall, {single_cpu:.1f}s cpu)")
    print(f"batched / unbatched generation throughput: {single / batched:.2f}x wall, "
          f"{single_cpu / batched_cpu:.2f}x cpu")

    sweep_cfg = SelfExplanationConfig(n_search_scales=16, batch_size=32)
    start = time.time()
    scale_sweep(host, dirs[:2], sweep_cfg)
    seconds = time.time() - start
    n = 2 * 16 + 2
    print(f"scale sweep: {n / seconds:.2f} prompt variants/s ({n} variants of {len(ids)} tokens in {seconds:.1f}s)")


if __name__ == "__main__":
    main()
