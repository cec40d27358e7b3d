"""The embedded default: SmolLM2-135M-Instruct, a middle residual hook, two small TopK SAEs (two seeds, so the
case study has a pair) trained on State of the Union text and cached, every registered eval but synthetic and
every study on them; and a small TopK SAE at the synthetic-activations paper's hook (blocks.1.hook_resid_pre) for
core and synthetic. Synthetic runs only there: the paper's ordering of perturbation steps is a claim about that
hook, and the middle layer showed none, at a minute of the demo's time.

The two demo SAEs are the faithful study's State of the Union SAEs of its "demo" preset (one cache entry, one
activation pass, both seeds trained together): the study then finds them trained, and only its own-text SAEs
are new. Their training settings are that preset's (sizes and schedule chosen by benchmarks/bench_demo_saes.py:
the two seeds share at least 30% of their features).
"""

from __future__ import annotations

import time
from pathlib import Path

from saeval.errors import SaevalError
from saeval.saes.train_config import TrainConfig
from saeval.studies.faithful.config import PRESETS as FAITHFUL_PRESETS
from saeval.studies.faithful.config import FaithfulConfig, FaithfulTrainConfig

DEMO_MODEL = "smollm2-135m"
DEMO_D_MODEL = 576  # SmolLM2-135M's width: sizes the demo dictionary (faithful's expansion x d_model)
DEMO_HOOK = "blocks.15.hook_resid_post"
DEMO_CORPUS = "sotu"
DEMO_PRESET = FAITHFUL_PRESETS["demo"]
DEMO_SEEDS = tuple(FaithfulConfig().seeds)
DEMO_TRAIN = TrainConfig(**FaithfulTrainConfig(**DEMO_PRESET["train"]).model_dump(),
                         d_sae=DEMO_PRESET["expansion"] * DEMO_D_MODEL)
# The synthetic eval's SAE (Giglemiani et al. perturb GPT-2 at blocks.1.hook_resid_pre): trained on the demo
# SAEs' contexts; its capture stops after block 0, so only its training costs time. Measured on 4,096 held-out
# SOTU tokens: explained variance 0.77 / 0.82 / 0.84 after 1 / 2 / 4 epochs, >99% of latents alive.
SYNTH_HOOK = "blocks.1.hook_resid_pre"
SYNTH_EVAL = "synthetic"
SYNTH_TRAIN = TrainConfig(architecture="topk", d_sae=1152, k=32, lr=3e-3, batch_size=256, epochs=4,
                          dead_tokens=50_000)


def demo_sae_name(seed: int) -> str:
    return f"smollm2-l15-topk{DEMO_TRAIN.d_sae}-s{seed}"


def synth_sae_name() -> str:
    return f"smollm2-l1pre-topk{SYNTH_TRAIN.d_sae}"


def demo_config() -> FaithfulConfig:
    from saeval.studies import get_study

    return get_study("faithful").config("demo")  # type: ignore[return-value]


def _renamed(sae, name: str):
    sae.cfg = sae.cfg.model_copy(update={"name": name})
    return sae


def demo_saes(host, seeds: tuple[int, ...] = DEMO_SEEDS) -> list:
    """The demo SAEs (the faithful study's run-corpus SAEs of its demo preset), trained and cached if missing,
    named demo_sae_name(seed)."""
    from saeval.studies.faithful.run import split_contexts, study_saes

    config = demo_config()
    if set(seeds) - set(config.seeds):
        raise SaevalError(f"the demo trains seeds {list(config.seeds)}, not {sorted(set(seeds))}")
    train_contexts, _ = split_contexts(host, DEMO_CORPUS, config)
    trained = dict(zip(config.seeds, study_saes(host, DEMO_HOOK, DEMO_CORPUS, config, train_contexts), strict=True))
    return [_renamed(trained[seed], demo_sae_name(seed)) for seed in seeds]


def synthetic_sae(host):
    """The small TopK SAE at SYNTH_HOOK, trained on the demo SAEs' training contexts, cached."""
    from saeval.data.cache import CacheKey
    from saeval.runner.fingerprints import corpus_fingerprint
    from saeval.studies.faithful.run import cached_saes, split_contexts

    config = demo_config()
    key = CacheKey("demo-saes", {
        "format": 1, "model": host.fingerprint(), "hook": SYNTH_HOOK,
        "corpus": [DEMO_CORPUS, corpus_fingerprint(DEMO_CORPUS)],
        "contexts": [config.train_tokens, config.eval_tokens, config.ctx_len, config.data_seed],
        "train": SYNTH_TRAIN.model_dump(mode="json")})
    return cached_saes(key, host, SYNTH_HOOK, DEMO_CORPUS, lambda: split_contexts(host, DEMO_CORPUS, config)[0],
                       [SYNTH_TRAIN], [synth_sae_name()], DEMO_MODEL)[0]


def run_demo(out_dir: Path, force: bool = False) -> Path:
    """Every registered eval but synthetic and every study with its "demo" preset on both demo SAEs, core and
    synthetic on the SAE at the paper's hook, then the HTML report and a console summary."""
    from saeval.evals.base import EVALS, EvalContext, get_eval
    from saeval.hosts import LanguageHost
    from saeval.report import build_report
    from saeval.report.summary import print_summary
    from saeval.runner import run_evals
    from saeval.studies import STUDIES, run_studies

    start = time.time()
    seconds: dict[str, float] = {}

    def lap(phase: str, since: float) -> float:
        now = time.time()
        seconds[phase] = round(now - since, 1)
        return now

    host = LanguageHost.load(DEMO_MODEL)
    t = lap("load model", start)
    saes = demo_saes(host)
    synth = synthetic_sae(host)
    t = lap("demo SAEs", t)
    get_eval("core")  # registers the built-in evals
    names = ["core", *sorted(n for n in EVALS if n not in ("core", SYNTH_EVAL))]
    ctx = EvalContext(host=host, hook=DEMO_HOOK, corpus=DEMO_CORPUS, preset="demo")
    run_evals(ctx, saes, names, out_dir, force=force)
    synth_ctx = EvalContext(host=host, hook=SYNTH_HOOK, corpus=DEMO_CORPUS, preset="demo", run_memo=ctx.run_memo)
    run_evals(synth_ctx, [synth], ["core", SYNTH_EVAL], out_dir, force=force)
    t = lap("evals", t)
    run_studies(ctx, saes, sorted(STUDIES), out_dir, force=force)
    t = lap("studies", t)
    path = build_report(Path(out_dir))
    lap("report", t)
    print(f"demo finished in {time.time() - start:.0f}s ({', '.join(f'{p} {s:.0f}s' for p, s in seconds.items())})")
    print_summary(Path(out_dir), path)
    return path
