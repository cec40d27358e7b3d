"""The case study's report section: the matching summary, then one card per matched pair, each SAE's latent side
by side (explanations, scores, windows with per-token highlighting). A few cards per group show; the rest, and
all but the top windows, sit in collapsed blocks so the page stays light."""

from __future__ import annotations

import html
from typing import Any

# Cards shown per group (top / bottom matches) before the rest collapse.
SHOWN_CARDS = 2

CARD_STYLE = (
    "<style>.cs-card{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}"
    ".cs-cols{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:1em}"
    ".cs-win{font-family:monospace;font-size:12px;margin:2px 0;white-space:pre-wrap;overflow-wrap:anywhere;"
    "line-height:1.6}.cs-win i{font-style:normal;border-radius:2px;background:rgba(255,140,0,var(--a))}"
    ".cs-top{color:#1a7f37}.cs-bottom{color:#b42318}.cs-expl{font-size:13px;overflow-wrap:anywhere}</style>"
)


def window_html(example: dict[str, Any], scale: float) -> str:
    """One window's tokens, each active token shaded by its activation relative to ``scale`` (value on hover)."""
    spans = []
    for text, act in zip(example["texts"], example["acts"], strict=True):
        alpha = min(1.0, act / scale) if scale > 0 and act > 0 else 0.0
        if alpha >= 0.01:
            spans.append(f"<i style=--a:{alpha:.2f} title={act:.3g}>{html.escape(text)}</i>")
        else:
            spans.append(html.escape(text))
    return f"<div class='cs-win'>{''.join(spans)} <small>({example['score']:.3g})</small></div>"


def _side(entry: dict[str, Any], i: int, name: str, shown: bool) -> str:
    auroc = entry["eleuthers"][i]
    expl = entry["self_explanation_candidates"][i] or [entry["self_explanations"][i]]
    failed = " <b>(self-similarity never above threshold)</b>" if entry["self_explanation_failed"][i] else ""
    head = (
        f"<b>{html.escape(name)}</b> latent {entry['indices'][i]} — embedding AUROC "
        f"<b>{'n/a' if auroc is None else f'{auroc:.3f}'}</b>"
        f"{'' if entry['fired'][i] else ' — <b>never fired</b>'}<div class='cs-expl'>"
        f"self-explanations (scale {entry['chosen_scales'][i]:.0f}, self-sim {entry['max_selfsim'][i]:.3f})"
        f"{failed}: {html.escape(' | '.join(e for e in expl if e) or '(none)')}"
    )
    if entry["scored_explanations"][i] != entry["self_explanations"][i]:
        head += f"<br>scored explanation: {html.escape(entry['scored_explanations'][i])}"
    head += "</div>"
    blocks = []
    scale = entry["max_act"][i]
    for crit, wins in entry["windows"][i].items():
        body = "".join(window_html(w, scale) for w in wins) or "<i>no activating window</i>"
        is_open = " open" if shown and crit == "max" else ""
        blocks.append(f"<details{is_open}><summary>top {len(wins)} windows by {crit}</summary>{body}</details>")
    return f"<div>{head}{''.join(blocks)}</div>"


def card_html(e: dict[str, Any], names: tuple[str, str], shown: bool) -> str:
    cls = "cs-top" if e["group"] == "top" else "cs-bottom"
    return (
        f"<div class='cs-card'><div class='{cls}'><b>{e['group']} #{e['rank'] + 1}</b> — cosine "
        f"{e['similarity']:.3f}, latents {e['indices'][0]} / {e['indices'][1]}</div><div class='cs-cols'>"
        f"{_side(e, 0, names[0], shown)}{_side(e, 1, names[1], shown)}</div></div>"
    )


def report(result) -> str:
    """HTML of a CaseStudyResult."""
    d = result.details
    m = d.match
    names = tuple(s.name for s in result.saes)
    intro = (
        f"<h2 id='case_study'>FaithfulSAE case study: {html.escape(names[0])} vs "
        f"{html.escape(names[1])}</h2><p class='note'>shared feature ratio (Hungarian, cos &gt; "
        f"{m.threshold}) <b>{m.shared_feature_ratio:.4f}</b>, top-1 ratio <b>{m.top1_ratio:.4f}</b> "
        f"({m.method}, {m.n_a} x {m.n_b} latents); windows from {d.n_tokens_scanned} tokens of "
        f"{html.escape(result.corpus)}; preset {html.escape(result.preset)}; explainer "
        f"{html.escape(d.explainer)}. Each card: the matched latents of both SAEs, their explanations and "
        f"embedding AUROC; token shading is the activation relative to the latent's maximum.</p>"
    )
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in d.entries:
        e = entry.model_dump(mode="json")
        groups.setdefault(e["group"], []).append(e)
    parts = [CARD_STYLE, intro]
    for group, entries in groups.items():
        parts.append(f"<h3>{html.escape(group)} matches ({len(entries)})</h3>")
        parts += [card_html(e, names, shown=True) for e in entries[:SHOWN_CARDS]]
        rest = entries[SHOWN_CARDS:]
        if rest:
            parts.append(f"<details><summary>{len(rest)} more {html.escape(group)} pairs</summary>"
                         + "".join(card_html(e, names, shown=False) for e in rest) + "</details>")
    return "".join(parts)
