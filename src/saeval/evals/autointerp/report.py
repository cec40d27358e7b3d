"""Autointerp's report section: the summary scores, then each latent's explanation and scores (collapsed)."""

from __future__ import annotations

import html


def _num(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _row(latent: dict, scorers: list[str]) -> str:
    cells = "".join(f"<td>{_num(latent['scores'][s]['score']) if s in latent['scores'] else ''}</td>"
                    for s in scorers)
    text = html.escape(latent["explanation"] or latent["note"])
    return f"<tr><td>{latent['latent']}</td><td>{latent['n_active_tokens']}</td>{cells}<td class=l>{text}</td></tr>"


def report(records: list[dict]) -> str:
    parts = []
    for rec in records:
        d, m = rec["details"], rec["metrics"]
        scorers = list(rec["config"]["scorers"])
        usage = "; ".join(f"{role} {html.escape(u['model'])}: {u['n_calls']} calls, "
                          f"{u['prompt_tokens'] + u['completion_tokens']} tokens" for role, u in d["usage"].items())
        std = m.get("autointerp_std_dev")
        parts.append(
            f"<p class='note'>{html.escape(rec['sae']['name'])}: autointerp_score {_num(m['autointerp_score'])}"
            + (f" (std over latents {std:.3f})" if std is not None else "")
            + f", detection {_num(m['detection_balanced_accuracy'])}, fuzzing "
            f"{_num(m['fuzzing_balanced_accuracy'])} (balanced accuracy, chance 0.5) on {m['n_scored']} of "
            f"{m['n_latents']} latents; explainer {html.escape(d['explainer'])}, judge {html.escape(d['judge'])} "
            f"({html.escape(d['judge_format'])}); {usage}</p>"
            + (f"<p class='warn'>{html.escape(d['judge_note'])}</p>" if d.get("judge_note") else "")
            + f"<details{' open' if len(d['latents']) <= 8 else ''}><summary>{html.escape(rec['sae']['name'])}: "
            f"{len(d['latents'])} latents' explanations and scores</summary><div class='tw'><table class='sortable'>"
            "<thead><tr><th>latent</th><th>active tokens</th>"
            + "".join(f"<th>{html.escape(s)}</th>" for s in scorers)
            + "<th class=l>explanation</th></tr></thead><tbody>"
            + "".join(_row(lat, scorers) for lat in d["latents"]) + "</tbody></table></div></details>"
        )
    return "\n".join(parts)
