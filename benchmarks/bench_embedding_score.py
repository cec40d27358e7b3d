"""embedding_score with the demo preset (32 latents drawn among those with enough activating windows, their
self-explanations, AUROCs with a bootstrap interval) on the two demo SAEs, against a bare SmolLM2 forward.

Prints, per SAE, the eval's seconds split into phases (windows pass, self-explanation sweep and generations,
window embeddings), the same in bare-forward units (a forward of 8 x 128 tokens, timed in the same process
before each SAE, so the ratios hold on a loaded machine), seconds per scored latent, and the mean AUROC with its
95% interval. The second SAE reuses the run's forward to the hook and the window embeddings (ctx.memo), so its
windows pass shows what sharing saves.

    python benchmarks/bench_embedding_score.py [--n-latents 32]
"""

from __future__ import annotations

import argparse
import time

from _common import bare_forward_seconds

import saeval.evals.embedding_score.run as emb_run
import saeval.evals.self_explanation.explain as explain
from saeval.demo import DEMO_CORPUS, DEMO_HOOK, demo_saes
from saeval.evals import get_eval
from saeval.evals.base import EvalContext
from saeval.hosts import LanguageHost

PHASES: dict[str, float] = {}


def timed(module, name: str) -> None:
    """Accumulate the seconds spent in ``module.name`` under PHASES[name]."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.time()
        try:
            return inner(*args, **kwargs)
        finally:
            PHASES[name] = PHASES.get(name, 0.0) + time.time() - start

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-latents", type=int, default=32)
    args = parser.parse_args()
    for module, name in ((explain, "scale_sweep"), (explain, "generate_with_vectors"),
                         (emb_run, "collect_windows"), (emb_run, "embedding_scores")):
        timed(module, name)
    host = LanguageHost.load("smollm2-135m")
    spec = get_eval("embedding_score")
    config = spec.config("demo", n_latents=args.n_latents)
    ctx = EvalContext(host=host, hook=DEMO_HOOK, corpus=DEMO_CORPUS, preset="demo")
    for sae in demo_saes(host):
        unit = bare_forward_seconds(host, repeats=2)
        PHASES.clear()
        start = time.time()
        result = spec.run_fn()(ctx, sae, config)
        total = time.time() - start
        m = result.metrics
        phases = ", ".join(f"{k} {v:.1f}s ({v / unit:.1f})" for k, v in PHASES.items())
        print(f"{sae.name} (d_sae {sae.d_sae}): {total:.1f}s = {total / unit:.1f} bare forwards of {unit:.2f}s; "
              f"{total / max(m.n_latents, 1):.2f}s per latent; {phases}")
        ci = "n/a" if m.mean_auroc_ci_low is None else f"[{m.mean_auroc_ci_low:.3f}, {m.mean_auroc_ci_high:.3f}]"
        mean = "n/a" if m.mean_auroc is None else f"{m.mean_auroc:.3f}"
        print(f"  mean AUROC {mean} 95% CI {ci} over {m.n_scored} of {m.n_latents} latents "
              f"({m.n_eligible} eligible); warnings: {result.warnings}")


if __name__ == "__main__":
    main()
