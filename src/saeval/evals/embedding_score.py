"""Embedding score of latent explanations (Paulo et al., arXiv 2410.13928; delphi scorers/embedding).

The explanation, prefixed with delphi's query instruction, is embedded by a sentence-embedding model together
with activating windows of the latent and random non-activating windows; the cosine similarity to the query
ranks the windows and the score is the AUROC of activating vs non-activating.

Activating windows are drawn by quantile as in delphi's sampler (sorted by max activation, equal-count bins,
the same number from each) from a uniform reservoir of the latent's activating windows, EXCLUDING every window
used to explain it (delphi's default draws its explaining and scoring sets from the same list, so about a
quarter of the explaining windows reappear in the test set). Non-activating windows are random windows where
the latent is zero throughout. Offline the model is all-MiniLM-L6-v2 (the paper used stella_en_400M_v5).

Explanations come from self-explanation (evals/explain) or from an explainer chat model shown the latent's top
windows with its active tokens marked (saeval.llm: the local instruct host or an OpenAI-compatible endpoint).
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from sklearn.metrics import roc_auc_score

from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalConfig, EvalContext, EvalSpec, register_eval
from saeval.evals.explain import DEMO_EXPLAIN, TINY_EXPLAIN, ExplainConfig, memo_self_explain, pick_latents
from saeval.evals.windows import ActExample, WindowsResult, collect_windows
from saeval.llm import LLMError, chat_model
from saeval.results import EvalResult

QUERY_PREFIX = (
    "Instruct: Retrieve sentences that could be related to the explanation.\nQuery:"  # no space: as delphi
)
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")
EXPLAINER_PROMPT = (
    "We are studying a feature of a language model. It activates on the tokens marked <<like this>> in the "
    "text excerpts below. Summarise in one short sentence what the feature responds to. Do not list the "
    "examples.\n\n"
    "{examples}\n\nThe feature responds to"
)

_MODELS: dict[str, Any] = {}


class EmbeddingConfig(EvalConfig):
    embedding_model: str = "all-MiniLM-L6-v2"  # offline default; any SentenceTransformer name or folder
    n_test: int = 50  # activating windows, by quantile (delphi)
    n_quantiles: int = 10
    n_random: int = 50  # non-activating windows (delphi)
    window: int = 32  # delphi's example length
    ctx_len: int = 129  # BOS + 4 windows of 32
    n_tokens: int = 1_000_000  # corpus tokens scanned for windows
    reservoir: int = 1000  # uniform sample of activating windows per latent, the quantiles' population
    n_pool: int = 2000  # random windows checked for non-activation
    batch_size: int = 8
    explainer: str = "self"  # self | local | local:MODEL | openai:MODEL@BASE_URL
    n_explain_windows: int = 10  # top windows (by max) shown to an explainer chat model
    explain: dict[str, Any] = {}  # ExplainConfig overrides when explanations come from self-explanation
    latents: list[int] | None = None
    n_latents: int = 32


class LatentScore(BaseModel):
    latent: int
    explanation: str
    auroc: float | None
    n_activating: int
    n_non_activating: int
    note: str = ""
    activating_windows: list[int] = []  # window ids (see WindowsResult.window_tokens)
    non_activating_windows: list[int] = []
    activating_similarity: list[float] = []
    non_activating_similarity: list[float] = []


def load_embedding_model(name: str):
    """A SentenceTransformer on CPU: MiniLM from its offline package, else a hub name or local folder."""
    if name not in _MODELS:
        from sentence_transformers import SentenceTransformer

        if name in MINILM_NAMES:
            from saeval.assets import minilm_path

            path = str(minilm_path())
        else:
            path = name
        try:
            _MODELS[name] = SentenceTransformer(path, device="cpu")
        except (OSError, ValueError) as err:
            raise SaevalError(
                f"cannot load sentence-embedding model {name!r} ({str(err).splitlines()[0]}): give a "
                "local SentenceTransformer folder, a hub name with network access, or all-MiniLM-L6-v2"
            ) from err
    return _MODELS[name]


def quantile_sample(
    windows: Sequence[tuple[int, float]], n_quantiles: int, n_samples: int, rng: random.Random
) -> list[int]:
    """delphi's split_quantiles: sort by activation (desc), cut into equal-count bins, draw n/q from each."""
    ordered = sorted(windows, key=lambda w: (-w[1], w[0]))
    size = len(ordered) // n_quantiles
    per = n_samples // n_quantiles
    picked: list[int] = []
    if size == 0:  # fewer windows than bins: use them all
        return [w for w, _ in ordered][:n_samples]
    for q in range(n_quantiles):
        bin_ = [w for w, _ in ordered[q * size : (q + 1) * size]]
        picked += bin_ if len(bin_) <= per else rng.sample(bin_, per)
    return picked


def marked_text(example: ActExample) -> str:
    return "".join(f"<<{t}>>" if a > 0 else t for t, a in zip(example.texts, example.acts, strict=True))


def explaining_windows(windows: WindowsResult, latents: Sequence[int], n_windows: int = 10) -> dict[int, set[int]]:
    """The windows ``explain_with_llm`` shows for each latent: its top ``n_windows`` by max activation."""
    return {f: {windows.window_id(ex) for ex in windows.latents[f].max[:n_windows]} for f in latents}


def explain_with_llm(
    windows: WindowsResult,
    latents: Sequence[int],
    spec: str,
    host=None,
    n_windows: int = 10,
    max_new_tokens: int = 48,
) -> dict[int, str]:
    """One explanation per latent from a chat model shown its top windows (active tokens marked)."""
    model = chat_model(spec, host)
    prompts = []
    for f in latents:
        shown = windows.latents[f].max[:n_windows]
        examples = "\n".join(f"Excerpt {i + 1}: {marked_text(ex)}" for i, ex in enumerate(shown))
        prompts.append(EXPLAINER_PROMPT.format(examples=examples))
    replies = model.complete(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    return {f: r.strip().split("\n")[0].strip() for f, r in zip(latents, replies, strict=True)}


def embedding_scores(
    windows: WindowsResult,
    explanations: dict[int, str],
    tokenizer,
    model,
    config: EmbeddingConfig,
    seed: int = 0,
    explained: dict[int, set[int]] | None = None,
) -> dict[int, LatentScore]:
    """AUROC per latent; windows are embedded once even when several latents use them.

    ``explained``: per latent, the windows its explainer saw (excluded from scoring). Self-explanation sees
    no window, so nothing is excluded then; an explainer LLM sees ``explaining_windows``."""
    rng = random.Random(seed)
    plan: dict[int, tuple[list[int], list[int], str]] = {}
    for f, explanation in explanations.items():
        lw = windows.latents.get(f)
        if lw is None:
            raise SaevalError(f"latent {f} was not in the windows pass: include it in the latents scanned")
        if not lw.fired:
            plan[f] = ([], [], "latent never fired on the scanned corpus")
            continue
        shown = (explained or {}).get(f, set())
        held_out = [(w, m) for w, m in windows.reservoir.get(f, []) if w not in shown]
        act = quantile_sample(held_out, config.n_quantiles, config.n_test, rng)
        zero = [w for w, m in zip(windows.pool_ids, windows.pool_max.get(f, []), strict=True) if m == 0]
        non = rng.sample(zero, min(config.n_random, len(zero)))
        note = (
            "empty explanation"
            if not explanation
            else "no held-out activating window"
            if not act
            else "no non-activating window"
            if not non
            else ""
        )
        plan[f] = (act, non, note)
    needed = sorted({w for a, n, _ in plan.values() for w in a + n})
    texts = [tokenizer.decode(windows.window_tokens(w)) for w in needed]
    emb = (
        model.encode(texts, normalize_embeddings=True, convert_to_tensor=True) if texts else torch.zeros(0, 1)
    )
    row = {w: i for i, w in enumerate(needed)}
    queries = [QUERY_PREFIX + explanations[f] for f in plan]
    q_emb = model.encode(queries, normalize_embeddings=True, convert_to_tensor=True) if queries else None
    out: dict[int, LatentScore] = {}
    for qi, (f, (act, non, note)) in enumerate(plan.items()):
        sims_a = [float(emb[row[w]] @ q_emb[qi]) for w in act] if q_emb is not None else []
        sims_n = [float(emb[row[w]] @ q_emb[qi]) for w in non] if q_emb is not None else []
        auroc = None
        if sims_a and sims_n and not note:
            auroc = float(roc_auc_score([1] * len(sims_a) + [0] * len(sims_n), sims_a + sims_n))
        out[f] = LatentScore(
            latent=f,
            explanation=explanations[f],
            auroc=auroc,
            n_activating=len(act),
            n_non_activating=len(non),
            note=note,
            activating_windows=act,
            non_activating_windows=non,
            activating_similarity=sims_a,
            non_activating_similarity=sims_n,
        )
    return out


# ---------------------------------------------------------------------------------------------- the eval
class EmbeddingMetrics(BaseModel):
    n_latents: int
    n_scored: int
    n_never_fired: int
    mean_auroc: float | None
    median_auroc: float | None
    frac_auroc_above_0_5: float | None


class EmbeddingDetails(BaseModel):
    explainer: str
    embedding_model: str
    n_tokens_scanned: int
    scores: list[LatentScore]


class EmbeddingResult(EvalResult[EmbeddingConfig, EmbeddingMetrics, EmbeddingDetails]):
    pass


def get_explanations(
    ctx: EvalContext, sae, windows: WindowsResult, latents: list[int], config: EmbeddingConfig
) -> dict[int, str]:
    if config.explainer != "self":
        try:
            return explain_with_llm(windows, latents, config.explainer, ctx.host, config.n_explain_windows)
        except LLMError as err:
            raise SaevalError(f"explainer {config.explainer} failed: {err}") from err
    found = memo_self_explain(ctx, sae, latents, ExplainConfig(**config.explain))
    return {e.latent: e.explanation for e in found}


def run(ctx: EvalContext, sae, config: EmbeddingConfig) -> EmbeddingResult:
    host = ctx.host
    previous = ctx.previous(sae.name, "self_explanation") if config.explainer == "self" else None
    reuse: dict[int, str] = {}
    if config.latents is not None:
        latents = list(config.latents)
    elif previous is not None:  # score the explanations the self_explanation eval already generated
        reuse = {e["latent"]: (e["best"] or [""])[0] for e in previous["details"]["explanations"]}
        latents = sorted(reuse)
    else:
        latents = pick_latents(ctx, sae, config.n_latents, ctx.seed)
    contexts = load_contexts(host, ctx.corpus, config.n_tokens, config.ctx_len, ctx.seed)
    hook = sae.cfg.hook_name or ctx.hook
    windows = collect_windows(
        host,
        [(sae, latents)],
        contexts,
        hook,
        config.window,
        10,
        config.batch_size,
        config.reservoir,
        config.n_pool,
        ctx.seed,
        f"embedding score {sae.name}: windows",
    )[0]
    live = [f for f in latents if windows.latents[f].fired]
    explanations = {f: reuse[f] for f in live if f in reuse}
    missing = [f for f in live if f not in explanations]
    if missing:
        explanations.update(get_explanations(ctx, sae, windows, missing, config))
    explanations.update({f: "" for f in windows.never_fired})
    model = load_embedding_model(config.embedding_model)
    shown = explaining_windows(windows, live, config.n_explain_windows) if config.explainer != "self" else {}
    scores = embedding_scores(windows, explanations, host.tokenizer, model, config, ctx.seed, shown)
    ordered = [scores[f] for f in latents]
    aurocs = [s.auroc for s in ordered if s.auroc is not None]
    metrics = EmbeddingMetrics(
        n_latents=len(latents),
        n_scored=len(aurocs),
        n_never_fired=len(windows.never_fired),
        mean_auroc=float(np.mean(aurocs)) if aurocs else None,
        median_auroc=float(np.median(aurocs)) if aurocs else None,
        frac_auroc_above_0_5=float(np.mean([a > 0.5 for a in aurocs])) if aurocs else None,
    )
    details = EmbeddingDetails(
        explainer=config.explainer + (" (reused self_explanation results)" if reuse else ""),
        embedding_model=config.embedding_model,
        n_tokens_scanned=windows.n_tokens,
        scores=ordered,
    )
    return EmbeddingResult(**ctx.envelope("embedding_score", sae), config=config, metrics=metrics, details=details)


def _score_row(s: dict) -> str:
    auroc = "" if s["auroc"] is None else f"{s['auroc']:.3f}"
    text = html.escape(s["explanation"] or s["note"])
    return (
        f"<tr><td>{s['latent']}</td><td>{auroc}</td><td>{s['n_activating']}/{s['n_non_activating']}</td>"
        f"<td style='text-align:left'>{text}</td></tr>"
    )


def report(records: list[dict]) -> str:
    parts = []
    for rec in records:
        d = rec["details"]
        parts.append(
            f"<p class='note'>{html.escape(rec['sae']['name'])}: explainer {html.escape(d['explainer'])}, "
            f"embedding model {html.escape(d['embedding_model'])}</p><table><tr><th>latent</th>"
            "<th>AUROC</th><th>act/non-act windows</th><th>explanation</th></tr>"
            + "".join(_score_row(s) for s in d["scores"])
            + "</table>"
        )
    return "\n".join(parts)


SPEC = register_eval(
    EvalSpec(
        name="embedding_score",
        config_cls=EmbeddingConfig,
        run=run,
        description="embedding score (delphi): AUROC of query-window cosine, activating (by quantile, "
        "disjoint from the explaining windows) vs random non-activating windows",
        presets={
            "demo": {"n_latents": 6, "n_tokens": 16_384, "reservoir": 200, "n_pool": 400, "n_test": 20,
                     "n_random": 20, "explain": DEMO_EXPLAIN},
            "tiny": {"n_latents": 3, "n_tokens": 2048, "ctx_len": 65, "window": 16, "reservoir": 40, "n_pool": 60,
                     "n_test": 10, "n_random": 10, "n_quantiles": 5, "explain": TINY_EXPLAIN},
        },
        report=report,
    )
)
