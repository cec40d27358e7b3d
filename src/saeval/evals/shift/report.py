"""SHIFT's report section: the score against the number of candidates, and every judgement with its evidence
(collapsed per SAE and pair)."""

from __future__ import annotations

import html
from typing import Any

from saeval.report.curves import score_vs_n


def fmt_score(score: float | None) -> str:
    return "" if score is None else f"{score:.3f}"


def _judgements(pair: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{j['rank']}</td><td>{j['latent']}</td><td class=l>{html.escape(j['verdict'])}</td>"
        f"<td>{fmt_score(j['score'])}</td><td>{j['reference_spurious']}</td>"
        f"<td class=l>{html.escape(j['evidence'].get('explanation') or '')}</td>"
        f"<td class=l>{html.escape(' | '.join(j['evidence']['windows'][:2]))}</td></tr>"
        for j in pair["judgements"])
    return ("<div class='tw'><table class='sortable'><thead><tr><th>rank</th><th>latent</th><th class=l>verdict"
            "</th><th>score</th><th>probe ref.</th><th class=l>explanation</th><th class=l>top windows</th></tr>"
            f"</thead><tbody>{rows}</tbody></table></div>")


def report(records: list[dict[str, Any]]) -> str:
    parts = [score_vs_n(records, "shift_threshold_{n}", "SHIFT score vs number of candidate latents judged",
                        "SHIFT score (fraction of accuracy regained)")]
    for rec in records:
        for name, pair in rec["details"]["pairs"].items():
            parts.append(
                f"<details><summary>{html.escape(rec['sae']['name'])} — {html.escape(name)}: "
                f"{len(pair['judgements'])} judgements by {html.escape(rec['details']['judge'])}, spurious = "
                f"{html.escape(pair['question']['spurious'])}</summary>{_judgements(pair)}</details>")
    return "\n".join(parts)
