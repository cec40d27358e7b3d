"""SHIFT's report section: the score against the number of candidates, and every judgement with its evidence."""

from __future__ import annotations

import html
from typing import Any

from saeval.analysis.erasure_report import score_vs_n


def fmt_score(score: float | None) -> str:
    return "" if score is None else f"{score:.3f}"


def report(records: list[dict[str, Any]]) -> str:
    parts = [score_vs_n(records, "shift_threshold_{n}", "SHIFT score vs number of candidate latents judged")]
    for rec in records:
        for name, pair in rec["details"]["pairs"].items():
            rows = "".join(
                f"<tr><td>{j['rank']}</td><td>{j['latent']}</td><td>{html.escape(j['verdict'])}</td>"
                f"<td>{fmt_score(j['score'])}</td><td>{j['reference_spurious']}</td>"
                f"<td style='text-align:left'>{html.escape(j['evidence'].get('explanation') or '')}</td>"
                f"<td style='text-align:left'>{html.escape(' | '.join(j['evidence']['windows'][:2]))}</td></tr>"
                for j in pair["judgements"])
            parts.append(f"<h3>{html.escape(rec['sae']['name'])} — {html.escape(name)}: judge "
                         f"{html.escape(rec['details']['judge'])}, spurious = "
                         f"{html.escape(pair['question']['spurious'])}</h3><table><tr><th>rank</th><th>latent</th>"
                         f"<th>verdict</th><th>score</th><th>probe ref.</th><th>explanation</th>"
                         f"<th>top windows</th></tr>{rows}</table>")
    return "\n".join(parts)
