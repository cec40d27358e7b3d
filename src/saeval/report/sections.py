"""One eval's section: what its headline means (with the source), the Pareto plots, the eval's own plots, then
the metrics table, warnings and each SAE's config."""

from __future__ import annotations

import html
from typing import Any

from saeval.report.figures import color, figure_html
from saeval.report.pareto import pareto_html
from saeval.report.summary import Column, headline_columns
from saeval.report.tables import config_details, fmt, metrics_table, settings_warning, small_n_warning

# The implementation each eval is measured against, for evals whose details name no ``anchor`` of their own.
ANCHORS = {
    "core": "SAEBench",
    "embedding_score": "delphi",
    "scr": "SAEBench",
    "tpp": "SAEBench",
    "sparse_probing": "SAEBench",
    "shift": "Karvonen et al. 2024",
    "synthetic": "teren's code (Giglemiani et al. 2024)",
    "self_explanation": "the reference code",
}
# Metrics tables longer than this start collapsed, so the page stays short.
OPEN_ROWS = 16


def departures_line(record: dict[str, Any]) -> str:
    """"Departs from <anchor>: ..." from a result's ``details.departures`` (any eval's; empty when it has none),
    so a reader sees where a number's default differs from the implementation it is compared with."""
    details = record.get("details")
    lines = details.get("departures") if isinstance(details, dict) else None
    if not lines or not isinstance(lines, list):
        return ""
    anchor = details.get("anchor") if isinstance(details.get("anchor"), str) else None
    anchor = anchor or ANCHORS.get(record.get("eval", ""), "its reference")
    return (f"<p class='note'><b>Departs from {html.escape(anchor)}:</b> "
            + "; ".join(html.escape(str(line)) for line in lines) + "</p>")


def departures_html(records: list[dict[str, Any]]) -> str:
    """The departures line of a section's SAEs: one line when they share it, else one per distinct line, named
    by the SAEs it applies to (the departures follow each result's config, which may differ)."""
    by_line: dict[str, list[str]] = {}
    for rec in records:
        line = departures_line(rec)
        if line:
            by_line.setdefault(line, []).append(rec["sae"]["name"])
    if len(by_line) == 1 and len(next(iter(by_line.values()))) == len(records):
        return next(iter(by_line))
    return "".join(line.replace("<b>Departs", f"<b>{html.escape(', '.join(names))}: departs", 1)
                   for line, names in by_line.items())


def core_section(records: list[dict[str, Any]]) -> str:
    """Core's plot: the log10 firing-density histogram of each SAE's live latents."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, rec in enumerate(records):
        hist = (rec.get("details") or {}).get("log10_density_histogram")
        if not hist:
            continue
        edges = hist["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig.add_trace(go.Bar(x=centers, y=hist["counts"], name=rec["sae"]["name"], opacity=0.6,
                             marker_color=color(i)))
    if not fig.data:
        return ""
    fig.update_layout(barmode="overlay", title="Latent density (live latents)",
                      xaxis_title="log10 firing frequency (fraction of tokens)", yaxis_title="latents (count)")
    return figure_html(fig)


def result_warnings(records: list[dict[str, Any]]) -> str:
    """Each result's own ``warnings`` (sizes cut, ...), named by SAE."""
    items = "".join(f"<li>{html.escape(r['sae']['name'])}: {html.escape(str(w))}</li>"
                    for r in records for w in r.get("warnings") or [])
    return f"<div class='warn'><b>Warnings recorded with the results:</b><ul>{items}</ul></div>" if items else ""


def _intro(name: str, records: list[dict[str, Any]], column: Column | None, description: str) -> str:
    models = sorted({str(r.get("model")) for r in records})
    presets = sorted({str(r.get("preset")) for r in records})
    meaning = ""
    if column is not None:
        meaning = (f"<p class='meaning'><b>{html.escape(column.metric)}</b> ({html.escape(column.better)} is "
                   f"better {column.arrow}): {html.escape(column.meaning)} <span class='src'>Source: "
                   f"{html.escape(column.source)}.</span></p>")
    return (meaning + f"<p class='note'>{html.escape(description)} — {len(records)} SAE(s); model "
            f"{fmt(', '.join(models))}; preset <b>{fmt(', '.join(presets))}</b>.</p>")


def eval_section(name: str, records: list[dict[str, Any]], everything: list[dict[str, Any]]) -> str:
    """The section of eval ``name`` over its ``records`` (one per SAE). The Pareto plots read ``everything``:
    every SAE's core result (for L0) and the imported SAEBench records, which join the plots only."""
    from saeval.evals.base import EVALS

    spec = EVALS.get(name)
    columns = headline_columns(records)
    column = columns[0] if columns else None
    render = spec.report_fn() if spec else None
    own = render(records) if render is not None else core_section(records) if name == "core" else ""
    table = metrics_table(records, highlight=column.metric if column else None)
    n_rows = table.count("<tr>") - 1
    parts = [
        f"<section><h2 id='{name}'>{html.escape(name)}</h2>",
        _intro(name, records, column, spec.description if spec else ""),
        departures_html(records),
        result_warnings(records),
        settings_warning(records),
        small_n_warning(name, records),
        pareto_html(column, everything) if column else "",
        own,
        f"<details{' open' if n_rows <= OPEN_ROWS else ''}><summary>all metrics ({n_rows} rows; metrics as rows, "
        f"SAEs as columns)</summary>{table}</details>",
        config_details(records),
        "</section>",
    ]
    return "\n".join(p for p in parts if p)
