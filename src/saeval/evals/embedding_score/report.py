"""Embedding score's report section: each latent's AUROC and the explanation it scored."""

from __future__ import annotations

import html


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
