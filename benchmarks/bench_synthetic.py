"""Synthetic-activations eval speed on SmolLM2-135M at the demo hook (blocks.15.hook_resid_post).

Prints, measured in this one run:
- perturbed activations per second for three ways of running them: the eval's cached single-position pass,
  prefix + run from the hook over the whole prompt (host.prefix / run_from), and a plain full forward with
  an intervention (the source's way), and their ratios;
- samples per second of the eval at demo sizes (a cold first SAE, and a second SAE reusing the memo) and
  its time relative to the bare full forward passes its perturbed activations would need.

Usage: python benchmarks/bench_synthetic.py [--rows 256] [--samples 4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import random_topk_sae

os.environ.setdefault("SAEVAL_QUIET", "1")


def timed(fns: dict, repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats`` interleaved timings per function (after a warm-up): the least disturbed by other
    work on a shared machine."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=256, help="perturbed activations per timing")
    parser.add_argument("--samples", type=int, default=4, help="samples of the eval to time (0: skip)")
    args = parser.parse_args()
    torch.manual_seed(0)

    from saeval.data.corpora import load_contexts
    from saeval.demo import DEMO_HOOK
    from saeval.evals.base import EvalContext
    from saeval.evals.synthetic import SPEC
    from saeval.evals.synthetic.run import LastPositionRunner, run
    from saeval.hosts import LanguageHost

    host = LanguageHost.load("smollm2-135m")
    hook, final = DEMO_HOOK, f"blocks.{host.n_layers - 1}.hook_resid_post"
    tokens = load_contexts(host, "sotu", 10, 10, seed=0)[:1]
    base = host.capture(tokens, [hook])[hook][0, -1]
    acts_VD = base + 20 * torch.randn(args.rows, base.shape[0])

    runner = LastPositionRunner(host, hook)
    runner.prepare(tokens)

    acts_BLD, state = host.prefix(tokens, hook)

    def from_hook():
        stacked = acts_BLD.repeat(args.rows, 1, 1)
        stacked[:, -1] = acts_VD
        return host.residual_from(state, stacked)

    def full_forward():
        def replace(a):
            a = a.clone()
            a[:, -1] = acts_VD
            return a

        captures = {final: []}
        return host.forward(tokens.repeat(args.rows, 1), interventions={hook: replace}, captures=captures)

    best = timed({"cached": lambda: runner.run(acts_VD), "from_hook": from_hook, "full": full_forward})
    t_cached, t_from_hook, t_full = best["cached"], best["from_hook"], best["full"]
    print(f"perturbed activations/s at {hook} ({args.rows} rows, prompt of {tokens.shape[1]} tokens):")
    for label, t in (("cached single position", t_cached), ("prefix + run_from", t_from_hook),
                     ("full forward", t_full)):
        print(f"  {label:24s} {args.rows / t:8.1f} rows/s")
    print(f"  speed-up cached vs run_from: {t_from_hook / t_cached:.2f}x; cached vs full forward: "
          f"{t_full / t_cached:.2f}x")

    # The eval at demo sizes on a few samples with random TopK SAEs (the speed does not depend on the SAE):
    # a cold run (prompts, densities, Gaussian) and a second SAE at the same hook (memoised prompts and the
    # SAE-independent real/random curves), as in `saeval demo`.
    if args.samples < 2:
        return
    config = SPEC.config("demo", n_samples=args.samples)
    ctx = EvalContext(host=host, hook=hook, corpus="sotu", preset="demo")
    per_sample_rows = 2 * 5 * config.n_steps  # MS curves + plateau curves, at most n_steps each
    bare_per_sample = per_sample_rows / (args.rows / t_full)
    for label, seed in (("cold (first SAE)", 0), ("warm (second SAE)", 1)):
        start = time.perf_counter()
        run(ctx, random_topk_sae(host, hook, seed, f"bench-random-{seed}"), config)
        seconds = time.perf_counter() - start
        bare = bare_per_sample * args.samples
        print(f"eval {label}, demo sizes, {args.samples} samples: {args.samples / seconds:.3f} samples/s; "
              f"{seconds:.1f}s vs {bare:.1f}s of bare full forwards for the <= {per_sample_rows} perturbed "
              f"activations per sample: ratio {seconds / bare:.2f}")


if __name__ == "__main__":
    main()
