"""The FaithfulSAE matched-feature case study (seed 002): match two SAEs, take the best and worst matched pairs,
and for each pair show top activated windows, self-explanations and Eleuther embedding scores.

One activation pass over the corpus serves both SAEs (when they read the same hook) and all selected latents;
the self-explanations and embedding scores are batched over all latents of an SAE. Output, in ``out``:

- ``case_study.json``: a list of entries {group, rank, similarity, indices, self_explanations, eleuthers,
  windows, ...}, one per matched pair, written atomically;
- ``case_study.meta.json``: matching summary (shared feature ratio, top-1 ratio), config, sizes, timings;
- ``case-study.section.html``: one card per pair, picked up by ``saeval report``.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.embedding_score import (
    EmbeddingConfig,
    LatentScore,
    embedding_scores,
    explain_with_llm,
    explaining_windows,
    load_embedding_model,
)
from saeval.evals.explain import ExplainConfig, SelfExplanation, self_explain
from saeval.evals.matching import THRESHOLD, match_saes
from saeval.evals.windows import CRITERIA, WindowsResult, collect_windows
from saeval.results import write_json_atomic


class CaseStudyConfig(BaseModel):
    threshold: float = THRESHOLD
    top: int = 10  # best matched pairs
    bottom: int | None = None  # worst matched pairs (default: as many as top)
    match_method: str = "auto"
    window: int = 30  # the researcher's window length
    k_windows: int = 10  # top windows per criterion (mean, density, max)
    ctx_len: int = 128
    n_tokens: int = 1_000_000  # corpus tokens scanned for windows (delphi caches 10M; SOTU holds ~2.1M)
    batch_size: int = 8
    explainer: str = "self"  # self | local | local:MODEL | openai:MODEL@BASE_URL (scored by the embedding score)
    explain: ExplainConfig = ExplainConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # About 3 minutes on the two demo SAEs on a 2-core CPU: fewer scales, generations and corpus tokens.
    "demo": {
        "n_tokens": 12_288,
        "explain": {"n_search_scales": 6, "n_generation_scales": 2, "generation_scales": "best", "max_new_tokens": 12,
                    "batch_size": 48},
        "embedding": {"n_test": 20, "n_random": 20, "reservoir": 200, "n_pool": 400},
    },
    "tiny": {
        "top": 2,
        "n_tokens": 2048,
        "ctx_len": 64,
        "window": 12,
        "k_windows": 3,
        "explain": {
            "n_search_scales": 3,
            "n_generation_scales": 1,
            "max_new_tokens": 4,
            "rep_hook": "blocks.1.hook_resid_pre",
            "probe_hook": "blocks.3.hook_resid_pre",
        },
        "embedding": {"n_test": 6, "n_random": 6, "n_quantiles": 3, "reservoir": 30, "n_pool": 60},
    },
}


def case_study_config(preset: str = "paper", **overrides: Any) -> CaseStudyConfig:
    if preset not in PRESETS:
        raise SaevalError(f"case study has no preset {preset!r}; presets: {', '.join(PRESETS)}")
    merged = {**PRESETS[preset], **overrides}
    return CaseStudyConfig(**merged)


def select_pairs(match, top: int, bottom: int) -> list[tuple[str, int, tuple[int, int, float]]]:
    """(group, rank, pair): the ``top`` best and ``bottom`` worst matched pairs, without repeats."""
    pairs = match.pairs
    chosen = [("top", i, p) for i, p in enumerate(pairs[:top])]
    taken = min(top, len(pairs))
    worst = pairs[max(taken, len(pairs) - bottom) :][::-1]
    return chosen + [("bottom", i, p) for i, p in enumerate(worst)]


def _explanations(
    host, sae, windows: WindowsResult, latents: list[int], config: CaseStudyConfig, self_x: dict[int, SelfExplanation]
) -> dict[int, str]:
    if config.explainer == "self":
        return {f: self_x[f].explanation for f in latents}
    return explain_with_llm(
        windows,
        [f for f in latents if windows.latents[f].fired],
        config.explainer,
        host,
        config.embedding.n_explain_windows,
    )


def run_case_study(
    host,
    sae_a,
    sae_b,
    config: CaseStudyConfig,
    corpus: str = "sotu",
    hook: str | None = None,
    out_dir: Path | None = None,
    preset: str = "paper",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The whole study; returns the JSON entries (also written to ``out_dir`` when given)."""
    timings: dict[str, float] = {}
    t = time.time()
    match = match_saes(sae_a, sae_b, config.threshold, method=config.match_method)
    timings["matching"] = time.time() - t
    chosen = select_pairs(match, config.top, config.top if config.bottom is None else config.bottom)
    lat_a = sorted({p[0] for _, _, p in chosen})
    lat_b = sorted({p[1] for _, _, p in chosen})

    t = time.time()
    hooks = [hook or sae.cfg.hook_name for sae in (sae_a, sae_b)]
    if not all(hooks):
        raise SaevalError("an SAE names no hook: pass --hook blocks.L.hook_resid_post (or similar)")
    contexts = load_contexts(host, corpus, config.n_tokens, config.ctx_len, seed)
    emb = config.embedding
    args = dict(
        window=config.window,
        k=config.k_windows,
        batch_size=config.batch_size,
        reservoir=emb.reservoir,
        n_pool=emb.n_pool,
        seed=seed,
    )
    if hooks[0] == hooks[1]:  # one activation pass serves both SAEs
        win_a, win_b = collect_windows(
            host,
            [(sae_a, lat_a), (sae_b, lat_b)],
            contexts,
            hooks[0],
            description="case study: top windows (both SAEs)",
            **args,
        )
    else:
        win_a = collect_windows(host, [(sae_a, lat_a)], contexts, hooks[0], description="top windows A", **args)[0]
        win_b = collect_windows(host, [(sae_b, lat_b)], contexts, hooks[1], description="top windows B", **args)[0]
    timings["windows"] = time.time() - t

    t = time.time()
    sx_a = {e.latent: e for e in self_explain(host, sae_a, lat_a, config.explain, seed, "self-explanation A")}
    sx_b = {e.latent: e for e in self_explain(host, sae_b, lat_b, config.explain, seed, "self-explanation B")}
    timings["self_explanation"] = time.time() - t

    t = time.time()
    model = load_embedding_model(emb.embedding_model)
    scores: list[dict[int, LatentScore]] = []
    for sae, win, lat, sx in ((sae_a, win_a, lat_a, sx_a), (sae_b, win_b, lat_b, sx_b)):
        expl = _explanations(host, sae, win, lat, config, sx)
        expl.update({f: "" for f in lat if f not in expl})
        live = [f for f in lat if win.latents[f].fired]
        shown = explaining_windows(win, live, emb.n_explain_windows) if config.explainer != "self" else {}
        scores.append(embedding_scores(win, expl, host.tokenizer, model, emb, seed, shown))
    timings["embedding_score"] = time.time() - t

    entries = []
    for group, rank, (a, b, sim) in chosen:
        ex = (sx_a[a], sx_b[b])
        sc = (scores[0][a], scores[1][b])
        wins = (win_a.latents[a], win_b.latents[b])
        entries.append(
            {
                "group": group,
                "rank": rank,
                "similarity": round(sim, 6),
                "indices": [a, b],
                "self_explanations": [e.explanation for e in ex],
                "eleuthers": [s.auroc for s in sc],
                "self_explanation_candidates": [e.best for e in ex],
                "scored_explanations": [s.explanation for s in sc],
                "eleuther_notes": [s.note for s in sc],
                "self_explanation_failed": [e.sweep.failed for e in ex],
                "chosen_scales": [e.sweep.chosen_scale for e in ex],
                "max_selfsim": [round(e.sweep.max_selfsim, 6) for e in ex],
                "fired": [w.fired for w in wins],
                "max_act": [w.max_act for w in wins],
                "windows": [{c: [x.model_dump() for x in w.criterion(c)] for c in CRITERIA} for w in wins],
            }
        )
    meta = {
        "sae_a": sae_a.name,
        "sae_b": sae_b.name,
        "model": host.name,
        "hooks": hooks,
        "corpus": corpus,
        "preset": preset,
        "seed": seed,
        "match": match.summary(),
        "n_tokens_scanned": win_a.n_tokens,
        "never_fired": [win_a.never_fired, win_b.never_fired],
        "explainer": config.explainer,
        "config": config.model_dump(mode="json"),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json_atomic(out_dir / "case_study.json", entries)
        write_json_atomic(out_dir / "case_study.meta.json", meta)
        section = out_dir / "case-study.section.html"
        tmp = section.with_suffix(".tmp")
        tmp.write_text(case_study_html(entries, meta))
        tmp.replace(section)
    return entries


# ---------------------------------------------------------------------------------------------- HTML
CARD_STYLE = (
    "<style>.cs-card{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}"
    ".cs-cols{display:grid;grid-template-columns:1fr 1fr;gap:1em}.cs-win{font-family:monospace;font-size:12px;"
    "margin:2px 0;white-space:pre-wrap;line-height:1.6}.cs-win span{border-radius:2px}"
    ".cs-top{color:#1a7f37}.cs-bottom{color:#b42318}</style>"
)


def window_html(example: dict[str, Any], scale: float) -> str:
    spans = []
    for text, act in zip(example["texts"], example["acts"], strict=True):
        alpha = min(1.0, act / scale) if scale > 0 and act > 0 else 0.0
        title = f" title='{act:.3g}'" if act > 0 else ""
        spans.append(f"<span style='background:rgba(255,140,0,{alpha:.2f})'{title}>{html.escape(text)}</span>")
    return f"<div class='cs-win'>{''.join(spans)} <small>({example['score']:.3g})</small></div>"


def _side(entry: dict[str, Any], i: int, name: str) -> str:
    auroc = entry["eleuthers"][i]
    expl = entry["self_explanation_candidates"][i] or [entry["self_explanations"][i]]
    failed = " <b>(self-similarity never above threshold)</b>" if entry["self_explanation_failed"][i] else ""
    head = (
        f"<b>{html.escape(name)}</b> latent {entry['indices'][i]} — embedding AUROC "
        f"{'n/a' if auroc is None else f'{auroc:.3f}'}"
        f"{'' if entry['fired'][i] else ' — <b>never fired</b>'}<br>"
        f"self-explanations (scale {entry['chosen_scales'][i]:.0f}, self-sim {entry['max_selfsim'][i]:.3f})"
        f"{failed}: {html.escape(' | '.join(e for e in expl if e) or '(none)')}"
    )
    if entry["scored_explanations"][i] != entry["self_explanations"][i]:
        head += f"<br>scored explanation: {html.escape(entry['scored_explanations'][i])}"
    blocks = []
    scale = entry["max_act"][i]
    for crit in CRITERIA:
        wins = entry["windows"][i][crit]
        body = "".join(window_html(w, scale) for w in wins) or "<i>no activating window</i>"
        blocks.append(
            f"<details{' open' if crit == 'max' else ''}><summary>top {len(wins)} by {crit}</summary>{body}</details>"
        )
    return f"<div>{head}{''.join(blocks)}</div>"


def case_study_html(entries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    m = meta["match"]
    intro = (
        f"<h2 id='case-study'>FaithfulSAE case study: {html.escape(meta['sae_a'])} vs "
        f"{html.escape(meta['sae_b'])}</h2><p class='note'>shared feature ratio (Hungarian, cos &gt; "
        f"{m['threshold']}) <b>{m['shared_feature_ratio']:.4f}</b>, top-1 ratio <b>{m['top1_ratio']:.4f}</b> "
        f"({m['method']}, {m['n_a']} x {m['n_b']} latents); windows from {meta['n_tokens_scanned']} tokens of "
        f"{html.escape(meta['corpus'])}; preset {html.escape(meta['preset'])}; explainer "
        f"{html.escape(meta['explainer'])}.</p>"
    )
    cards = []
    for e in entries:
        cls = "cs-top" if e["group"] == "top" else "cs-bottom"
        cards.append(
            f"<div class='cs-card'><div class='{cls}'><b>{e['group']} #{e['rank'] + 1}</b> — cosine "
            f"{e['similarity']:.3f}, latents {e['indices'][0]} / {e['indices'][1]}</div><div class='cs-cols'>"
            f"{_side(e, 0, meta['sae_a'])}{_side(e, 1, meta['sae_b'])}</div></div>"
        )
    return CARD_STYLE + intro + "".join(cards)


# ---------------------------------------------------------------------------------------------- demo
def demo_study(ctx, saes: list, out_dir: Path, force: bool = False) -> Path | None:
    """The case study on the first two SAEs of a run (``saeval demo``'s pair studies), with the run's preset
    when the case study has it (else "demo"); a finished study is kept unless ``force``."""
    path = Path(out_dir) / "case_study.json"
    if len(saes) < 2:
        return None
    if path.exists() and not force:
        print(f"skip case study: {path} exists (use --force to recompute)")
        return path
    preset = ctx.preset if ctx.preset in PRESETS else "demo"
    start = time.time()
    run_case_study(ctx.host, saes[0], saes[1], case_study_config(preset), ctx.corpus, None, out_dir, preset,
                   ctx.seed)
    print(f"case study ({preset}) on {saes[0].name} / {saes[1].name}: {path} in {time.time() - start:.0f}s")
    return path


def _register_demo_study() -> None:
    from saeval import demo

    if demo_study not in demo.PAIR_STUDIES:
        demo.PAIR_STUDIES.append(demo_study)


_register_demo_study()


# ---------------------------------------------------------------------------------------------- CLI
def case_study(
    model: Annotated[str, typer.Option("--model", help="LM name or folder")] = "smollm2-135m",
    sae: Annotated[list[Path] | None, typer.Option("--sae", help="SAE folder; give two (none: the demo SAEs)")] = None,
    hook: Annotated[str | None, typer.Option("--hook", help="hook the SAEs read (default: their cfg)")] = None,
    corpus: Annotated[str, typer.Option("--corpus", help="corpus for the windows")] = "sotu",
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("out/case-study"),
    top: Annotated[int, typer.Option("--top", help="best and worst matched pairs to study")] = 10,
    preset: Annotated[str, typer.Option("--preset", help="paper | demo | tiny")] = "paper",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    explainer: Annotated[str, typer.Option("--explainer", help="self | local | openai:MODEL@URL")] = "self",
) -> None:
    """FaithfulSAE case study: match two SAEs; windows, self-explanations, embedding scores of matched pairs."""
    from rich.console import Console

    from saeval.hosts import LanguageHost

    console = Console(stderr=True)
    try:
        config = case_study_config(preset, top=top, explainer=explainer)
        if sae and len(sae) != 2:
            raise SaevalError(f"give exactly two --sae folders (got {len(sae)}), or none for the demo SAEs")
        host = LanguageHost.load(model)
        if sae:
            from saeval.saes.formats import load_sae

            saes = [load_sae(p) for p in sae]
        else:
            from saeval.demo import demo_saes

            saes = demo_saes(host)
        start = time.time()
        entries = run_case_study(host, saes[0], saes[1], config, corpus, hook, out, preset, seed)
    except SaevalError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from err
    meta = (out / "case_study.meta.json").read_text()
    console.print(f"wrote {len(entries)} pairs to {out / 'case_study.json'} in {time.time() - start:.0f}s")
    console.print(meta[:400])
