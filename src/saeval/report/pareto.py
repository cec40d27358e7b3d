"""SAEBench-style Pareto plots: an eval's headline metric against L0 and against width, one point per SAE,
imported SAEBench results beside saeval's."""

from __future__ import annotations

from typing import Any

from saeval.report.figures import color, figure_html, log_ticks
from saeval.report.summary import Column, as_number, sae_key


def _error(metrics: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    """(minus, plus) error bar of ``metrics[key]``: its bootstrap interval, else its seed std."""
    value, std = as_number(metrics.get(key)), as_number(metrics.get(f"{key}_std"))
    low, high = as_number(metrics.get(f"{key}_ci_low")), as_number(metrics.get(f"{key}_ci_high"))
    if value is not None and low is not None and high is not None:
        return value - low, high - value
    return std, std


def pareto_points(column: Column, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per SAE with a headline value: name, architecture, imported, L0 (its core result), width."""
    l0 = {sae_key(r): as_number(r["metrics"].get("l0")) for r in records if r.get("eval") == "core"}
    points = []
    for rec in records:
        value = as_number(rec["metrics"].get(column.metric)) if rec.get("eval") == column.eval else None
        if value is None:
            continue
        minus, plus = _error(rec["metrics"], column.metric)
        points.append({"name": rec["sae"]["name"], "imported": "imported" in rec, "value": value,
                       "architecture": rec["sae"].get("architecture") or "?", "l0": l0.get(sae_key(rec)),
                       "width": as_number(rec["sae"].get("d_sae")), "minus": minus, "plus": plus})
    return points


def pareto_html(column: Column, records: list[dict[str, Any]]) -> str:
    """The headline against L0 and against d_sae (log axes), or "" when no SAE has the headline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    points = pareto_points(column, records)
    if not points:
        return ""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=(f"{column.metric} vs L0", f"{column.metric} vs width"))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault("imported (SAEBench)" if p["imported"] else p["architecture"], []).append(p)
    for i, (label, group) in enumerate(groups.items()):
        imported = label.startswith("imported")
        marker = dict(size=11, symbol="diamond-open" if imported else "circle",
                      color="#555" if imported else color(i), line=dict(width=2 if imported else 1))
        for col, axis in ((1, "l0"), (2, "width")):
            shown = [p for p in group if p[axis] is not None and p[axis] > 0]
            errors = None
            if any(p["plus"] is not None for p in shown):
                errors = dict(type="data", symmetric=False, array=[p["plus"] for p in shown],
                              arrayminus=[p["minus"] for p in shown], visible=True)
            fig.add_trace(go.Scatter(
                x=[p[axis] for p in shown], y=[p["value"] for p in shown], mode="markers", name=label,
                legendgroup=label, showlegend=col == 1, marker=marker, error_y=errors,
                text=[p["name"] for p in shown],
                hovertemplate="<b>%{text}</b><br>" + ("L0" if axis == "l0" else "d_sae")
                + " %{x:.4g}<br>" + column.metric + " %{y:.4g}<extra>" + label + "</extra>"), row=1, col=col)
    fig.update_xaxes(type="log", title_text="L0 (mean active latents per token)",
                     **log_ticks([p["l0"] for p in points if p["l0"]]), row=1, col=1)
    fig.update_xaxes(type="log", title_text="width d_sae (latents)",
                     **log_ticks([p["width"] for p in points if p["width"]]), row=1, col=2)
    fig.update_yaxes(title_text=column.metric)
    fig.update_layout(title=f"{column.title} against sparsity and width, one point per SAE",
                      legend_title_text="SAE family")
    fig.update_annotations(font_size=13)
    return figure_html(fig, height=420, top=90)
