"""The summary: one row per SAE with each eval's headline metric, the best of each column marked. The same
rows feed the report's table and the console table printed at the end of ``saeval demo``."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeval.report.tables import LATENT_COUNTS, MIN_LATENTS


@dataclass
class Column:
    eval: str
    metric: str
    better: str
    meaning: str
    source: str

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.better, "")

    @property
    def title(self) -> str:
        """``core: ce_loss_score (higher is better ↑)``."""
        return f"{self.eval}: {self.metric} ({self.better} is better {self.arrow})".replace(" )", ")")


@dataclass
class Value:
    value: float | None
    spread: str = ""  # "± 0.01" or "[0.61, 0.72]" when the eval recorded one
    few_latents: int | None = None  # the latent count when below MIN_LATENTS
    best: bool = False

    def text(self) -> str:
        if self.value is None:
            return "–"
        if isinstance(self.value, float) and not math.isfinite(self.value):
            return "n/a"
        return f"{self.value:.4g}" + (f" {self.spread}" if self.spread else "")


@dataclass
class Row:
    sae: str
    imported: bool
    d_sae: int | None
    l0: float | None
    values: dict[str, Value] = field(default_factory=dict)


# Reading order of the evals: reconstruction first, then SAEBench's downstream evals, then interpretability.
EVAL_ORDER = ("core", "sparse_probing", "scr", "tpp", "shift", "autointerp", "embedding_score", "self_explanation",
              "steerability", "synthetic")


def eval_order(name: str) -> tuple[int, str]:
    return (EVAL_ORDER.index(name) if name in EVAL_ORDER else len(EVAL_ORDER), name)


def headline_columns(records: list[dict[str, Any]]) -> list[Column]:
    """One column per eval present in ``records`` that declares a headline, in EVAL_ORDER."""
    import saeval.evals  # noqa: F401  (registers the built-in evals)
    from saeval.evals.base import EVALS

    present = sorted({r.get("eval") for r in records if r.get("eval") in EVALS}, key=eval_order)
    return [Column(name, h.metric, h.better, h.meaning, h.source) for name in present
            if (h := EVALS[name].headline) is not None]


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number (bools are not), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _spread(metrics: dict[str, Any], key: str) -> str:
    std = as_number(metrics.get(f"{key}_std"))
    low, high = as_number(metrics.get(f"{key}_ci_low")), as_number(metrics.get(f"{key}_ci_high"))
    if low is not None and high is not None:
        return f"[{low:.3g}, {high:.3g}]"
    return f"± {std:.2g}" if std is not None else ""


def sae_key(rec: dict[str, Any]) -> tuple[str, bool]:
    return rec["sae"]["name"], "imported" in rec


def summary_rows(records: list[dict[str, Any]]) -> tuple[list[Column], list[Row]]:
    """The summary's columns and one row per SAE (imported SAEs after saeval's), best value of each column
    marked where the headline says which direction is better."""
    columns = headline_columns(records)
    rows: dict[tuple[str, bool], Row] = {}
    for rec in records:
        key = sae_key(rec)
        row = rows.setdefault(key, Row(key[0], key[1], rec["sae"].get("d_sae"), None))
        metrics = rec.get("metrics") or {}
        if rec.get("eval") == "core":
            row.l0 = as_number(metrics.get("l0"))
        for col in columns:
            if rec.get("eval") != col.eval:
                continue
            count = metrics.get(LATENT_COUNTS.get(col.eval, ""))
            few = count if isinstance(count, int) and count < MIN_LATENTS else None
            row.values[col.eval] = Value(as_number(metrics.get(col.metric)), _spread(metrics, col.metric), few)
    ordered = sorted(rows.values(), key=lambda r: (r.imported, r.sae))
    for col in columns:
        sign = {"higher": 1, "lower": -1}.get(col.better)
        scored = [r.values[col.eval] for r in ordered if col.eval in r.values
                  and r.values[col.eval].value is not None and math.isfinite(r.values[col.eval].value)]
        if sign is None or len({v.value for v in scored}) < 2:  # nothing to choose between
            continue
        best = max(v.value * sign for v in scored)
        for v in scored:
            v.best = v.value * sign == best
    return columns, ordered


def summary_html(records: list[dict[str, Any]]) -> str:
    """The report's summary table: SAE, width, L0, then each eval's headline (sortable, best marked ★)."""
    columns, rows = summary_rows(records)
    if not rows:
        return ""
    head = "<th class=l>SAE</th><th>d_sae</th><th>L0</th>" + "".join(
        f"<th title='{html.escape(c.meaning + ' (' + c.source + ')', quote=True)}'><a href='#{c.eval}'>"
        f"{html.escape(c.eval)}</a><br><small>{html.escape(c.metric).replace('_', '_<wbr>')}</small><br>"
        f"<small class='dir'>{html.escape(c.better)} is better {c.arrow}</small></th>" for c in columns)
    body = []
    for r in rows:
        tag = " <span class='tag'>imported</span>" if r.imported else ""
        cells = [f"<td>{html.escape(r.sae)}{tag}</td>",
                 f"<td data-v='{r.d_sae}'>{r.d_sae}</td>" if r.d_sae is not None else "<td>–</td>",
                 f"<td data-v='{r.l0!r}'>{r.l0:.4g}</td>" if r.l0 is not None else "<td>–</td>"]
        for c in columns:
            v = r.values.get(c.eval)
            if v is None:
                cells.append("<td>–</td>")
                continue
            cls = " class='best'" if v.best else ""
            mark = " ★" if v.best else ""
            warn = (f" <span class='fewmark' title='mean over {v.few_latents} latents (fewer than {MIN_LATENTS})'>"
                    f"⚠ n={v.few_latents}</span>") if v.few_latents is not None else ""
            sort = f" data-v='{v.value!r}'" if v.value is not None else ""
            cells.append(f"<td{sort}{cls}>{html.escape(v.text())}{mark}{warn}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<div class='tw'><table class='sortable summary' id='summary-table'><thead><tr>" + head
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>"
            "<p class='note'>★ best in the column; ⚠ a mean over fewer than "
            f"{MIN_LATENTS} latents. Hover a header for what the number means; click it to sort.</p>")


def print_summary(out_dir: Path, report_path: Path) -> None:
    """A one-screen console table of every SAE's headline metrics under ``out_dir``, then the report's path."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from saeval.report.records import eval_records, imported_records

    notes: list[str] = []
    records = eval_records(Path(out_dir), notes) + imported_records(Path(out_dir))
    columns, rows = summary_rows(records)
    # Transposed (evals as rows, SAEs as columns): a few SAEs fit an 80-column terminal, names folding.
    table = Table(title=f"saeval results in {out_dir}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("headline", no_wrap=True)
    for r in rows:
        table.add_column(r.sae + (" (imported)" if r.imported else ""), justify="right", overflow="fold")
    table.add_row("L0", *("–" if r.l0 is None else f"{r.l0:.4g}" for r in rows))
    for c in columns:
        cells = []
        for r in rows:
            v = r.values.get(c.eval)
            if v is None or v.value is None:
                cells.append("–")
                continue
            text = (v.text() if v.spread.startswith("±") else Value(v.value).text()) + ("*" if v.best else "") + (
                f" (n={v.few_latents})" if v.few_latents is not None else "")
            cells.append(f"[bold green]{text}[/]" if v.best else text)
        table.add_row(f"{c.eval} {c.metric} {c.arrow}".rstrip(), *cells)
    console = Console()
    console.print(table)
    console.print("* best of its row; ↑ higher is better, ↓ lower is better; (n=..) mean over fewer than "
                  f"{MIN_LATENTS} latents; intervals in the report")
    console.print(f"report: {report_path}")
