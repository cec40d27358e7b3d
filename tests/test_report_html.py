"""The report's parts on hand-made records: the summary ranks by each headline's direction, tables list
metrics in numeric order with their uncertainty, warnings name what differs, imported SAEBench results join the
summary and the Pareto plots, the synthetic verdict follows the paper's ordering, the console summary."""

from __future__ import annotations

import json
import re

import numpy as np

from saeval.report.figures import figure_json, log_ticks
from saeval.report.pareto import pareto_html, pareto_points
from saeval.report.summary import print_summary, summary_html, summary_rows
from saeval.report.tables import metrics_table, settings_warning, small_n_warning


def rec(eval_name, sae, metrics, d_sae=256, config=None, imported=False, **extra):
    out = {"eval": eval_name, "sae": {"name": sae, "d_sae": d_sae, "architecture": "topk"}, "metrics": metrics,
           "config": config or {}, "preset": "tiny", "model": "m", **extra}
    if imported:
        out["imported"] = {"format": "saebench", "source": "x.json"}
        out["preset"] = "imported"
    return out


def test_summary_marks_the_best_by_each_headlines_direction():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    ce, ms = rng.uniform(0.5, 1, 4), rng.uniform(40, 60, 4)
    records = [rec("core", n, {"ce_loss_score": float(x), "l0": 8.0 * (i + 1)}) for i, (n, x) in
               enumerate(zip(names, ce, strict=True))]
    records += [rec("synthetic", n, {"ms_sae_recon": float(x)}) for n, x in zip(names, ms, strict=True)]
    columns, rows = summary_rows(records)
    assert [(c.eval, c.better) for c in columns] == [("core", "higher"), ("synthetic", "lower")]
    assert [r.sae for r in rows if r.values["core"].best] == [names[int(np.argmax(ce))]]  # higher is better
    assert [r.sae for r in rows if r.values["synthetic"].best] == [names[int(np.argmin(ms))]]  # lower is better
    assert [r.l0 for r in rows] == [8.0, 16.0, 24.0, 32.0]
    tied = [rec("core", n, {"ce_loss_score": 0.5}) for n in names]
    assert not any(r.values["core"].best for r in summary_rows(tied)[1])  # all equal: no best to mark
    page = summary_html(records)
    assert page.count("class='best'") == 2 and "higher is better ↑" in page and "lower is better ↓" in page


def test_metrics_table_sorts_thresholds_numerically_with_std_and_interval():
    metrics = {f"scr_metric_threshold_{n}": n / 1000 for n in (500, 2, 100, 20, 5, 10, 50)}
    metrics |= {"scr_metric_threshold_20_std": 0.0123, "never_set": None,
                "mean_auroc": 0.7, "mean_auroc_ci_low": 0.61, "mean_auroc_ci_high": 0.79}
    page = metrics_table([rec("scr", "a", metrics), rec("scr", "b", dict(metrics, never_set=None))],
                         highlight="mean_auroc")
    order = re.findall(r"scr_metric_threshold_(\d+)<", page)
    assert order == ["2", "5", "10", "20", "50", "100", "500"]
    assert "never_set" not in page and "_std" not in page  # an all-empty row and the std's own row are left out
    assert "0.02 <small>± 0.012</small>" in page and "[0.61, 0.79]" in page
    assert page.index("mean_auroc") < page.index("scr_metric_threshold_2<")  # the headline first
    assert "data-v='0.5'" in page  # sorted as a number, not as text


def test_warnings_name_the_differing_settings_and_small_latent_counts():
    a = rec("core", "a", {}, config={"n_eval_tokens": 512, "ctx_len": 32},
            sizes={"corpus": {"requested": 16, "used": 16}})
    b = rec("core", "b", {}, config={"n_eval_tokens": 256, "ctx_len": 32},
            sizes={"corpus": {"requested": 16, "used": 8}})
    warning = settings_warning([a, b])
    assert "config.n_eval_tokens" in warning and "sizes.corpus" in warning and "ctx_len" not in warning
    assert settings_warning([a, dict(b, config=a["config"], sizes=a["sizes"])]) == ""
    few = small_n_warning("embedding_score", [rec("embedding_score", "a", {"n_scored": 6}),
                                              rec("embedding_score", "b", {"n_scored": 40})])
    assert "a (6)" in few and "b (" not in few


def test_imported_saebench_results_join_the_summary_and_the_pareto_plot():
    records = [rec("core", "ours", {"ce_loss_score": 0.9, "l0": 20.0}, d_sae=4096),
               rec("core", "saebench-x", {"ce_loss_score": 0.95, "l0": 40.0}, d_sae=16384, imported=True)]
    _, rows = summary_rows(records)
    assert [(r.sae, r.imported) for r in rows] == [("ours", False), ("saebench-x", True)]
    assert "saebench-x <span class='tag'>imported</span>" in summary_html(records)
    column = next(c for c in summary_rows(records)[0] if c.eval == "core")
    points = pareto_points(column, records)
    assert [(p["name"], p["l0"], p["width"], p["imported"]) for p in points] == [
        ("ours", 20.0, 4096.0, False), ("saebench-x", 40.0, 16384.0, True)]
    spec = json.loads(re.search(r"<script type='application/json' id='fig\d+-json'>(.*?)</script>",
                                pareto_html(column, records)).group(1))
    names = {t["name"] for t in spec["data"]}
    assert names == {"topk", "imported (SAEBench)"}
    hover = [t for t in spec["data"] if t["name"] == "imported (SAEBench)"][0]
    assert hover["text"] == ["saebench-x"] and hover["marker"]["symbol"] != "circle"
    for axis in ("xaxis", "xaxis2"):  # log axes labelled at the data, never with plotly's bare minor digits
        assert spec["layout"][axis]["type"] == "log" and spec["layout"][axis]["tickvals"]
        assert spec["layout"][axis]["title"]["text"]


def test_log_ticks_label_values_or_decades():
    assert log_ticks([2, 5, 10, 20])["ticktext"] == ["2", "5", "10", "20"]
    assert log_ticks(list(range(1, 200)))["tickvals"] == [1.0, 10.0, 100.0, 1000.0]
    assert "</script" not in figure_json(__import__("plotly.graph_objects").graph_objects.Figure(
        layout={"title": "</script><b>"}))


def test_synthetic_sentence_states_whether_the_papers_ordering_holds():
    from saeval.evals.synthetic.report import ordering_sentence

    holds = {"ms_real": 40.0, "ms_sae_recon": 42.0, "ms_synthetic_structured": 45.0, "ms_synthetic_baseline": 45.0,
             "ms_random": 60.0, "paper_ordering_holds": True}
    line = ordering_sentence(rec("synthetic", "s", holds, details={"hook": "blocks.1.hook_resid_pre"}))
    assert "<b>holds</b>" in line and "the paper's hook" in line and "51.6 &lt; 53.3 &lt; 55.7" in line
    broken = dict(holds, ms_sae_recon=39.0, paper_ordering_holds=False)
    line = ordering_sentence(rec("synthetic", "s", broken, details={"hook": "blocks.15.hook_resid_post"}))
    assert "<b>does not hold</b>" in line and "not the paper's hook" in line and "class='bad'" in line


def test_print_summary_is_one_table_with_directions_and_the_report_path(tmp_path, capsys, monkeypatch):
    import saeval.report.records as records_mod

    made = [rec("core", "a", {"ce_loss_score": 0.9, "l0": 8.0}), rec("core", "b", {"ce_loss_score": 0.8, "l0": 4.0})]
    monkeypatch.setattr(records_mod, "eval_records", lambda out, notes: made)
    monkeypatch.setattr("saeval.report.records.imported_records", lambda out: [])
    print_summary(tmp_path, tmp_path / "report.html")
    text = capsys.readouterr().out
    assert "core ce_loss_score ↑" in text and "0.9*" in text and "0.8*" not in text
    assert text.index(" a ") < text.index(" b ") and str(tmp_path / "report.html") in text.replace("\n", "")


def test_departures_line_once_per_section_naming_saes_when_they_differ():
    from saeval.report.sections import departures_html, departures_line

    a = rec("synthetic", "a", {}, details={"departures": ["log10 density"]})
    b = rec("synthetic", "b", {}, details={"departures": ["log10 density"]})
    teren = rec("synthetic", "t", {}, details={"departures": ["ties broken by index"]})
    assert departures_html([a, b]) == departures_line(a) and departures_html([a, b]).count("Departs from") == 1
    mixed = departures_html([a, b, teren])
    assert "<b>a, b: departs from" in mixed and "<b>t: departs from" in mixed and mixed.count("departs from") == 2
    assert "ties broken by index" in mixed and departures_html([rec("core", "c", {}, details={})]) == ""


def test_steerability_table_cells_sort_as_numbers():
    from saeval.evals.steerability.report import _best_latents

    values = [0.5, 0.012, 3.0]
    latents = [{"latent": i, "steerability": [v], "power": [v / 2], "top_concept": "x", "top_concept_prob": [0.1],
                "promoted": [("up", 0.1)], "demoted": []} for i, v in enumerate(values)]
    page = _best_latents(rec("steerability", "s", {}, details={"latents": latents, "strengths": [4.0]}), 0)
    table = page[page.index("<table"):]
    body = table.split("<tbody>", 1)[1]
    s_column = [re.findall(r"<td data-v='([^']+)'>", row)[1] for row in re.findall(r"<tr>(.*?)</tr>", body)]
    assert [float(v) for v in s_column] == sorted(values, reverse=True)  # best first, each cell its number
    assert "<th class=l>promoted</th>" in table and "demoted" not in table  # a column empty in every row is left out
