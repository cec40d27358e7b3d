"""Sparse probing's report section: test accuracy against k (SAE latents solid, model dimensions dashed, the
full-width probes as the rightmost points), and a table per dataset."""

from __future__ import annotations

import html
from typing import Any

from saeval.report.curves import value_at
from saeval.report.figures import color, figure_html


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def report(records: list[dict[str, Any]]) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    rows = []
    for i, rec in enumerate(records):
        ks = sorted(rec["config"].get("k_values", []))
        labels = [str(k) for k in ks] + ["all"]
        name = rec["sae"]["name"]
        for side, dash in (("sae", "solid"), ("llm", "dash")):
            ys = [value_at(rec, f"{side}_top_{k}_test_accuracy", "by_k") for k in ks]
            ys.append(value_at(rec, f"{side}_test_accuracy", "by_k"))
            fig.add_trace(go.Scatter(x=labels, y=ys, mode="lines+markers", name=f"{name} {side.upper()}",
                                     line=dict(color=color(i), dash=dash)))
        for dataset, d in rec.get("details", {}).get("datasets", {}).items():
            m = d.get("metrics", {})
            cells = [_cell(m.get(f"sae_top_{k}_test_accuracy")) for k in ks] + [_cell(m.get("sae_test_accuracy"))]
            cells += [_cell(m.get(f"llm_top_{k}_test_accuracy")) for k in ks] + [_cell(m.get("llm_test_accuracy"))]
            rows.append((name, dataset, ks, cells))
    fig.update_layout(title="Sparse probing: test accuracy vs k", xaxis_title="k (all: full-width probe)",
                      yaxis_title="test accuracy (fraction)", xaxis_type="category")
    table = []
    for name, dataset, ks, cells in rows:
        if not table or table[-1][0] != ks:
            head = "".join(f"<th>SAE top {k}</th>" for k in ks) + "<th>SAE all</th>"
            head += "".join(f"<th>LLM top {k}</th>" for k in ks) + "<th>LLM all</th>"
            table.append((ks, f"<tr><th>SAE</th><th>dataset</th>{head}</tr>"))
        table.append((ks, f"<tr><td>{html.escape(name)}</td><td>{html.escape(dataset)}</td>"
                          + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"))
    return (figure_html(fig) + "<details><summary>accuracy per dataset</summary><div class='tw'><table>"
            + "".join(t[1] for t in table) + "</table></div></details>")
