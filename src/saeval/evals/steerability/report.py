"""Report section of the steerability eval: the histogram of S at the summary strength, and per SAE the curves
and words of its most steerable latents (the summary numbers are in the section's metrics table)."""

from __future__ import annotations

import html
from typing import Any

from saeval.report.figures import color, figure_html
from saeval.report.tables import Cell, table_html

S_TITLE = "steerability S (sum of squared mean probability shifts)"
STRENGTH_TITLE = "steering strength s (latent activation)"


def _best_latents(rec: dict[str, Any], s_idx: int) -> str:
    """Curves of S and of the top concept's probability against strength, and a table of the 6 best latents."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    det = rec["details"]
    best = sorted(det["latents"], key=lambda lat: -lat["steerability"][s_idx])[:6]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("S vs strength", "top concept's mean probability vs strength"))
    for i, lat in enumerate(best):
        label = f"#{lat['latent']}: {lat['top_concept']}"
        line = dict(color=color(i))
        fig.add_trace(go.Scatter(x=det["strengths"], y=lat["steerability"], mode="lines+markers", name=label,
                                 legendgroup=label, line=line), row=1, col=1)
        fig.add_trace(go.Scatter(x=det["strengths"], y=lat["top_concept_prob"], mode="lines+markers", name=label,
                                 legendgroup=label, showlegend=False, line=line), row=1, col=2)
    fig.update_xaxes(title_text=STRENGTH_TITLE)
    fig.update_yaxes(title_text="S", row=1, col=1)
    fig.update_yaxes(title_text="p(top concept)", row=1, col=2)
    fig.update_layout(title=f"{rec['sae']['name']}: the 6 most steerable latents")
    # Cells carry their numbers, so a header click sorts 0.012 before 0.5 (as text, "012" > "5" puts it after).
    rows = [{"latent": lat["latent"],
             "S": Cell(f"{lat['steerability'][s_idx]:.3g}", lat["steerability"][s_idx]),
             "power": Cell(f"{lat['power'][s_idx]:.3g}", lat["power"][s_idx]),
             "promoted": ", ".join(w for w, _ in lat["promoted"]),
             "demoted": ", ".join(w for w, _ in lat["demoted"])} for lat in best]
    return figure_html(fig, top=80) + table_html(rows, list(rows[0]) if rows else [], left=("promoted", "demoted"))


def report(records: list[dict[str, Any]]) -> str:
    import plotly.graph_objects as go

    hist = go.Figure()
    parts = []
    for i, rec in enumerate(records):
        det = rec["details"]
        s_idx = det["strengths"].index(det["summary_strength"])
        hist.add_trace(go.Histogram(x=[lat["steerability"][s_idx] for lat in det["latents"]],
                                    name=rec["sae"]["name"], opacity=0.6, nbinsx=40, marker_color=color(i)))
        parts.append(_best_latents(rec, s_idx))
    strengths = sorted({rec["details"]["summary_strength"] for rec in records})
    hist.update_layout(barmode="overlay", title="Steerability S of the sampled latents at the summary strength",
                       xaxis_title=S_TITLE, yaxis_title="latents (count)")
    hosts = ", ".join(sorted({html.escape(str(rec["details"].get("host"))) for rec in records}))
    note = (
        "<p class='note'>Steering sets one latent to strength s at every token (SAE error kept); "
        "S = sum over the concept vocabulary of the squared mean probability shift; steerable iff S &gt; "
        f"threshold. Summary strength {', '.join(f'{s:g}' for s in strengths)}; host {hosts}.</p>"
    )
    return note + figure_html(hist) + "".join(parts)
