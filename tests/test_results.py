"""Result files: one per (SAE, eval), atomic, resumable; the HTML report reads them back."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from saeval.evals import EvalConfig, EvalContext, EvalSpec, register_eval, run_evals
from saeval.evals.base import EVALS
from saeval.report import build_report
from saeval.results import EvalResult, SAEInfo
from saeval.saes import SAEConfig, create_sae


class CountConfig(EvalConfig):
    value: float = 1.0
    fail: bool = False


class CountMetrics(BaseModel):
    value: float


class CountDetails(BaseModel):
    calls: int


CALLS: list[str] = []


def _run(ctx, sae, config):
    CALLS.append(sae.name)
    if config.fail:
        raise RuntimeError("boom")
    return EvalResult[CountConfig, CountMetrics, CountDetails](
        eval="count", sae=SAEInfo.of(sae), preset=ctx.preset, config=config,
        metrics=CountMetrics(value=config.value), details=CountDetails(calls=len(CALLS)))


@pytest.fixture()
def count_eval():
    register_eval(EvalSpec("count", CountConfig, _run, "counts calls", presets={"demo": {"value": 2.0}}))
    CALLS.clear()
    yield
    EVALS.pop("count")


def _saes():
    return [create_sae(SAEConfig(architecture="relu", d_in=4, d_sae=8, name=n)) for n in ("a", "b")]


def test_rerun_resumes_and_force_recomputes(tmp_path, count_eval):
    ctx = EvalContext(host=None, hook="blocks.0.hook_resid_post", preset="demo")
    paths = run_evals(ctx, _saes(), ["count"], tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a/count.json", "b/count.json"]
    record = json.loads(paths[0].read_text())
    assert record["metrics"]["value"] == 2.0 and record["preset"] == "demo" and record["config"]["value"] == 2.0
    assert {"eval", "sae", "config", "metrics", "details", "saeval_version", "created_at"} <= set(record)
    run_evals(ctx, _saes(), ["count"], tmp_path)
    assert CALLS == ["a", "b"]  # nothing recomputed
    run_evals(ctx, _saes(), ["count"], tmp_path, force=True)
    assert CALLS == ["a", "b", "a", "b"]


def test_failed_eval_leaves_no_partial_file(tmp_path, count_eval):
    ctx = EvalContext(host=None, hook="blocks.0.hook_resid_post")
    with pytest.raises(RuntimeError):
        run_evals(ctx, _saes()[:1], ["count"], tmp_path, overrides={"count": {"fail": True}})
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.tmp"))


def test_unknown_eval_and_preset_are_named(tmp_path, count_eval):
    from saeval.errors import SaevalError

    ctx = EvalContext(host=None, hook="x")
    with pytest.raises(SaevalError, match="unknown eval 'nope'; available: .*core"):
        run_evals(ctx, _saes(), ["nope"], tmp_path)
    with pytest.raises(SaevalError, match="no preset 'huge'"):
        run_evals(EvalContext(host=None, hook="x", preset="huge"), _saes(), ["count"], tmp_path)


def test_report_is_one_self_contained_file(tmp_path, count_eval):
    run_evals(EvalContext(host=None, hook="x"), _saes(), ["count"], tmp_path)
    html = build_report(tmp_path).read_text()
    assert "<h2 id='count'>" in html and "plotly" in html.lower() and "<td>a</td>" in html
    assert "src=\"http" not in html  # no external scripts
