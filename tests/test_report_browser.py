"""The HTML report of a demo-sized run (every eval and the case study on several tiny SAEs, one run with other
settings), checked as a page and, where Chromium is installed, opened headless: every figure drawn, no console
error, the summary lists every SAE, no table wider than its column. Keeps a screenshot in out/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from saeval.evals.base import EVALS, EvalContext
from saeval.report import build_report
from saeval.report.browser import chromium_path
from saeval.saes import SAEConfig, create_sae

HOOK = "blocks.1.hook_resid_post"
SCREENSHOT = Path(__file__).resolve().parents[1] / "out" / "report-screenshot.png"
# (name, d_sae, k): two widths and three sparsities, so the Pareto plots have spread on both axes. The first two
# run every eval (and the case study), the others core only, the last on fewer tokens.
SAES = [("topk-w256-k8", 256, 8), ("topk-w256-k16", 256, 16), ("topk-w512-k4", 512, 4), ("topk-w512-k32", 512, 32)]


def summary_rows_expected(out: Path) -> list[str]:
    """saeval's SAEs, then those imported back from SAEBench's format (each exported result SAEBench accepts)."""
    from saeval.interop.saebench import imported_records

    imported = sorted({r["sae"]["name"] for r in imported_records(out)})
    assert imported, "nothing was imported"
    return sorted(n for n, _, _ in SAES) + imported


def _sae(name: str, d_sae: int, k: int, seed: int):
    sae = create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=d_sae, k=k, hook_name=HOOK, name=name))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g))
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(sae.W_dec.shape, generator=g), dim=1))
    return sae


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory, tiny_host):
    """Every registered eval (tiny preset) and the case study on two SAEs, core on two more (the last on fewer
    tokens): the report's real inputs, made the way `saeval demo` makes them."""
    from saeval.interop.saebench import export_saebench, import_saebench
    from saeval.runner.local import run_evals
    from saeval.studies import run_studies

    out = tmp_path_factory.mktemp("report-run")
    saes = [_sae(name, d, k, i) for i, (name, d, k) in enumerate(SAES)]
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny", ctx_len=32)
    run_evals(ctx, saes[:2], list(EVALS), out)
    run_evals(ctx, saes[2:3], ["core"], out)
    run_evals(ctx, saes[3:], ["core"], out, overrides={"core": {"n_eval_tokens": 256}})
    run_studies(ctx, saes[:2], ["case_study"], out, overrides={"case_study": {"n_tokens": 1024, "top": 1}})
    # The same results through SAEBench's format and back: they join the summary and Pareto plots as imported.
    exported = tmp_path_factory.mktemp("saebench")
    export_saebench(out, exported)
    import_saebench(exported, out)
    return out, build_report(out)


def test_page_puts_text_first_and_plotly_once_at_the_end(demo_like):
    out, path = demo_like
    page = path.read_text()
    head, body = page.split("</head>", 1)
    assert "<script" not in head  # nothing blocks the first paint
    plotly_at = body.index("id='plotly-js'")
    assert page.count("id='plotly-js'") == 1 and body.rindex("class='plot'") < plotly_at
    assert "src=\"http" not in page and "src='http" not in page
    # Every eval has its section, in the nav and with its headline's meaning; the summary names every SAE.
    for name in {p.stem for p in out.glob("*/*.json") if p.parent.name != "studies"}:
        assert f"<h2 id='{name}'>" in page and f"href='#{name}'" in page
    summary = page.split("id='summary-table'", 1)[1].split("</table>", 1)[0]
    rows = summary_rows_expected(out)
    assert [re.sub("<[^>]+>", "", c).removesuffix(" imported") for c in re.findall(r"<tr><td>(.*?)</td>",
                                                                                     summary)] == rows
    assert summary.count("<span class='tag'>imported</span>") == len(rows) - len(SAES)
    assert "imported (SAEBench)" in page.split("<h2 id='core'>", 1)[1]  # beside saeval's points
    # The third SAE ran core on fewer tokens: the core section says so, naming the field.
    core = page.split("<h2 id='core'>", 1)[1].split("</section>", 1)[0]
    assert "Not like for like" in core and "config.n_eval_tokens" in core
    assert "<h2 id='case_study'>" in page and page.count("class='cs-card'") >= 2


@pytest.mark.skipif(chromium_path() is None, reason="no chromium (apt-get install chromium)")
def test_report_opens_in_chromium_with_every_plot_drawn(demo_like):
    pytest.importorskip("playwright")
    from saeval.report.browser import open_report

    out, path = demo_like
    seen = open_report(path, screenshot=SCREENSHOT, open_details=True, timeout_s=180)
    assert seen.console_errors == []
    n_sections = path.read_text().count("<section><h2 id=")
    assert seen.n_plots >= n_sections and seen.n_empty_plots == 0  # a Pareto plot per eval at least
    assert [row.removesuffix(" imported") for row in seen.summary_rows] == summary_rows_expected(out)
    assert seen.max_table_overflow_px <= 0  # no table wider than the page's column
    l0 = seen.l0_after_sort  # a header click sorts numbers as numbers (4 < 8 < 16 < 32, not "16" < "32" < "4")
    assert len(l0) >= len(SAES) and l0 == sorted(l0) and l0[0] == min(k for _, _, k in SAES)
    assert SCREENSHOT.stat().st_size > 10_000
