"""The runner: results addressed by config hash (skip, recompute, name the change), prerequisites, per-job
isolation, size fallback, strict JSON, readable files, and one-line config errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from pydantic import BaseModel, Field

from saeval.errors import SaevalError
from saeval.evals import EvalConfig, EvalContext, EvalSpec, register_eval
from saeval.evals.base import EVALS
from saeval.results import EvalResult, SAEInfo
from saeval.runner import run_evals
from saeval.runner.fingerprints import describe_changes
from saeval.runner.names import safe_component
from saeval.runner.plan import resolve_evals
from saeval.saes import SAEConfig, create_sae


class CountConfig(EvalConfig):
    value: float = Field(1.0, description="the metric to report")
    fail_on: str | None = Field(None, description="raise on the SAE of this name")
    n: int = Field(1, gt=0, description="a size")


class CountMetrics(BaseModel):
    value: float | None
    seen_requirement: float | None = None


class CountDetails(BaseModel):
    calls: int


class CountResult(EvalResult[CountConfig, CountMetrics, CountDetails]):
    pass


CALLS: list[tuple[str, str]] = []


def _make_run(name: str):
    def run(ctx, sae, config):
        CALLS.append((name, sae.name))
        if config.fail_on == sae.name:
            raise RuntimeError(f"boom on {sae.name}")
        req = ctx.requirement(sae, "count") if name == "count_dep" else None
        return CountResult(eval=name, sae=SAEInfo.of(sae), preset=ctx.preset, config=config,
                           metrics=CountMetrics(value=config.value, seen_requirement=req and req.metrics.value),
                           details=CountDetails(calls=len(CALLS)))

    return run


class FakeHost:
    """Enough of a host for the runner: a name, a fingerprint, a device and a dtype."""

    name = "fake"
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, fp: str = "fp0"):
        self.fp = fp

    def fingerprint(self) -> str:
        return self.fp


@pytest.fixture()
def count_evals():
    register_eval(EvalSpec("count", CountConfig, CountResult, _make_run("count"), "counts calls",
                           presets={"demo": {"value": 2.0}}))
    register_eval(EvalSpec("count_dep", CountConfig, CountResult, _make_run("count_dep"), "needs count",
                           presets={"demo": {}}, requires=("count",)))
    CALLS.clear()
    yield
    EVALS.pop("count")
    EVALS.pop("count_dep")


def _saes(names=("a", "b"), seed=0):
    torch.manual_seed(seed)
    out = []
    for n in names:
        sae = create_sae(SAEConfig(architecture="relu", d_in=4, d_sae=8, name=n))
        with torch.no_grad():
            sae.W_enc.normal_()
        out.append(sae)
    return out


def _ctx(**kw):
    return EvalContext(host=FakeHost(kw.pop("fp", "fp0")), hook="blocks.0.hook_resid_post", **kw)


def test_unchanged_skips_changed_field_recomputes_and_names_it(tmp_path, count_evals, capsys):
    saes = _saes()
    out = run_evals(_ctx(preset="demo"), saes, ["count"], tmp_path)
    assert [o.status for o in out] == ["done", "done"]
    path = tmp_path / "a" / "count.json"
    record = json.loads(path.read_text())
    assert record["metrics"]["value"] == 2.0 and record["config_hash"] and record["hash_inputs"]["config"]["value"] == 2
    assert record["provenance"]["sae_weights_hash"] == record["hash_inputs"]["sae"]
    assert {"saeval", "torch", "transformers"} <= set(record["provenance"]["versions"])
    assert set(record["provenance"]["versions"]) <= {"saeval", "torch", "transformers", "sae-lens"}
    mtime = path.stat().st_mtime_ns
    out = run_evals(_ctx(preset="demo"), saes, ["count"], tmp_path)
    assert [o.status for o in out] == ["skipped", "skipped"] and len(CALLS) == 2
    assert path.stat().st_mtime_ns == mtime
    capsys.readouterr()
    out = run_evals(_ctx(preset="demo"), saes, ["count"], tmp_path, overrides={"count": {"value": 3.0}})
    assert [o.status for o in out] == ["done", "done"] and len(CALLS) == 4
    assert json.loads(path.read_text())["metrics"]["value"] == 3.0
    assert "config.value 2.0 -> 3.0" in " ".join(capsys.readouterr().err.split())
    run_evals(_ctx(preset="demo"), saes, ["count"], tmp_path, overrides={"count": {"value": 3.0}}, force=True)
    assert len(CALLS) == 6


@pytest.mark.parametrize("change", ["weights", "model", "seed", "hook"])
def test_what_made_a_result_is_in_its_hash(tmp_path, count_evals, change):
    run_evals(_ctx(), _saes(["a"]), ["count"], tmp_path)
    saes, ctx = _saes(["a"]), _ctx()
    if change == "weights":  # same name, other weights: not "skipped" as before
        with torch.no_grad():
            saes[0].W_dec.add_(1e-3)
    elif change == "model":
        ctx = _ctx(fp="fp1")
    elif change == "seed":
        ctx = _ctx(seed=1)
    else:
        ctx.hook = "blocks.1.hook_resid_post"
    assert [o.status for o in run_evals(ctx, saes, ["count"], tmp_path)] == ["done"]
    assert [o.status for o in run_evals(ctx, saes, ["count"], tmp_path)] == ["skipped"]


def test_missing_prerequisite_is_computed_and_a_matching_one_reused(tmp_path, count_evals):
    saes = _saes(["a"])
    run_evals(_ctx(), saes, ["count_dep"], tmp_path, overrides={"count": {"value": 5.0}})
    assert CALLS == [("count", "a"), ("count_dep", "a")]
    dep = json.loads((tmp_path / "a" / "count_dep.json").read_text())
    assert dep["metrics"]["seen_requirement"] == 5.0
    assert dep["hash_inputs"]["requires"]["count"] == json.loads((tmp_path / "a" / "count.json").read_text())[
        "config_hash"]
    run_evals(_ctx(), saes, ["count_dep"], tmp_path, overrides={"count": {"value": 5.0}})
    assert len(CALLS) == 2  # both up to date
    run_evals(_ctx(), saes, ["count_dep"], tmp_path, overrides={"count": {"value": 6.0}})
    assert CALLS[2:] == [("count", "a"), ("count_dep", "a")]  # a changed prerequisite recomputes its dependents


def test_a_failed_job_is_recorded_and_the_others_run(tmp_path, count_evals):
    out = run_evals(_ctx(), _saes(), ["count_dep"], tmp_path, overrides={"count": {"fail_on": "a"}},
                    fail_fast=False)
    status = {(o.sae, o.eval): (o.status, o.error) for o in out}
    assert status[("a", "count")][0] == "failed" and "boom on a" in status[("a", "count")][1]
    assert status[("a", "count_dep")] == ("failed", "needs count, which failed")
    assert status[("b", "count")][0] == status[("b", "count_dep")][0] == "done"
    assert not (tmp_path / "a" / "count.json").exists() and not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(RuntimeError, match="boom"):
        run_evals(_ctx(), _saes(), ["count"], tmp_path / "ff", overrides={"count": {"fail_on": "a"}}, fail_fast=True)


def test_result_json_is_strict_and_readable_by_others(tmp_path, count_evals):
    run_evals(_ctx(), _saes(["a"]), ["count"], tmp_path, overrides={"count": {"value": math.nan}})
    path = tmp_path / "a" / "count.json"
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["value"] is None
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_config_errors_name_the_valid_choices(count_evals):
    with pytest.raises(SaevalError, match=r"count has no field 'nope'; fields: value, fail_on, n"):
        resolve_evals(["count"], "paper", {"count": {"nope": 1}})
    with pytest.raises(SaevalError, match=r"count.n: Input should be greater than 0"):
        resolve_evals(["count"], "paper", {"count": {"n": 0}})
    with pytest.raises(SaevalError, match=r"count.n: Input should be a valid integer"):
        resolve_evals(["count"], "paper", {"count": {"n": "many"}})
    with pytest.raises(SaevalError, match=r"unknown eval 'nope'; available: .*core"):
        resolve_evals(["nope"], "paper")
    with pytest.raises(SaevalError, match=r"no preset 'huge'; presets: paper, demo"):
        resolve_evals(["count"], "huge")


def test_same_named_saes_get_distinct_folders_and_names_stay_inside(tmp_path, count_evals):
    saes = _saes(["x", "x"])
    out = run_evals(_ctx(), saes, ["count"], tmp_path)
    assert len({o.path for o in out}) == 2 and all(o.status == "done" for o in out)
    assert safe_component("../../etc/passwd") == "etc__passwd"
    assert safe_component("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82") == (
        "gemma-scope-2b-pt-res__layer_12__width_16k__average_l0_82")
    assert "/" not in safe_component("release:../../x") and not safe_component(".hidden").startswith(".")


def test_describe_changes_names_fields():
    old = {"config": {"n": 1, "m": [2, 5]}, "sae": "s0", "seed": 0}
    new = {"config": {"n": 2, "m": [2, 5]}, "sae": "s1", "seed": 0}
    text = describe_changes(old, new)
    assert "config.n 1 -> 2" in text and "sae changed" in text and "seed" not in text


def test_sizes_follow_the_device_kind_under_preset_and_user_fields():
    (cpu,) = resolve_evals(["core"], "paper", {})
    (gpu,) = resolve_evals(["core"], "paper", {}, "cuda:1")
    assert cpu.config.batch_size == 8 and gpu.config.batch_size == 64
    (mine,) = resolve_evals(["core"], "paper", {"core": {"batch_size": 4}}, "cuda")
    assert mine.config.batch_size == 4  # what the user sets always wins
    assert resolve_evals(["tpp"], "paper", {"tpp": {"datasets": ["wordnet"]}}, "cuda")[0].config.llm_batch_size == 128


def _an_int_field(spec):
    """(field, a valid value other than the default) of an eval's config, from its own schema."""
    for name, info in spec.config_cls.model_fields.items():
        if info.annotation is int and isinstance(info.default, int):
            return name, info.default + 1
    raise AssertionError(f"{spec.name} has no int field")


def test_set_and_config_file_reach_every_registered_eval(tmp_path):
    import json as _json

    from saeval.evals import get_eval
    from saeval.runner.overrides import parse_sets, read_config_file
    from saeval.runner.request import build_request

    get_eval("core")
    names = sorted(n for n in EVALS if not n.startswith("count"))
    assert {"core", "tpp", "scr", "shift", "steerability", "synthetic", "sparse_probing", "autointerp"} <= set(names)
    fields = {n: _an_int_field(EVALS[n]) for n in names}
    sets = parse_sets([f"{n}.{f}={v}" for n, (f, v) in fields.items()])
    (tmp_path / "run.json").write_text(_json.dumps({n: {f: v + 1} for n, (f, v) in fields.items()}))
    from_flags = build_request({}, {"evals": names}, sets)
    from_file = build_request(read_config_file(tmp_path / "run.json"), {"evals": names}, {})
    both = build_request(read_config_file(tmp_path / "run.json"), {"evals": names}, sets)  # --set beats the file
    for name, (field, value) in fields.items():
        spec = EVALS[name]
        assert getattr(spec.resolve("paper", from_flags.overrides.get(name)), field) == value
        assert getattr(spec.resolve("paper", from_file.overrides.get(name)), field) == value + 1
        assert getattr(spec.resolve("paper", both.overrides.get(name)), field) == value


def test_weights_edited_in_place_and_an_edited_corpus_recompute(tmp_path, count_evals):
    saes = _saes(["a"])
    corpus = tmp_path / "c.txt"
    corpus.write_text("one text")
    ctx = _ctx(corpus=str(corpus))
    run_evals(ctx, saes, ["count"], tmp_path / "o")
    with torch.no_grad():
        saes[0].W_dec.add_(1e-3)  # the same object: a memo keyed by the object would call it up to date
    assert [o.status for o in run_evals(ctx, saes, ["count"], tmp_path / "o")] == ["done"]
    corpus.write_text("another, longer text")  # same path, same process
    assert [o.status for o in run_evals(ctx, saes, ["count"], tmp_path / "o")] == ["done"]
    assert [o.status for o in run_evals(ctx, saes, ["count"], tmp_path / "o")] == ["skipped"]


def test_an_sae_named_like_the_studies_folder_gets_its_own():
    assert safe_component("studies") == "studies_sae" and safe_component("my-studies") == "my-studies"
