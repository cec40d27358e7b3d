"""The study registry and runner: duplicate names refused, a rerun skipped by config hash (file untouched) and
recomputed when a field or an SAE changes, unreadable results replaced; the report renders study sections and
skips result files that do not validate; study and eval config modules import no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from pydantic import BaseModel, Field

from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.results import read_result
from saeval.saes.base import SAEConfig, create_sae
from saeval.studies import STUDIES, StudyConfig, StudyResult, StudySpec, register_study, run_studies
from saeval.studies.base import envelope

HOOK = "blocks.1.hook_resid_post"
CALLS: list[float] = []


class ToyConfig(StudyConfig):
    scale: float = Field(1.0, gt=0, description="multiplies the decoder sum")


class ToyMetrics(BaseModel):
    total: float = Field(description="scale x the SAE's decoder sum")


class ToyDetails(BaseModel):
    call: int


class ToyResult(StudyResult[ToyConfig, ToyMetrics, ToyDetails]):
    pass


def toy_run(ctx, saes, config, out_dir):
    CALLS.append(config.scale)
    total = config.scale * float(saes[0].W_dec.detach().sum())
    return ToyResult(**envelope(ctx, "toy", saes), config=config, metrics=ToyMetrics(total=total),
                     details=ToyDetails(call=len(CALLS)))


def toy_report(result) -> str:
    return f"<h2 id='toy'>toy study</h2><p>total {result.metrics.total:.3f}</p>"


TOY = StudySpec(name="toy", config_cls=ToyConfig, result_cls=ToyResult, run=toy_run, description="a toy study",
                presets={"tiny": {"scale": 2.0}}, report=toy_report, n_saes=1)


@pytest.fixture
def toy(monkeypatch, tiny_host):
    monkeypatch.setitem(STUDIES, "toy", TOY)
    CALLS.clear()
    sae = create_sae(SAEConfig(architecture="relu", d_in=tiny_host.d_model, d_sae=8, hook_name=HOOK, name="toy-sae"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(8, tiny_host.d_model, generator=torch.Generator().manual_seed(0)))
    return EvalContext(host=tiny_host, hook=HOOK, preset="tiny"), sae


def test_registry_refuses_a_second_study_under_a_name(toy):
    assert register_study(TOY) is TOY  # the same spec again is fine
    with pytest.raises(SaevalError, match="already registered"):
        register_study(StudySpec(name="toy", config_cls=ToyConfig, result_cls=ToyResult, run=toy_run,
                                 description="another"))
    with pytest.raises(SaevalError, match="unknown study 'nope'"):
        run_studies(toy[0], [toy[1]], ["nope"], "unused")


def test_rerun_skips_and_changes_recompute(toy, tmp_path, capsys):
    ctx, sae = toy
    path = run_studies(ctx, [sae], ["toy"], tmp_path)[0]
    assert path == tmp_path / "studies" / "toy.json" and CALLS == [2.0]  # the tiny preset's scale
    first = ToyResult.model_validate(read_result(path))
    assert first.metrics.total == pytest.approx(2.0 * float(sae.W_dec.detach().sum()))
    assert first.hash_inputs["saes"].keys() == {"toy-sae"} and first.config_hash
    stamp = path.stat().st_mtime_ns

    capsys.readouterr()
    assert run_studies(ctx, [sae], ["toy"], tmp_path) == [path]
    assert CALLS == [2.0] and path.stat().st_mtime_ns == stamp and "up to date" in capsys.readouterr().err

    run_studies(ctx, [sae], ["toy"], tmp_path, overrides={"toy": {"scale": 3.0}})
    assert CALLS == [2.0, 3.0] and "config.scale 2.0 -> 3.0" in capsys.readouterr().err
    total = ToyResult.model_validate(read_result(path)).metrics.total
    assert total == pytest.approx(3.0 * float(sae.W_dec.detach().sum()))

    with torch.no_grad():
        sae.W_dec.mul_(2)  # same name, other weights, same object: edited in place
    run_studies(ctx, [sae], ["toy"], tmp_path, overrides={"toy": {"scale": 3.0}})
    assert CALLS == [2.0, 3.0, 3.0] and "saes.toy-sae" in capsys.readouterr().err
    run_studies(ctx, [sae], ["toy"], tmp_path, force=True, overrides={"toy": {"scale": 3.0}})
    assert len(CALLS) == 4


def test_bad_stored_result_and_bad_input(toy, tmp_path):
    ctx, sae = toy
    path = tmp_path / "studies" / "toy.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"study": "toy"}))
    run_studies(ctx, [sae], ["toy"], tmp_path)
    assert CALLS == [2.0] and ToyResult.model_validate(read_result(path)).details.call == 1
    with pytest.raises(SaevalError, match="toy has no field 'scal'"):
        run_studies(ctx, [sae], ["toy"], tmp_path, overrides={"toy": {"scal": 1}})
    with pytest.raises(SaevalError, match="compares 1 SAEs but 0 were given"):
        run_studies(ctx, [], ["toy"], tmp_path)
    with pytest.raises(SaevalError, match="no preset 'huge'"):
        run_studies(EvalContext(host=ctx.host, hook=HOOK, preset="huge"), [sae], ["toy"], tmp_path)
    assert CALLS == [2.0]  # every config is checked before any study runs


def test_report_renders_studies_and_skips_invalid_files(toy, tmp_path):
    from saeval.report import build_report

    ctx, sae = toy
    run_studies(ctx, [sae], ["toy"], tmp_path)
    (tmp_path / "studies" / "case_study.json").write_text(json.dumps({"study": "case_study"}))
    (tmp_path / "some-sae").mkdir()
    (tmp_path / "some-sae" / "self_explanation.json").write_text(json.dumps({"eval": "self_explanation"}))
    page = build_report(tmp_path).read_text()
    assert "<h2 id='toy'>toy study</h2>" in page and "href='#toy'" in page
    assert "case_study.json: does not match the case_study result format" in page
    assert "self_explanation.json: does not match the self_explanation result format" in page
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


HEAVY = ("torch", "numpy", "transformers", "sklearn", "sentence_transformers")


def _imports_heavy(code: str) -> list[str]:
    check = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_study_and_eval_config_modules_import_no_torch():
    code = ("import saeval.studies\nfrom saeval.studies import get_study\n"
            "import saeval.evals.self_explanation.config, saeval.evals.embedding_score.config\n"
            "[get_study(n).config('tiny') for n in ('case_study', 'faithful')]")
    assert _imports_heavy(code) == []


def test_study_cli_module_imports_no_torch():
    assert _imports_heavy("import saeval.cli.studies") == []
