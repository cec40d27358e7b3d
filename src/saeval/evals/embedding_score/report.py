"""Embedding score's report section: the mean AUROC with its bootstrap interval when recorded, then each latent's
AUROC and the explanation it scored (collapsed when long)."""

from __future__ import annotations

import html


def _score_row(s: dict) -> str:
    auroc = "" if s["auroc"] is None else f"{s['auroc']:.3f}"
    sort = "" if s["auroc"] is None else f" data-v='{s['auroc']!r}'"
    text = html.escape(s["explanation"] or s["note"])
    return (f"<tr><td>{s['latent']}</td><td{sort}>{auroc}</td><td>{s['n_activating']}/{s['n_non_activating']}</td>"
            f"<td class=l>{text}</td></tr>")


def _mean_line(name: str, m: dict) -> str:
    mean = m.get("mean_auroc")
    text = "n/a" if mean is None else f"{mean:.3f}"
    low, high = m.get("mean_auroc_ci_low"), m.get("mean_auroc_ci_high")
    if low is not None and high is not None:
        text += f" (bootstrap interval [{low:.3f}, {high:.3f}])"
    return (f"{html.escape(name)}: mean AUROC {text} over {m.get('n_scored')} of {m.get('n_latents')} latents "
            f"({m.get('n_never_fired', 0)} never fired, {m.get('n_below_min_examples', 0)} below min examples)")


def report(records: list[dict]) -> str:
    parts = []
    for rec in records:
        d, name = rec["details"], rec["sae"]["name"]
        scores = d["scores"]
        parts.append(
            f"<p class='note'>{_mean_line(name, rec['metrics'])}; explainer {html.escape(d['explainer'])}, "
            f"embedding model {html.escape(d['embedding_model'])}.</p>"
            f"<details{' open' if len(scores) <= 8 else ''}><summary>{html.escape(name)}: {len(scores)} latents' "
            "AUROC and explanation</summary><div class='tw'><table class='sortable'><thead><tr><th>latent</th>"
            "<th>AUROC</th><th>act/non-act windows</th><th class=l>explanation</th></tr></thead><tbody>"
            + "".join(_score_row(s) for s in scores) + "</tbody></table></div></details>"
        )
    return "\n".join(parts)
