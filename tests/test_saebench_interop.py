"""SAEBench-format results out and in: exported files pass SAEBench 0.6.0's own output models, imports are checked
by them (one line per bad file), and imported SAEs come back saeval-shaped for the report."""

from __future__ import annotations

import json
import math
import shutil
import typing
from dataclasses import asdict

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter
from typer.testing import CliRunner

from saeval.cli import app
from saeval.evals import EvalContext, get_eval
from saeval.interop.saebench import SAEVAL_RELEASE, file_name, imported_records, sae_lens_ids
from saeval.interop.saebench_check import categories_of, missing_metric_keys, output_model, validate_file
from saeval.interop.saebench_map import SAEBENCH_EVALS
from saeval.io import write_json_atomic
from saeval.results import load_results, result_files
from saeval.runner import run_evals
from saeval.runner.names import safe_component
from saeval.saes import SAEConfig, create_sae

pytest.importorskip("sae_bench.evals.core.eval_output")  # installed with --no-deps in the dev venv

HOOK = "blocks.1.hook_resid_post"
REAL_EVALS = ("core", "sparse_probing", "tpp", "scr")
BUILT_EVALS = ("autointerp", "steerability", "synthetic", "self_explanation", "embedding_score", "shift")
cli = CliRunner()


def _cli(*args):
    result = cli.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def real_results(tmp_path_factory, tiny_host):
    """Real tiny-preset runs of the evals SAEBench has and saeval runs quickly, on a random TopK SAE."""
    out = tmp_path_factory.mktemp("results")
    sae = create_sae(SAEConfig(architecture="topk", d_in=tiny_host.d_model, d_sae=128, k=8, hook_name=HOOK,
                               name="s1"))
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(128, tiny_host.d_model), dim=-1))
    # moby-dick: the smallest packaged corpus, so a cold token cache costs seconds, not tens of them
    run_evals(EvalContext(host=tiny_host, hook=HOOK, corpus="moby-dick", preset="tiny"), [sae], list(REAL_EVALS),
              out)
    return out


def _value(annotation, rng):
    kinds = typing.get_args(annotation) or (annotation,)
    if bool in kinds:
        return True
    if float in kinds:
        return float(rng.uniform(0.1, 0.9))
    return int(rng.integers(1, 50))


def _built_record(name: str, seed: int) -> dict:
    """A result of ``name`` with every metric set (checked by the eval's Metrics model) and its tiny config."""
    spec = get_eval(name)
    metrics_cls = spec.result_cls.model_fields["metrics"].annotation
    rng = np.random.default_rng(seed)
    metrics = metrics_cls(**{k: _value(f.annotation, rng) for k, f in metrics_cls.model_fields.items()})
    return {"eval": name, "sae": {"name": "s2", "architecture": "relu", "d_in": 64, "d_sae": 128, "hook_name": HOOK},
            "model": "tiny", "preset": "tiny", "config": spec.config("tiny").model_dump(mode="json"),
            "metrics": metrics.model_dump(mode="json"), "details": {}, "config_hash": f"h{seed}",
            "created_at": "2026-01-02T03:04:05+00:00", "provenance": {"corpus": "sotu", "seed": 0, "dtype": "float32"}}


@pytest.fixture()
def built_results(tmp_path):
    out = tmp_path / "built"
    for i, name in enumerate(BUILT_EVALS):
        write_json_atomic(out / "s2" / f"{name}.json", _built_record(name, i))
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _check_round_trip(results, tmp_path):
    """Export, check every file with SAEBench's (or saeval's) model, import, compare the metrics."""
    dest, store = tmp_path / "exported", tmp_path / "store"
    code, text = _cli("export", "saebench", results, dest)
    assert code == 0, text
    originals = {r["eval"]: r for r in load_results(results)}
    for record in originals.values():
        entry = SAEBENCH_EVALS.get(record["eval"])
        folder = entry.type_id if entry else f"saeval_{record['eval']}"
        path = dest / folder / f"{SAEVAL_RELEASE}_{record['sae']['name']}_eval_results.json"
        payload = json.loads(path.read_text())
        if entry:  # SAEBench's own output model, straight
            TypeAdapter(output_model(entry.type_id)).validate_python(payload)
        assert validate_file(payload) == folder
    code, text = _cli("import", "saebench", dest, "--out", store)
    assert code == 0, text
    imported = {r["eval"]: r for r in imported_records(store)}
    assert set(imported) == set(originals)
    for name, record in originals.items():
        got = imported[name]
        assert got["sae"]["name"] == f"saeval/{record['sae']['name']}" and got["preset"] == "imported"
        assert got["imported"]["format"] == "saebench" and got["sae"]["d_sae"] == record["sae"]["d_sae"]
        for key, value in record["metrics"].items():
            assert _same(got["metrics"][key], value), (name, key)
    return dest


def test_tables_match_saebench_output_models():
    for entry in SAEBENCH_EVALS.values():
        model = output_model(entry.type_id)
        assert {c: list(k) for c, k in entry.categories.items()} == categories_of(model), entry.type_id
        cats = typing.get_type_hints(model)["eval_result_metrics"]
        required = {k for c in entry.categories for k, hint in typing.get_type_hints(
            typing.get_type_hints(cats)[c]).items() if type(None) not in typing.get_args(hint)}
        assert required == set(entry.required), entry.type_id


def test_real_results_round_trip_through_saebench_models(real_results, tmp_path):
    dest = _check_round_trip(real_results, tmp_path)
    core = json.loads((dest / "core" / "saeval_s1_eval_results.json").read_text())
    record = json.loads((real_results / "s1" / "core.json").read_text())
    m = core["eval_result_metrics"]
    assert m["model_performance_preservation"]["ce_loss_score"] == record["metrics"]["ce_loss_score"]
    assert m["sparsity"]["l0"] == pytest.approx(8.0)
    # SAEBench's calculate_misc_metrics on saeval's densities, recomputed independently here.
    density = np.array(record["details"]["latent_density"])
    assert m["misc_metrics"]["normalized_freq_over_1_percent"] == pytest.approx(
        density[density > 0.01].sum() / density.sum())
    assert m["misc_metrics"]["freq_over_1_percent"] == pytest.approx((density > 0.01).mean())
    assert m["token_stats"]["total_tokens_eval_reconstruction"] == record["details"]["n_eval_tokens"]
    unstructured = core["eval_result_unstructured"]["saeval"]
    assert unstructured["config"] == record["config"] and "relative_reconstruction_bias_global" in \
        unstructured["metrics_not_in_saebench"]
    assert core["eval_config"]["context_size"] == record["config"]["ctx_len"]
    assert core["sae_bench_commit_hash"].startswith("saeval-") and core["sae_cfg_dict"]["d_sae"] == 128
    # Per-dataset rows average to the eval's own numbers (one seed: details hold that seed's rows).
    for eval_name, key in (("tpp", "tpp_threshold_2_total_metric"), ("scr", "scr_dir1_threshold_2"),
                           ("sparse_probing", "sae_top_1_test_accuracy")):
        payload = json.loads((dest / eval_name / "saeval_s1_eval_results.json").read_text())
        rows = payload["eval_result_details"]
        own = json.loads((real_results / "s1" / f"{eval_name}.json").read_text())["metrics"][key]
        assert rows and np.mean([r[key] for r in rows]) == pytest.approx(own), eval_name


def test_saeval_only_evals_and_autointerp_round_trip(built_results, tmp_path):
    dest = _check_round_trip(built_results, tmp_path)
    steer = json.loads((dest / "saeval_steerability" / "saeval_s2_eval_results.json").read_text())
    assert list(steer["eval_result_metrics"]) == ["steerability"]
    assert steer["sae_cfg_dict"]["architecture"] == "standard"  # SAELens's name of saeval's relu


def test_export_leaves_out_a_result_saebench_cannot_hold(real_results, tmp_path):
    results = tmp_path / "r"
    shutil.copytree(real_results, results)
    record = json.loads((results / "s1" / "core.json").read_text())
    record["metrics"]["kl_div_score"] = None
    write_json_atomic(results / "s1" / "core.json", record)
    code, text = _cli("export", "saebench", results, tmp_path / "d")
    assert code == 1 and "core.json: not exported" in text and "kl_div_score" in text
    assert not (tmp_path / "d" / "core").exists() and (tmp_path / "d" / "tpp").is_dir()
    code, text = _cli("export", "saebench", results, results)  # DEST/core/x.json would read as SAE "core"
    assert code == 2 and "must not be the results folder" in text


def test_export_reads_each_config_through_its_eval_model(real_results, tmp_path):
    """A result written before a config field existed exports with that field's default; a config that does not
    fit its eval is one line, not a traceback."""
    results = tmp_path / "r"
    shutil.copytree(real_results, results)
    record = json.loads((results / "s1" / "core.json").read_text())
    del record["config"]["batch_size"]
    write_json_atomic(results / "s1" / "core.json", record)
    broken = json.loads((results / "s1" / "tpp.json").read_text())
    broken["config"]["train_set_size"] = "many"
    write_json_atomic(results / "s1" / "tpp.json", broken)
    code, text = _cli("export", "saebench", results, tmp_path / "d")
    assert code == 1 and "tpp.json: not exported: tpp.train_set_size: Input should be a valid integer" in text, text
    core = json.loads((tmp_path / "d" / "core" / "saeval_s1_eval_results.json").read_text())
    default = get_eval("core").config_cls.model_fields["batch_size"].default
    assert core["eval_config"]["batch_size_prompts"] == default


def _saebench_core_file(**metric_changes) -> dict:
    """A core result as SAEBench writes it: built with its own dataclasses, dumped with asdict."""
    from sae_bench.evals.core import eval_output as co
    from sae_bench.evals.core.eval_config import CoreEvalConfig

    rng = np.random.default_rng(0)
    cats = {}
    for cat, hint in typing.get_type_hints(co.CoreMetricCategories).items():
        cats[cat] = hint(**{k: (int(rng.integers(1, 9)) if h is int else float(rng.uniform()))
                            for k, h in typing.get_type_hints(hint).items()})
    out = co.CoreEvalOutput(
        eval_config=CoreEvalConfig(model_name="pythia-70m-deduped"), eval_id="x", datetime_epoch_millis=1732000000000,
        eval_result_metrics=co.CoreMetricCategories(**cats), eval_result_details=[], sae_bench_commit_hash="abc",
        sae_lens_id="blocks.4.hook_resid_post__trainer_10", sae_lens_release_id="sae_bench_pythia70m_sweep_topk",
        sae_lens_version="5.3.0", sae_cfg_dict={"architecture": "topk", "d_in": 512, "d_sae": 4096,
                                                "metadata": {"hook_name": "blocks.4.hook_resid_post",
                                                             "model_name": "pythia-70m-deduped"}},
    )
    payload = asdict(out)
    for key, value in metric_changes.items():
        cat = next(c for c, m in payload["eval_result_metrics"].items() if key in m)
        payload["eval_result_metrics"][cat][key] = value
    return payload


def test_import_checks_each_file_and_names_the_bad_ones(tmp_path):
    src = tmp_path / "eval_results"
    good = src / "core" / "sae_bench_pythia70m_sweep_topk_blocks.4_eval_results.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(_saebench_core_file(kl_div_with_sae=float("nan"))))  # SAEBench writes NaN
    broken = _saebench_core_file()
    del broken["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"]
    (src / "core" / "missing_eval_results.json").write_text(json.dumps(broken))
    (src / "notjson.json").write_text("{nope")
    (src / "other.json").write_text(json.dumps({"hello": 1}))
    (src / "odd.json").write_text(json.dumps({**_saebench_core_file(), "eval_type_id": "mystery"}))
    out = tmp_path / "results"
    code, text = _cli("import", "saebench", src, "--out", out)
    lines = [line for line in text.splitlines() if line.startswith("bad: ")]
    assert code == 1 and len(lines) == 4
    for name, why in (("missing_eval_results.json", "kl_div_score"), ("notjson.json", "unreadable"),
                      ("other.json", "no eval_type_id"), ("odd.json", "mystery")):
        assert any(name in line and why in line for line in lines), (name, text)
    assert "kl_div_with_sae not finite" in text
    stored = out / "imported" / "saebench" / "core" / good.name
    assert stored.exists() and sorted(p.name for p in (out / "imported" / "saebench").rglob("*.json")) == [good.name]
    (record,) = imported_records(out)
    assert record["sae"]["name"] == "sae_bench_pythia70m_sweep_topk/blocks.4.hook_resid_post__trainer_10"
    assert record["sae"]["hook_name"] == "blocks.4.hook_resid_post" and record["model"] == "pythia-70m-deduped"
    assert record["eval"] == "core" and record["metrics"]["kl_div_with_sae"] is None  # NaN: never a score
    assert record["imported"]["source"] == str(good.resolve())


def test_imported_folder_is_reserved_and_not_a_result(real_results, tmp_path):
    assert safe_component("imported") == "imported_sae" and safe_component("studies") == "studies_sae"
    results = tmp_path / "r"
    shutil.copytree(real_results, results)
    before = result_files(results)
    src = tmp_path / "core.json"
    src.write_text(json.dumps(_saebench_core_file()))
    assert _cli("import", "saebench", src, "--out", results)[0] == 0
    assert (results / "imported" / "saebench" / "core" / "core.json").exists()
    assert result_files(results) == before and all(p.parent.name == "s1" for p in before)


def test_report_shows_the_imported_sae(real_results, tmp_path):
    from saeval.report import build_report

    results = tmp_path / "r"
    shutil.copytree(real_results, results)
    name = "sae_bench_pythia70m_sweep_topk/blocks.4.hook_resid_post__trainer_10"
    plain = build_report(results).read_text()
    src = tmp_path / "core.json"
    src.write_text(json.dumps(_saebench_core_file()))
    assert _cli("import", "saebench", src, "--out", results)[0] == 0
    html = build_report(results).read_text()
    assert name not in plain and name in html
    assert html.lower().count("imported") > plain.lower().count("imported")


def test_sae_ids_follow_saelens_release_or_saeval():
    ids = {"org/repo:sae": ("org/repo", "sae"), '{"release": "r", "sae_id": "a/b"}': ("r", "a/b"),
           "./local/sae": None, "/abs/path": None, "plain": None, "a:": None, '{"release": "r"}': None, "{bad": None}
    for path, expected in ids.items():  # a path, or an id load_sae would refuse, is not a release
        assert sae_lens_ids({"sae": {"name": "mine", "path": path}}) == (expected or ("saeval", "mine")), path
    pretrained = {"sae": {"name": "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82",
                          "path": "gemma-scope-2b-pt-res:layer_12/width_16k/average_l0_82"}}
    release, sae_id = sae_lens_ids(pretrained)
    assert (release, sae_id) == ("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")
    assert file_name(release, sae_id) == "gemma-scope-2b-pt-res_layer_12_width_16k_average_l0_82_eval_results.json"
    assert sae_lens_ids({"sae": {"name": "mine", "path": "/tmp/mine"}}) == ("saeval", "mine")


def test_missing_keys_are_what_saeval_metrics_lack():
    gaps = missing_metric_keys()
    for entry in SAEBENCH_EVALS.values():
        have = set(get_eval(entry.saeval).result_cls.model_fields["metrics"].annotation.model_fields)
        listed = set(gaps[entry.type_id]["missing"]) | set(gaps[entry.type_id]["derived_on_export"])
        assert listed == set(entry.keys()) - have, entry.type_id
    assert gaps["core"]["missing"] == [] and "normalized_freq_over_1_percent" in gaps["core"]["derived_on_export"]
    assert "mean_absorption_fraction_score" in gaps["absorption_first_letter"]["not_run_by_saeval"]


def test_interop_commands_import_no_torch(tmp_path):
    import subprocess
    import sys

    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom saeval.cli import app\n"
             "for cmd in (['export', '--help'], ['import', 'saebench', '--help'], ['export', 'saebench', '--help']):\n"
             "    assert CliRunner().invoke(app, cmd).exit_code == 0, cmd\n"
             f"r = CliRunner().invoke(app, ['export', 'saebench', {str(tmp_path / 'none')!r}, 'd'])\n"
             "assert r.exit_code == 2 and 'does not exist' in r.output, r.output\n"
             "heavy = [m for m in ('torch', 'sae_bench', 'transformers') if m in sys.modules]\n"
             "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
