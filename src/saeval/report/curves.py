"""Report curves of the concept-erasure evals (SCR, TPP, SHIFT): a score against the number N of latents
ablated, one colour per SAE, seed std as error bars."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from saeval.report.figures import color, figure_html


def value_at(rec: dict[str, Any], key: str, extra: str = "by_n") -> float | None:
    """A metric of a result record: typed metrics hold SAEBench's N (or k), ``details.by_n`` (``by_k``) any
    other."""
    found = rec["metrics"].get(key)
    return found if found is not None else (rec.get("details") or {}).get(extra, {}).get(key)


def score_vs_n(records: list[dict], key: str, title: str, y_title: str,
               extra: Sequence[tuple[str, str, str]] = ()) -> str:
    """One line per SAE of ``key.format(n=N)`` over the config's n_values (log x labelled at each N), error
    bars from ``..._std`` when several seeds ran, dashed companions from ``extra`` (key, label, dash)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    notes = []
    for i, rec in enumerate(records):
        n_values = sorted(rec["config"].get("n_values", []))
        name = rec["sae"]["name"]
        for template, label, dash in [(key, "", "solid"), *extra]:
            ys = [value_at(rec, template.format(n=n)) for n in n_values]
            std = [value_at(rec, template.format(n=n) + "_std") for n in n_values]
            errors = dict(type="data", array=std, visible=True) if dash == "solid" and any(
                v is not None for v in std) else None
            fig.add_trace(go.Scatter(x=n_values, y=ys, mode="lines+markers", error_y=errors,
                                     name=f"{name} {label}".strip(), line=dict(color=color(i), dash=dash)))
        mode = (rec.get("details") or {}).get("mode", "?")
        notes.append(f"{html.escape(name)}: mode {html.escape(str(mode))}, seeds {rec['config'].get('seeds')}")
    fig.update_layout(title=title, xaxis_title="N latents ablated (log scale)", yaxis_title=y_title)
    fig.update_xaxes(type="log")
    return figure_html(fig) + "<p class='note'>" + "; ".join(notes) + "</p>"
