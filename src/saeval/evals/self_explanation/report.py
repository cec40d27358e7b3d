"""Self-explanation's report section: self-similarity against scale, and each latent's explanations."""

from __future__ import annotations

import html

from saeval.report.figures import figure_html


def report(records: list[dict]) -> str:
    import plotly.graph_objects as go

    parts = []
    for rec in records:
        fig = go.Figure()
        rows = []
        for e in rec["details"]["explanations"][:12]:
            sw = e["sweep"]
            fig.add_trace(go.Scatter(x=sw["scales"], y=sw["selfsim"], mode="lines", name=f"latent {e['latent']}"))
            rows.append(
                f"<tr><td>{e['latent']}</td><td>{sw['chosen_scale']:.1f}</td><td>{sw['max_selfsim']:.3f}"
                f"</td><td>{'yes' if sw['failed'] else ''}</td>"
                f"<td class=l>{html.escape(' | '.join(e['best']))}</td></tr>"
            )
        fig.update_layout(
            title=f"Self-similarity vs scale — {rec['sae']['name']}",
            xaxis_title="steering scale (latent activation injected)",
            yaxis_title=f"self-similarity ({rec['details'].get('selfsim', 'cosine')}, minus scale 0)",
        )
        parts.append(figure_html(fig))
        d = rec["details"]
        if d.get("selfsim_threshold") is not None:  # (the departures are in the section's departures line)
            parts.append(
                f"<p class='note'>self-similarity: {html.escape(d.get('selfsim', 'cosine'))}; failure threshold "
                f"{d['selfsim_threshold']:.3g} ({html.escape(d.get('selfsim_threshold_derivation', ''))}).</p>")
        parts.append(
            f"<details{' open' if len(rows) <= 6 else ''}><summary>{html.escape(rec['sae']['name'])}: "
            f"{len(rows)} latents' explanations</summary><div class='tw'><table class='sortable'><thead><tr>"
            "<th>latent</th><th>chosen scale</th><th>max self-sim</th><th>failed</th>"
            "<th class=l>explanations (best first)</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div></details>"
        )
    return "\n".join(parts)
