"""Plotly figures as placeholders: a div and the figure's JSON, drawn by the page's script once plotly.js (at the
end of the body) has loaded, so the text shows before the 4.8 MB library is parsed."""

from __future__ import annotations

import html
import itertools
import json
import math
from typing import Any

import plotly.graph_objects as go

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22",
           "#e377c2"]
_ids = itertools.count()


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def log_ticks(values: list[float]) -> dict[str, Any]:
    """Tick settings for a log axis over ``values``: the values themselves when few (labels 2, 5, 10, 20...),
    else one tick per power of ten, never plotly's bare-digit labels of minor ticks."""
    positive = sorted({float(v) for v in values if isinstance(v, int | float) and v > 0 and math.isfinite(v)})
    if not positive:
        return {}
    if len(positive) <= 10:
        return dict(tickmode="array", tickvals=positive, ticktext=[f"{v:.4g}" for v in positive])
    lo, hi = math.floor(math.log10(positive[0])), math.ceil(math.log10(positive[-1]))
    decades = [10.0 ** e for e in range(lo, hi + 1)]
    return dict(tickmode="array", tickvals=decades, ticktext=[f"{v:g}" for v in decades])


def _axis_values(fig: go.Figure, axis: str) -> list[float]:
    """Every x (or y) value of the traces drawn on layout axis ``axis`` ("xaxis", "yaxis2", ...)."""
    letter, suffix = axis[0], axis[5:]
    ref = letter + suffix  # "x", "x2"...
    out: list[float] = []
    for trace in fig.data:
        if (getattr(trace, f"{letter}axis", None) or letter) != ref:
            continue
        values = getattr(trace, letter, None)
        if values is not None:
            out += [v for v in values if isinstance(v, int | float)]
    return out


def fix_log_axes(fig: go.Figure) -> None:
    """Give every log axis without explicit ticks the ticks of :func:`log_ticks` over its data."""
    layout = fig.layout.to_plotly_json()
    for axis, settings in layout.items():
        if axis[:5] in ("xaxis", "yaxis") and isinstance(settings, dict) and settings.get("type") == "log" \
                and "tickvals" not in settings:
            fig.layout[axis].update(log_ticks(_axis_values(fig, axis)))


def figure_json(fig: go.Figure) -> str:
    """The figure's data and layout as JSON safe inside a <script> element (the template comes from the page)."""
    spec = json.loads(fig.to_json())
    spec.get("layout", {}).pop("template", None)
    return json.dumps({"data": spec.get("data", []), "layout": spec.get("layout", {})},
                      separators=(",", ":")).replace("</", "<\\/")


def figure_html(fig: go.Figure, height: int = 380, top: int = 50) -> str:
    """A placeholder div for ``fig`` and its JSON; the page's script draws it after plotly.js loads."""
    fig.update_layout(margin=dict(l=60, r=20, t=top, b=50), height=height)
    fix_log_axes(fig)
    fig_id = f"fig{next(_ids)}"
    title = fig.layout.title.text or ""
    return (f"<div class='plot' id='{fig_id}' data-src='{fig_id}-json' style='min-height:{height}px' "
            f"aria-label='{html.escape(title, quote=True)}'></div>"
            f"<script type='application/json' id='{fig_id}-json'>{figure_json(fig)}</script>")
