"""`saeval report DIR`: one self-contained HTML file from the result JSON files. The text comes first and shows at
once; plotly.js is inlined once at the end of the body, then a small script draws each figure from its JSON."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saeval import __version__
from saeval.errors import SaevalError
from saeval.io import write_text_atomic
from saeval.report.records import eval_records, imported_records, study_results
from saeval.report.sections import eval_section
from saeval.report.summary import eval_order, summary_html

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h2{border-bottom:2px solid #ddd;margin-top:2em}h4{margin:.6em 0 .2em}
.tw{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.l,th.l{text-align:left}td:first-child{text-align:left}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e6eefa}
td.best{font-weight:700;background:#e7f6e7}.dir{color:#1a5e1a}.tag{font-size:11px;background:#eee;
border-radius:3px;padding:0 4px;color:#555}.fewmark{color:#a15c00;font-size:11px}
.note{color:#555;font-size:13px}.meaning{font-size:15px}.src{color:#666}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em;margin:.6em 0;font-size:13px}
.warn ul{margin:.2em 0}pre{background:#f7f7f7;padding:.5em;font-size:12px;overflow-x:auto;max-height:24em}
details{margin:.5em 0}summary{cursor:pointer;color:#1f4e99}.plot{width:100%}
.verdict{font-size:14px}.bad{color:#b42318}
table.summary td:first-child{min-width:10em;max-width:16em;overflow-wrap:anywhere}
table.summary th{font-size:12px;min-width:4em}
table.summary td,table.summary th{padding:3px 5px}
footer{margin-top:3em;border-top:1px solid #ddd;padding-top:.5em;font-size:12px;color:#555}
footer code{white-space:pre-wrap;word-break:break-all}
"""

# After the load event, runs plotly.js (kept as inert text until then, so neither parsing nor the load event
# waits for its 4.8 MB) from a blob URL, then draws every figure placeholder (figures.figure_html), nearest to
# the viewport first, a few per frame so the page stays usable; figures inside a closed <details> are drawn
# when it opens.
# Table headers sort their column, numerically where cells carry data-v.
SCRIPT = """
(function(){
var T=JSON.parse(document.getElementById('plot-template').textContent);
function draw(d){if(d.dataset.drawn)return;d.dataset.drawn='1';
 var f=JSON.parse(document.getElementById(d.dataset.src).textContent);f.layout.template=T;
 Plotly.newPlot(d,f.data,f.layout,{responsive:true,displaylogo:false});}
function hidden(d){var p=d.closest('details:not([open])');return p!==null;}
function drawAll(){var q=[].slice.call(document.querySelectorAll('div.plot'));var i=0;
 q.sort(function(a,b){return Math.abs(a.getBoundingClientRect().top)-Math.abs(b.getBoundingClientRect().top);});
 function step(){var t=performance.now();
  while(i<q.length&&performance.now()-t<30){var d=q[i++];if(!hidden(d))draw(d);}
  if(i<q.length)setTimeout(step,0);else{document.body.dataset.plotsDone=performance.now().toFixed(0);}}
 step();}
document.addEventListener('toggle',function(e){if(e.target.open&&window.Plotly)
 e.target.querySelectorAll('div.plot').forEach(function(d){if(!hidden(d))draw(d);});},true);
function loadPlotly(){var src=document.getElementById('plotly-js');
 var url=URL.createObjectURL(new Blob([src.textContent],{type:'text/javascript'}));src.remove();
 var s=document.createElement('script');s.src=url;s.onload=function(){URL.revokeObjectURL(url);
  document.body.dataset.plotlyLoaded=performance.now().toFixed(0);drawAll();};
 document.body.appendChild(s);}
if(document.readyState==='complete')setTimeout(loadPlotly,0);else window.addEventListener('load',function(){
 setTimeout(loadPlotly,0);});
document.querySelectorAll('table.sortable th').forEach(function(th,idx){th.addEventListener('click',function(){
 var tb=th.closest('table').tBodies[0],col=th.cellIndex,dir=th.dataset.dir==='1'?-1:1;th.dataset.dir=dir===1?'1':'0';
 var rows=[].slice.call(tb.rows);rows.sort(function(a,b){var x=a.cells[col],y=b.cells[col];
  var u=x&&x.dataset.v!==undefined?parseFloat(x.dataset.v):NaN,v=y&&y.dataset.v!==undefined?parseFloat(y.dataset.v):NaN;
  if(!isNaN(u)&&!isNaN(v))return dir*(u-v);if(!isNaN(u))return -1;if(!isNaN(v))return 1;
  return dir*(x?x.textContent:'').localeCompare(y?y.textContent:'',undefined,{numeric:true});});
 rows.forEach(function(r){tb.appendChild(r);});});});
})();
"""


def _template_json() -> str:
    import plotly.io as pio

    return json.dumps(pio.templates["plotly_white"].to_plotly_json(), separators=(",", ":")).replace("</", "<\\/")


def footer_html(records: list[dict[str, Any]], studies: list[Any]) -> str:
    """saeval's version, the report's date, and each distinct command line (``provenance.command``, with the
    saeval version and dates) that made the results."""
    made: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for rec in records:
        command = (rec.get("provenance") or {}).get("command") or "(not recorded)"
        made[command].append((f"{rec['sae']['name']}/{rec['eval']}", str(rec.get("saeval_version", "?")),
                              str(rec.get("created_at", "?"))))
    for _, result in studies:
        command = (getattr(result, "provenance", None) and getattr(result.provenance, "command", None)) \
            or "(not recorded)"
        made[command].append((f"studies/{result.study}", str(result.saeval_version), str(result.created_at)))
    items = []
    for command, made_by in made.items():
        versions = ", ".join(sorted({v for _, v, _ in made_by}))
        dates = sorted(d for _, _, d in made_by)
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} – {dates[-1]}"
        names = ", ".join(n for n, _, _ in made_by[:8]) + (f" and {len(made_by) - 8} more" if len(made_by) > 8
                                                            else "")
        items.append(f"<li><code>{html.escape(command)}</code> — saeval {html.escape(versions)}, "
                     f"{html.escape(span)}: {html.escape(names)}</li>")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (f"<footer>Report by saeval {html.escape(__version__)} on {now}. Results made by:<ul>"
            + "".join(items) + "</ul></footer>")


def build_report(out_dir: Path, path: Path | None = None) -> Path:
    """Write ``OUT/report.html`` (or ``path``) from every result under ``out_dir``; returns its path."""
    from plotly.offline import get_plotlyjs

    notes: list[str] = []
    records = eval_records(out_dir, notes)
    imported = imported_records(out_dir)
    studies = study_results(out_dir, notes)
    if not records and not studies and not imported:
        raise SaevalError(f"no result files (<sae>/<eval>.json or studies/<study>.json) under {out_dir}: "
                          "run `saeval run` first")
    by_eval: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_eval[rec["eval"]].append(rec)
    everything = records + imported
    sections = [eval_section(name, by_eval[name], everything) for name in sorted(by_eval, key=eval_order)]
    study_names = []
    for spec, result in studies:
        render = spec.report_fn()
        if render is not None:
            sections.append(render(result))
            study_names.append(spec.name)
    names = ["summary", *sorted(by_eval, key=eval_order), *study_names]
    nav = " · ".join(f"<a href='#{n}'>{n}</a>" for n in names)
    skipped = "".join(f"<p class='note'>skipped {html.escape(n)}</p>" for n in notes)
    n_saes = len({r["sae"]["name"] for r in records})
    summary = summary_html(everything)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>saeval report</title><style>{STYLE}</style></head><body>"
        f"<h1>saeval report</h1><p class='note'>{html.escape(str(out_dir))} — {len(records)} results on "
        f"{n_saes} SAEs" + (f", {len({r['sae']['name'] for r in imported})} imported" if imported else "")
        + f". {nav}</p>" + skipped
        + (f"<section><h2 id='summary'>Summary: which SAE is better at what</h2>{summary}</section>" if summary
           else "")
        + "\n".join(sections) + footer_html(records, studies)
        + f"<script type='application/json' id='plot-template'>{_template_json()}</script>"
        + "<script type='text/plain' id='plotly-js'>" + get_plotlyjs().replace("</script", "<\\/script")
        + f"</script><script>{SCRIPT}</script></body></html>"
    )
    return write_text_atomic(path or Path(out_dir) / "report.html", page)
