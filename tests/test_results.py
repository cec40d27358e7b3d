"""Result files read back: the HTML report is one self-contained file built from them."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from saeval.evals import EvalConfig, EvalContext, EvalSpec, register_eval
from saeval.evals.base import EVALS
from saeval.report import build_report
from saeval.results import EvalResult, SAEInfo, load_results
from saeval.runner import run_evals
from saeval.saes import SAEConfig, create_sae


class CountConfig(EvalConfig):
    value: float = 1.0


class CountMetrics(BaseModel):
    value: float


class CountDetails(BaseModel):
    n: int


class CountResult(EvalResult[CountConfig, CountMetrics, CountDetails]):
    pass


def _run(ctx, sae, config):
    return CountResult(eval="count", sae=SAEInfo.of(sae), preset=ctx.preset, config=config,
                       metrics=CountMetrics(value=config.value), details=CountDetails(n=1))


@pytest.fixture()
def count_eval():
    register_eval(EvalSpec("count", CountConfig, CountResult, _run, "counts calls"))
    yield
    EVALS.pop("count")


def _saes():
    return [create_sae(SAEConfig(architecture="relu", d_in=4, d_sae=8, name=n)) for n in ("a", "b")]


def test_register_refuses_a_second_eval_under_a_taken_name(count_eval):
    from saeval.errors import SaevalError

    with pytest.raises(SaevalError, match="already registered"):
        register_eval(EvalSpec("count", CountConfig, CountResult, _run, "again"))


def test_report_is_one_self_contained_file(tmp_path, count_eval):
    run_evals(EvalContext(host=None, hook="x"), _saes(), ["count"], tmp_path)
    assert [r["sae"]["name"] for r in load_results(tmp_path)] == ["a", "b"]
    html = build_report(tmp_path).read_text()
    assert "<h2 id='count'>" in html and "plotly" in html.lower() and "<td>a</td>" in html
    assert "src=\"http" not in html  # no external scripts
