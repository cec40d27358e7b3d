"""The case study's report section: the matching summary, then one card per matched pair."""

from __future__ import annotations

import html
from typing import Any

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
    for crit, wins in entry["windows"][i].items():
        body = "".join(window_html(w, scale) for w in wins) or "<i>no activating window</i>"
        blocks.append(
            f"<details{' open' if crit == 'max' else ''}><summary>top {len(wins)} by {crit}</summary>{body}</details>"
        )
    return f"<div>{head}{''.join(blocks)}</div>"


def report(result) -> str:
    """HTML of a CaseStudyResult."""
    d = result.details
    m = d.match
    name_a, name_b = (s.name for s in result.saes)
    intro = (
        f"<h2 id='case_study'>FaithfulSAE case study: {html.escape(name_a)} vs "
        f"{html.escape(name_b)}</h2><p class='note'>shared feature ratio (Hungarian, cos &gt; "
        f"{m.threshold}) <b>{m.shared_feature_ratio:.4f}</b>, top-1 ratio <b>{m.top1_ratio:.4f}</b> "
        f"({m.method}, {m.n_a} x {m.n_b} latents); windows from {d.n_tokens_scanned} tokens of "
        f"{html.escape(result.corpus)}; preset {html.escape(result.preset)}; explainer "
        f"{html.escape(d.explainer)}.</p>"
    )
    cards = []
    for entry in d.entries:
        e = entry.model_dump(mode="json")
        cls = "cs-top" if e["group"] == "top" else "cs-bottom"
        cards.append(
            f"<div class='cs-card'><div class='{cls}'><b>{e['group']} #{e['rank'] + 1}</b> — cosine "
            f"{e['similarity']:.3f}, latents {e['indices'][0]} / {e['indices'][1]}</div><div class='cs-cols'>"
            f"{_side(e, 0, name_a)}{_side(e, 1, name_b)}</div></div>"
        )
    return CARD_STYLE + intro + "".join(cards)
