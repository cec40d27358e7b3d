"""Synthetic-activations eval speed on SmolLM2-135M at the demo hook (blocks.15.hook_resid_post).

Prints, measured in this one run:
- perturbed activations per second for three ways of running them: the eval's cached single-position pass,
  prefix + run from the hook over the whole prompt (host.prefix / run_from), and a plain full forward with
  an intervention (the source's way), and their ratios;
- samples per second of the whole eval loop (demo preset sizes) and its time relative to the bare full
  forward passes those perturbations would need.

Usage: python benchmarks/bench_synthetic.py [--rows 256] [--samples 4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("SAEVAL_QUIET", "1")


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=256, help="perturbed activations per timing")
    parser.add_argument("--samples", type=int, default=4, help="samples of the eval loop to time")
    args = parser.parse_args()
    torch.manual_seed(0)

    from saeval.data.corpora import load_contexts
    from saeval.demo import DEMO_HOOK
    from saeval.evals.base import EvalContext
    from saeval.evals.synthetic import SPEC, LastPositionRunner, run
    from saeval.hosts import LanguageHost
    from saeval.saes.base import SAEConfig, create_sae

    host = LanguageHost.load("smollm2-135m")
    hook, final = DEMO_HOOK, f"blocks.{host.n_layers - 1}.hook_resid_post"
    tokens = load_contexts(host, "sotu", 10, 10, seed=0)[:1]
    base = host.capture(tokens, [hook])[hook][0, -1]
    acts_VD = base + 20 * torch.randn(args.rows, base.shape[0])

    runner = LastPositionRunner(host, hook)
    runner.prepare(tokens)
    t_cached = timed(lambda: runner.run(acts_VD))

    acts_BLD, state = host.prefix(tokens, hook)

    def from_hook():
        stacked = acts_BLD.repeat(args.rows, 1, 1)
        stacked[:, -1] = acts_VD
        resid = host.residual_from(state, stacked) if hasattr(host, "residual_from") else None
        return resid if resid is not None else host.run_from(state, stacked)

    t_from_hook = timed(from_hook)

    def full_forward():
        def replace(a):
            a = a.clone()
            a[:, -1] = acts_VD
            return a

        captures = {final: []}
        return host.forward(tokens.repeat(args.rows, 1), interventions={hook: replace}, captures=captures)

    t_full = timed(full_forward, repeats=1)
    print(f"perturbed activations/s at {hook} ({args.rows} rows, prompt of {tokens.shape[1]} tokens):")
    for label, t in (("cached single position", t_cached), ("prefix + run_from", t_from_hook),
                     ("full forward", t_full)):
        print(f"  {label:24s} {args.rows / t:8.1f} rows/s")
    print(f"  speed-up cached vs run_from: {t_from_hook / t_cached:.2f}x; cached vs full forward: "
          f"{t_full / t_cached:.2f}x")

    # The eval loop at demo sizes on a few samples (a random TopK SAE: the speed does not depend on it).
    sae = create_sae(SAEConfig(architecture="topk", d_in=host.d_model, d_sae=4608, k=32, hook_name=hook,
                               name="bench-random"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(4608, host.d_model), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    config = SPEC.config("demo", n_samples=args.samples, n_fit=600, n_density_tokens=4096)
    ctx = EvalContext(host=host, hook=hook, corpus="sotu", preset="demo")
    run(ctx, sae, config)  # warm-up: prompts, densities and the Gaussian fit land in ctx.memo
    start = time.perf_counter()
    result = run(ctx, sae, config)
    seconds = time.perf_counter() - start
    rows = sum(len(v) for v in result.details.ms_step_l2.per_sample.values())  # curves per target type
    per_sample_rows = (2 * 5 + 5) * config.n_steps  # abs + rel + plateau curves, at most n_steps each
    bare = per_sample_rows * args.samples / (args.rows / t_full)
    print(f"eval loop (demo sizes, {args.samples} samples, {rows} MS steps): {args.samples / seconds:.2f} "
          f"samples/s; {seconds:.1f}s vs {bare:.1f}s of bare full forwards for its <= {per_sample_rows} "
          f"perturbed activations per sample: ratio {seconds / bare:.2f}")


if __name__ == "__main__":
    main()
