"""FaithfulSAE's data comparison (arXiv 2506.17673, methods.md C2): SAEs trained on the host's own text vs on a
human corpus.

Two SAEs (two seeds) are trained with one config on each corpus: the run's corpus (State of the Union by
default) and the host's unconditional samples ("self-generated": BOS prompt, temperature 1). Each corpus's
contexts are split once into disjoint training and held-out parts. The study reports:

- the shared feature ratio and top-1 ratio between the two seeds of each corpus (FaithfulSAE's stability claim:
  SAEs trained on the model's own text share more features across seeds), and between the two corpora;
- the cross-data table: each corpus's seed-0 SAE evaluated on the held-out part of both corpora (explained
  variance, FaithfulSAE's 1 - Var(x - xhat) / Var(x), L2 loss, CE increase when spliced in).

Each corpus's activations are captured once and its two SAEs trained together from them
(saeval.saes.train.train_saes); both are cached in one entry (saeval.data.cache, kind ``faithful-saes``) per
(model fingerprint, hook, corpus content, sizes, training config, seeds). The demo's SAEs are the run's-corpus
SAEs of the "demo" preset (saeval.demo.demo_saes), so the demo trains them once for its evals and this study.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from saeval.analysis.matching import cross_data_table, match_saes
from saeval.data.activations import ActivationCache
from saeval.data.cache import CacheKey, get_or_build
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.saes.train import train_saes
from saeval.saes.train_config import TrainConfig
from saeval.studies.base import envelope
from saeval.studies.faithful.config import (
    SELF,
    CrossDataRow,
    FaithfulConfig,
    FaithfulDetails,
    FaithfulMetrics,
    FaithfulResult,
)
from saeval.studies.records import PairMatch


def split_contexts(host, corpus: str, config: FaithfulConfig) -> tuple[Tensor, Tensor]:
    """Disjoint (training, held-out) contexts of ``corpus``: one seeded draw, cut in two."""
    n_train = -(-config.train_tokens // config.ctx_len)
    n_eval = -(-config.eval_tokens // config.ctx_len)
    contexts = load_contexts(host, corpus, (n_train + n_eval) * config.ctx_len, config.ctx_len, config.data_seed)
    return contexts[:n_train], contexts[n_train : n_train + n_eval]


def sae_train_config(host, config: FaithfulConfig) -> TrainConfig:
    """The SAEs' training config: ``config.train`` with d_sae = expansion x the host's width."""
    return TrainConfig(**config.train.model_dump(), d_sae=config.expansion * host.d_model)


def _saes_key(host, hook: str, corpus: str, config: FaithfulConfig) -> CacheKey:
    """The cache key of one corpus's trained SAEs (both seeds: they are trained together, from one pass)."""
    from saeval.runner.fingerprints import corpus_fingerprint

    return CacheKey("faithful-saes", {
        "format": 2, "model": host.fingerprint(), "hook": hook, "corpus": [corpus, corpus_fingerprint(corpus)],
        "sizes": [config.train_tokens, config.eval_tokens, config.ctx_len], "data_seed": config.data_seed,
        "temperature": config.temperature, "train": sae_train_config(host, config).model_dump(mode="json"),
        "seeds": list(config.seeds)})


def _sae_name(host, corpus: str, config: FaithfulConfig, key: CacheKey, seed: int) -> str:
    """The SAE's name, also the folder inside the cache entry that holds it."""
    from saeval.runner.names import safe_component

    tag = "selfgen" if corpus == SELF else Path(corpus).name.replace(":", "-")
    return safe_component(f"{host.name}-{tag}-{config.train_tokens}-s{seed}-{key.digest[:10]}")


def _sae_folder(host, hook: str, corpus: str, config: FaithfulConfig, seed: int) -> Path:
    """Where the SAE of ``seed`` lies once ``study_saes`` has built it."""
    key = _saes_key(host, hook, corpus, config)
    return key.path / _sae_name(host, corpus, config, key, seed)


def cached_saes(key: CacheKey, host, hook: str, corpus: str, contexts: Callable[[], Tensor],
                configs: list[TrainConfig], names: list[str], model_name: str | None = None) -> list:
    """The SAEs of ``configs`` trained together (saes.train.train_saes) on the activations of ``contexts()`` at
    ``hook``, captured once, and cached in one entry under ``key``, a folder per name; ``contexts`` is called
    only when the entry is missing."""
    from saeval.saes.formats import load_sae, save_sae

    def train(tmp: Path) -> None:
        acts = ActivationCache.build(host, hook, corpus, contexts())
        trained = train_saes(acts, acts.n_tokens, host.d_model, configs, hook, model_name or host.name, names)
        for (sae, _), name in zip(trained, names, strict=True):
            save_sae(sae, tmp / name)

    entry = get_or_build(key, train)
    return [load_sae(entry / name) for name in names]


def study_saes(host, hook: str, corpus: str, config: FaithfulConfig, train_contexts: Tensor) -> list:
    """The two seeds' SAEs trained on ``train_contexts`` of ``corpus``, cached on disk in one entry: the
    activations are captured once and both SAEs step through them together (saes.train.train_saes)."""
    key = _saes_key(host, hook, corpus, config)
    base = sae_train_config(host, config)
    configs = [base.model_copy(update={"seed": seed}) for seed in config.seeds]
    names = [_sae_name(host, corpus, config, key, seed) for seed in config.seeds]
    return cached_saes(key, host, hook, corpus, lambda: train_contexts, configs, names)


def _match(a, b, threshold: float) -> PairMatch:
    summary: dict[str, Any] = match_saes(a, b, threshold).summary()
    for volatile in ("matched_cosine_histogram", "seconds"):  # timings differ run to run; the JSON must not
        summary.pop(volatile)
    return PairMatch(sae_a=a.name, sae_b=b.name, **summary)


def run(ctx: EvalContext, saes: list, config: FaithfulConfig, out_dir: Path | None = None) -> FaithfulResult:
    """Train (or load) the four SAEs at ``ctx.hook`` on ``ctx.corpus`` and on the host's own text, compare them.
    The study trains its own SAEs: ``saes`` is unused."""
    host, hook = ctx.host, ctx.hook
    host.hook(hook)  # a wrong hook fails here, before any generation or training
    if ctx.corpus == SELF:
        raise SaevalError("the faithful study compares the model's own text with another corpus: pick --corpus")
    corpora = (ctx.corpus, SELF)
    seconds: dict[str, float] = {}
    trained, held_out = {}, {}
    for corpus in corpora:
        t = time.time()
        train_ctx, held_out[corpus] = split_contexts(host, corpus, config)
        seconds[f"data {corpus}"] = time.time() - t
        t = time.time()
        trained[corpus] = study_saes(host, hook, corpus, config, train_ctx)
        seconds[f"train {corpus}"] = time.time() - t
    t = time.time()
    cross_seed = {corpus: _match(*trained[corpus], config.threshold) for corpus in corpora}
    # Across corpora only SAEs of different seeds are compared: two SAEs that share a seed share their random
    # initialisation, and short training leaves them near it (the same-seed check measures exactly that).
    human, own = trained[corpora[0]], trained[SELF]
    cross_corpus = [_match(human[i], own[1 - i], config.threshold) for i in range(2)]
    same_seed_check = [_match(human[i], own[i], config.threshold) for i in range(2)]
    seconds["matching"] = time.time() - t
    t = time.time()
    # One pass over each corpus's held-out text serves the seed-0 SAE of every corpus (one clean run for both).
    rows = {evaluated_on: cross_data_table(host, [trained[c][0] for c in corpora], evaluated_on, hook,
                                           held_out[evaluated_on])
            for evaluated_on in corpora}
    cross_data = [CrossDataRow(trained_on=trained_on, evaluated_on=evaluated_on, sae=trained[trained_on][0].name,
                               **rows[evaluated_on][i])
                  for i, trained_on in enumerate(corpora) for evaluated_on in corpora]
    seconds["cross_data"] = time.time() - t
    same = max(m.shared_feature_ratio for m in same_seed_check)
    across = max(m.shared_feature_ratio for m in [*cross_seed.values(), *cross_corpus])
    metrics_ = FaithfulMetrics(
        shared_ratio_corpus_seeds=cross_seed[corpora[0]].shared_feature_ratio,
        shared_ratio_self_seeds=cross_seed[SELF].shared_feature_ratio,
        top1_ratio_corpus_seeds=cross_seed[corpora[0]].top1_ratio,
        top1_ratio_self_seeds=cross_seed[SELF].top1_ratio,
        shared_ratio_across_corpora=sum(m.shared_feature_ratio for m in cross_corpus) / len(cross_corpus),
        shared_ratio_same_seed=same,
        undertrained=same > across + 0.1,
    )
    details = FaithfulDetails(
        corpora=list(corpora),
        sizes={c: {"train_contexts": -(-config.train_tokens // config.ctx_len), "held_out_contexts": len(held_out[c])}
               for c in corpora},
        saes={c: [s.name for s in trained[c]] for c in corpora},
        train_config=sae_train_config(host, config),
        cross_seed=cross_seed,
        cross_corpus=cross_corpus,
        same_seed_check=same_seed_check,
        cross_data=cross_data,
        timings={k: round(v, 1) for k, v in seconds.items()},
    )
    return FaithfulResult(**envelope(ctx, "faithful", []), config=config, metrics=metrics_, details=details)
