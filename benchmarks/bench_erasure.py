"""Concept-erasure benchmark on SmolLM2-135M (CPU), demo presets of TPP, SCR and SHIFT.

Prints, per eval: the shared setup (activations + probes, computed once per model/hook/dataset and cached on
disk), the per-SAE seconds for each SAE (it only encodes the cached tokens), and the per-SAE time relative to
one forward pass of the model (up to the hook, and full depth) over the same examples, all measured in this
run. A private empty cache folder makes the setup honest (nothing precomputed); the full-depth pass is timed
on a sample of the examples and scaled.

Uses the cached demo SAEs when they exist (it does not train them), else random TopK SAEs of the same shape.
Usage: python benchmarks/bench_erasure.py [--evals tpp,scr,shift] [--saes 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import random_topk_sae

from saeval.analysis import erasure
from saeval.analysis.erasure import tokenize_examples
from saeval.evals.base import EvalContext
from saeval.evals.scr import SPEC as SCR
from saeval.evals.shift import SPEC as SHIFT
from saeval.evals.tpp import SPEC as TPP
from saeval.hosts import LanguageHost
from saeval.results import write_result

HOOK = "blocks.15.hook_resid_post"
SPECS = {spec.name: spec for spec in (TPP, SCR, SHIFT)}


def saes_for(host, n: int) -> tuple[list, str]:
    from saeval.demo import DEMO_SEEDS, demo_saes

    if n <= len(DEMO_SEEDS):  # trained (about 40 s) and cached when missing
        return demo_saes(host, DEMO_SEEDS[:n]), "demo SAEs"
    out = [random_topk_sae(host, HOOK, s, f"random-topk-{s}") for s in range(n)]
    return out, "random TopK SAEs (demo SAEs not cached)"


def forward_seconds(host, texts: list[str], ctx_len: int, full: bool, sample: int = 96) -> float:
    """Seconds of one pass over the texts (batches of 16 sorted by length), to the hook or full depth."""
    ids = sorted(tokenize_examples(host, texts, ctx_len), key=len)
    if full:  # a sample, scaled: the full pass is the yardstick, not the thing measured
        step = max(1, len(ids) // sample)
        chosen = ids[::step]
        scale = len(ids) / len(chosen)
    else:
        chosen, scale = ids, 1.0
    start = time.time()
    for b in range(0, len(chosen), 16):
        rows = chosen[b : b + 16]
        width = max(map(len, rows))
        tokens = torch.full((len(rows), width), host.pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        if full:
            host.forward(tokens, mask)
        else:
            host.capture(tokens, [HOOK], attention_mask_BL=mask)
    return (time.time() - start) * scale


def headline(name: str, metrics: dict) -> str:
    keys = {"tpp": ["tpp_threshold_20_total_metric", "tpp_threshold_20_intended_diff_only",
                    "tpp_threshold_20_unintended_diff_only"],
            "scr": ["scr_metric_threshold_20", "scr_dir1_threshold_20", "scr_dir2_threshold_20"],
            "shift": ["shift_score", "shift_ablate_all_candidates", "n_judged_spurious", "judge_agreement_with_probes"]}
    return ", ".join(f"{k}={metrics.get(k):.4f}" if isinstance(metrics.get(k), float) else f"{k}={metrics.get(k)}"
                     for k in keys.get(name, []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--evals", default="tpp,scr,shift")
    parser.add_argument("--saes", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the result JSON files here (saeval report)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    host = LanguageHost.load("smollm2-135m")
    saes, kind = saes_for(host, args.saes)
    print(f"SmolLM2-135M {HOOK}, {kind}: {[s.name for s in saes]}")
    with tempfile.TemporaryDirectory() as tmp:
        erasure.cache_dir = lambda: Path(tmp)  # fresh activation and probe cache: setup is measured for real
        ctx = EvalContext(host=host, hook=HOOK, preset="demo")
        for name in args.evals.split(","):
            spec = SPECS[name]
            config = spec.config("demo")
            run = spec.run_fn()
            per_sae, setup, texts = [], 0.0, []
            for sae in saes:
                start = time.time()
                result = run(ctx, sae, config)
                total = time.time() - start
                setup += result.details.setup_seconds
                per_sae.append(total - result.details.setup_seconds)
                result.seconds = round(total, 2)
                if args.out:
                    write_result(Path(args.out), result)
                print(f"  {name} {sae.name}: {headline(name, result.metrics.model_dump())}", flush=True)
            for key, value in ctx.memo.items():
                if key[0] in ("tpp-task", "pair-setup") and (key[1] in config.datasets):
                    texts += (value.texts if key[0] == "tpp-task" else value.task.texts)
            texts = list(dict.fromkeys(texts))
            to_hook = forward_seconds(host, texts, config.ctx_len, full=False)
            full = forward_seconds(host, texts, config.ctx_len, full=True)
            sae_s = ", ".join(f"{s:.1f}" for s in per_sae)
            print(f"{name}: {len(texts)} examples; setup {setup:.1f}s (shared, cached on disk); per SAE [{sae_s}]s; "
                  f"forward to the hook {to_hook:.1f}s, full forward {full:.1f}s; per-SAE / forward-to-hook "
                  f"{sum(per_sae) / len(per_sae) / to_hook:.2f}, per-SAE / full forward "
                  f"{sum(per_sae) / len(per_sae) / full:.2f}")


if __name__ == "__main__":
    main()
