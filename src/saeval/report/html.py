"""`saeval report DIR`: one self-contained HTML file (plotly.js inlined once) from the result JSON files."""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from pydantic import ValidationError

from saeval.errors import SaevalError
from saeval.io import write_text_atomic
from saeval.results import STUDY_FOLDER, read_result, result_files

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}h2{border-bottom:2px solid #ddd;margin-top:2em}
.note{color:#666;font-size:13px}
"""


def figure_html(fig: go.Figure) -> str:
    """A plotly figure as a div; the page includes plotly.js once in its head."""
    fig.update_layout(template="plotly_white", margin=dict(l=50, r=20, t=40, b=40), height=380)
    return fig.to_html(full_html=False, include_plotlyjs=False)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table_html(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def metrics_table(records: list[dict[str, Any]]) -> str:
    """One row per SAE, one column per scalar metric (the union across SAEs)."""
    columns: list[str] = []
    rows = []
    for rec in records:
        row = {"sae": rec["sae"]["name"]}
        for key, value in rec["metrics"].items():
            if isinstance(value, int | float) or value is None:
                row[key] = value
                if key not in columns:
                    columns.append(key)
        rows.append(row)
    return table_html(rows, ["sae", *columns])


# The implementation each eval is measured against, for evals whose details name no ``anchor`` of their own.
ANCHORS = {
    "core": "SAEBench",
    "embedding_score": "delphi",
    "scr": "SAEBench",
    "tpp": "SAEBench",
    "sparse_probing": "SAEBench",
    "shift": "Karvonen et al. 2024",
    "synthetic": "Giglemiani et al. 2024",
    "self_explanation": "the reference code",
}


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


def core_section(records: list[dict[str, Any]]) -> str:
    fig = go.Figure()
    for rec in records:
        hist = rec["details"]["log10_density_histogram"]
        edges = hist["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig.add_trace(go.Bar(x=centers, y=hist["counts"], name=rec["sae"]["name"], opacity=0.6))
    fig.update_layout(barmode="overlay", title="Latent density (log10 firing frequency, live latents)",
                      xaxis_title="log10 density", yaxis_title="latents")
    return figure_html(fig)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_result(path)
    except SaevalError:
        return None


def eval_records(out_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Every eval result under ``out_dir`` (``<sae>/<eval>.json``), read through its eval's result model when
    the eval is registered; a file that does not read is left out with a note."""
    import saeval.evals  # noqa: F401  (registers the built-in evals)
    from saeval.evals.base import EVALS

    records = []
    for path in result_files(out_dir):
        rec = _read(path)
        if rec is None or "eval" not in rec:
            notes.append(f"{path}: not a result file")
            continue
        spec = EVALS.get(rec["eval"])
        if spec is not None:
            try:
                rec = spec.result_cls.model_validate(rec).model_dump(mode="json")
            except ValidationError:
                notes.append(f"{path}: does not match the {spec.name} result format (rerun it with --force)")
                continue
        records.append(rec)
    return records


def study_sections(out_dir: Path, notes: list[str]) -> list[tuple[str, str]]:
    """(study name, HTML section) of every ``OUT/studies/<study>.json``, rendered by the study's report."""
    from saeval.studies import STUDIES

    sections = []
    for path in sorted((Path(out_dir) / STUDY_FOLDER).glob("*.json")):
        spec = STUDIES.get(path.stem)
        rec = _read(path)
        if spec is None or rec is None:
            notes.append(f"{path}: not the result of a registered study")
            continue
        try:
            result = spec.result_cls.model_validate(rec)
        except ValidationError:
            notes.append(f"{path}: does not match the {spec.name} result format (rerun it with --force)")
            continue
        render = spec.report_fn()
        if render is not None:
            sections.append((spec.name, render(result)))
    return sections


def build_report(out_dir: Path, path: Path | None = None) -> Path:
    from saeval.evals.base import EVALS

    notes: list[str] = []
    records = eval_records(out_dir, notes)
    studies = study_sections(out_dir, notes)
    if not records and not studies:
        raise SaevalError(f"no result files (<sae>/<eval>.json or studies/<study>.json) under {out_dir}: "
                          "run `saeval run` first")
    by_eval: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_eval[rec["eval"]].append(rec)
    sections = []
    for name, recs in by_eval.items():
        meta = recs[0]
        spec = EVALS.get(name)
        intro = (f"<p class='note'>{html.escape(spec.description if spec else '')} — model "
                 f"{fmt(meta.get('model'))}, preset <b>{fmt(meta.get('preset'))}</b>; config: "
                 f"{html.escape(str(meta.get('config')))}</p>")
        parts = [f"<h2 id='{name}'>{html.escape(name)}</h2>", intro, departures_line(meta), metrics_table(recs)]
        render = spec.report_fn() if spec else None
        if render is not None:
            parts.append(render(recs))
        elif name == "core":
            parts.append(core_section(recs))
        sections.append("\n".join(parts))
    sections += [section for _, section in studies]
    nav = " · ".join(f"<a href='#{n}'>{n}</a>" for n in [*by_eval, *(name for name, _ in studies)])
    skipped = "".join(f"<p class='note'>skipped {html.escape(n)}</p>" for n in notes)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>saeval report</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>saeval report</h1><p class='note'>{html.escape(str(out_dir))} — {len(records)} results. {nav}</p>"
            + skipped + "\n".join(sections) + "</body></html>")
    return write_text_atomic(path or Path(out_dir) / "report.html", page)
