"""Embedding score of latent explanations (Paulo et al., arXiv 2410.13928; delphi scorers/embedding).

The explanation, prefixed with delphi's query instruction, is embedded by a sentence-embedding model together
with activating windows of the latent and random non-activating windows; the cosine similarity to the query
ranks the windows and the score is the AUROC of activating vs non-activating.

Activating windows are drawn by quantile as in delphi's sampler (sorted by max activation, equal-count bins,
the same number from each) from a uniform reservoir of the latent's activating windows, EXCLUDING every window
used to explain it (delphi's default draws its explaining and scoring sets from the same list, so about a
quarter of the explaining windows reappear in the test set). Non-activating windows are random windows where
the latent is zero throughout. Offline the model is all-MiniLM-L6-v2 (the paper used stella_en_400M_v5).

``selection="delphi"`` follows delphi's sampler instead of saeval's defaults: latents with fewer than
``delphi_min_examples`` (200) activating windows are skipped (noted per latent, counted in the metrics), and an
explainer chat model is shown ``delphi_n_explain`` (40) windows drawn by activation quantile from the reservoir
(delphi's train_type "quantiles") rather than the top windows by max. delphi's leak is FIXED in both modes: the
scored activating windows are drawn from the reservoir minus the explaining windows, so the two sets are disjoint
(delphi cuts both from one list). Every departure from delphi is listed in details.departures (config.departures).

Explanations come from self-explanation (evals/self_explanation) or from an explainer chat model shown the latent's top
windows with its active tokens marked (saeval.llm: the local instruct host or an OpenAI-compatible endpoint).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score
from torch import Tensor

from saeval.analysis.window_records import LatentWindows
from saeval.analysis.windows import ActExample, WindowsResult
from saeval.errors import SaevalError
from saeval.evals.embedding_score.config import EmbeddingConfig, LatentScore
from saeval.llm import chat_model

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


def mean_ci(
    values: Sequence[float], n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of ``values`` (scipy.stats.bootstrap, ``n_resamples`` resamples,
    seeded); (None, None) with fewer than 2 values, where no spread can be estimated."""
    if len(values) < 2:
        return None, None
    res = bootstrap((np.asarray(values, dtype=np.float64),), np.mean, n_resamples=n_resamples, confidence_level=level,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def embed_texts(model, texts: Sequence[str], memo: dict[str, Tensor] | None = None) -> Tensor:
    """Unit embeddings of ``texts`` [n, d], one batch for the texts not in ``memo`` (text -> row): a run embeds
    each window once, although the random non-activating windows recur for every latent and every SAE."""
    memo = {} if memo is None else memo
    todo = list(dict.fromkeys(t for t in texts if t not in memo))
    if todo:
        rows = model.encode(todo, normalize_embeddings=True, convert_to_tensor=True)
        memo.update(zip(todo, rows.float().cpu(), strict=True))
    return torch.stack([memo[t] for t in texts]) if texts else torch.zeros(0, 1)


def marked_text(example: ActExample) -> str:
    return "".join(f"<<{t}>>" if a > 0 else t for t, a in zip(example.texts, example.acts, strict=True))


def explaining_windows(windows: WindowsResult, latents: Sequence[int], n_windows: int = 10) -> dict[int, set[int]]:
    """The windows ``explain_with_llm`` shows for each latent: its top ``n_windows`` by max activation."""
    return {f: {windows.window_id(ex) for ex in windows.latents[f].max[:n_windows]} for f in latents}


def delphi_explaining_windows(
    windows: WindowsResult, latents: Sequence[int], n_explain: int = 40, n_quantiles: int = 10, seed: int = 0
) -> dict[int, list[int]]:
    """delphi's explaining set ("quantiles" train type): ``n_explain`` windows per latent drawn evenly from the
    activation quantiles of its reservoir, strongest quantile first. Each latent has its own seeded draw, so it
    does not depend on which other latents are scored."""
    return {
        f: quantile_sample(windows.reservoir.get(f, []), n_quantiles, n_explain, random.Random(seed * 1_000_003 + f))
        for f in latents
    }


def too_few_examples(lw: LatentWindows, config: EmbeddingConfig) -> bool:
    """delphi mode skips latents with fewer activating windows than delphi's min_examples."""
    return config.selection == "delphi" and lw.n_active_windows < config.delphi_min_examples


@torch.inference_mode()
def window_examples(
    host, sae, hook: str, windows: WindowsResult, shown: Mapping[int, Sequence[int]], batch_size: int = 8
) -> dict[int, list[ActExample]]:
    """The given windows of each latent with per-token activations, recomputed on their contexts: the reservoir
    keeps only each window's max, and the explainer needs every token's activation to mark the active ones."""
    wpc, W = windows.windows_per_context, windows.window
    latents = list(shown)
    feats = torch.tensor(latents, dtype=torch.long)
    rows = sorted({w // wpc for ids in shown.values() for w in ids})
    device = sae.W_enc.device
    f_by_row: dict[int, torch.Tensor] = {}  # context row -> [L, latents]
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        tokens_BL = windows.contexts_NL[chunk]
        acts_BLD = host.capture(tokens_BL, [hook])[hook].float()
        f_BLF = sae.encode(acts_BLD.to(device)).index_select(-1, feats.to(device)).float().cpu()
        f_BLF *= host.ordinary_mask(tokens_BL).cpu()[..., None]  # special tokens never count, as in the pass
        f_by_row.update(zip(chunk, f_BLF, strict=True))
    out: dict[int, list[ActExample]] = {}
    for j, f in enumerate(latents):
        out[f] = []
        for w in shown[f]:
            ctx, idx = divmod(w, wpc)
            start = 1 + idx * W
            tokens = windows.contexts_NL[ctx, start : start + W].tolist()
            acts_L = f_by_row[ctx][start : start + W, j]
            out[f].append(ActExample(tokens=tokens, texts=[host.tokenizer.decode([t]) for t in tokens],
                                     acts=acts_L.tolist(), context=ctx, start=start, score=float(acts_L.max())))
    return out


def explain_with_llm(
    windows: WindowsResult,
    latents: Sequence[int],
    spec: str,
    host=None,
    n_windows: int = 10,
    max_new_tokens: int = 48,
    examples: Mapping[int, Sequence[ActExample]] | None = None,
) -> dict[int, str]:
    """One explanation per latent from a chat model shown its top windows (active tokens marked), or the
    ``examples`` given for it (delphi mode: ``window_examples`` of ``delphi_explaining_windows``)."""
    model = chat_model(spec, host)
    prompts = []
    for f in latents:
        shown = examples[f] if examples is not None else windows.latents[f].max[:n_windows]
        excerpts = "\n".join(f"Excerpt {i + 1}: {marked_text(ex)}" for i, ex in enumerate(shown))
        prompts.append(EXPLAINER_PROMPT.format(examples=excerpts))
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
    memo: dict[str, Tensor] | None = None,
) -> dict[int, LatentScore]:
    """AUROC per latent; windows are embedded once even when several latents use them.

    ``explained``: per latent, the windows its explainer saw (excluded from scoring). Self-explanation sees
    no window, so nothing is excluded then; an explainer LLM sees ``explaining_windows`` (or, in delphi mode,
    ``delphi_explaining_windows``). In delphi mode latents below ``delphi_min_examples`` are skipped.
    ``memo``: window text -> embedding, shared by the calls of a run (see embed_texts)."""
    rng = random.Random(seed)
    plan: dict[int, tuple[list[int], list[int], str]] = {}
    for f, explanation in explanations.items():
        lw = windows.latents.get(f)
        if lw is None:
            raise SaevalError(f"latent {f} was not in the windows pass: include it in the latents scanned")
        if not lw.fired:
            plan[f] = ([], [], "latent never fired on the scanned corpus")
            continue
        if too_few_examples(lw, config):
            plan[f] = ([], [], f"skipped: {lw.n_active_windows} activating windows, fewer than delphi's "
                       f"min_examples ({config.delphi_min_examples})")
            continue
        shown = set((explained or {}).get(f, ()))
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
    emb = embed_texts(model, texts, memo)
    row = {w: i for i, w in enumerate(needed)}
    queries = [QUERY_PREFIX + explanations[f] for f in plan]
    q_emb = model.encode(queries, normalize_embeddings=True, convert_to_tensor=True).float().cpu() if queries else None
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
            explaining_windows=sorted((explained or {}).get(f, ())),
            activating_windows=act,
            non_activating_windows=non,
            activating_similarity=sims_a,
            non_activating_similarity=sims_n,
        )
    return out
