"""Report section of the steerability eval: summary table, histogram of S at the summary strength, and the
curves of the most steerable latents."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from saeval.report.html import figure_html


def report(records: list[dict[str, Any]]) -> str:
    """Summary table, histogram of S at the summary strength, and the curves of the most steerable latents."""
    columns = [
        "sae",
        "preset",
        "host",
        "summary_strength",
        "n_latents",
        "frac_steerable",
        "n_distinct_top_concepts",
        "mean_power",
        "mean_steerability",
        "mean_s_over_p",
        "mean_polysemanticity",
    ]
    rows = []
    hist = go.Figure()
    parts = []
    for rec in records:
        m, det = rec["metrics"], rec["details"]
        rows.append({"sae": rec["sae"]["name"], "preset": rec.get("preset"), "host": det.get("host"), **m})
        s_idx = det["strengths"].index(det["summary_strength"])
        latents = det["latents"]
        hist.add_trace(
            go.Histogram(
                x=[lat["steerability"][s_idx] for lat in latents],
                name=rec["sae"]["name"],
                opacity=0.6,
                nbinsx=40,
            )
        )
        best = sorted(latents, key=lambda lat: -lat["steerability"][s_idx])[:6]
        curve_s, curve_p = go.Figure(), go.Figure()
        for lat in best:
            label = f"#{lat['latent']}: {lat['top_concept']}"
            curve_s.add_trace(
                go.Scatter(x=det["strengths"], y=lat["steerability"], mode="lines+markers", name=label)
            )
            curve_p.add_trace(
                go.Scatter(x=det["strengths"], y=lat["top_concept_prob"], mode="lines+markers", name=label)
            )
        curve_s.update_layout(
            title=f"{rec['sae']['name']}: steerability S vs strength (most steerable latents)",
            xaxis_title="strength",
            yaxis_title="S",
        )
        curve_p.update_layout(
            title=f"{rec['sae']['name']}: top concept's mean probability vs strength",
            xaxis_title="strength",
            yaxis_title="p(top concept)",
        )
        table = "".join(
            f"<tr><td>{lat['latent']}</td><td>{lat['steerability'][s_idx]:.3g}</td><td>{lat['power'][s_idx]:.3g}</td>"
            f"<td>{html.escape(', '.join(w for w, _ in lat['promoted']))}</td>"
            f"<td>{html.escape(', '.join(w for w, _ in lat['demoted']))}</td></tr>"
            for lat in best
        )
        parts.append(
            figure_html(curve_s)
            + figure_html(curve_p)
            + "<table><tr><th>latent</th><th>S</th><th>power</th><th>promoted</th><th>demoted</th></tr>"
            + table
            + "</table>"
        )
    hist.update_layout(
        barmode="overlay",
        title="Steerability S of sampled latents at the summary strength",
        xaxis_title="S",
        yaxis_title="latents",
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    note = (
        "<p class='note'>Steering sets one latent to strength s at every token (SAE error kept); "
        "S = sum over the vocabulary of the squared mean probability shift; "
        "steerable iff S &gt; threshold.</p>"
    )
    return f"{note}<table><tr>{head}</tr>{body}</table>" + figure_html(hist) + "".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))
