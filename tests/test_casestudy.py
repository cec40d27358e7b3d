"""The case study on a tiny host: planted shared latents come out on top, typed JSON result and its report
section, a rerun skipped by config hash, bad input (library and CLI); FaithfulSAE cross-data metrics on known
answers; the self-generated corpus."""

from __future__ import annotations

import pytest
import torch

import saeval.studies.case_study.run as case_run
from saeval.analysis.matching import cross_data_metrics, match_saes
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.results import read_result
from saeval.saes.base import SAEConfig, create_sae
from saeval.studies import get_study, run_studies
from saeval.studies.case_study.config import CaseStudyResult
from saeval.studies.case_study.run import select_pairs

HOOK = "blocks.1.hook_resid_post"


def relu_sae(host, d_sae, seed, name):
    g = torch.Generator().manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=d_sae, hook_name=HOOK,
                               apply_b_dec_to_input=False, name=name))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(host.d_model, d_sae, generator=g))
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, host.d_model, generator=g), dim=1))
    return sae


@pytest.fixture(scope="module")
def pair(tiny_host):
    """SAE B shares 3 latents with SAE A (same encoder and decoder rows, shuffled positions)."""
    a, b = relu_sae(tiny_host, 16, 0, "sae-a"), relu_sae(tiny_host, 16, 1, "sae-b")
    with torch.no_grad():
        for src, dst in ((2, 9), (5, 0), (11, 4)):
            b.W_dec[dst] = a.W_dec[src]
            b.W_enc[:, dst] = a.W_enc[:, src]
        contexts = load_contexts(tiny_host, "sotu", 1024, 64, seed=0)
        acts = tiny_host.capture(contexts, [HOOK])[HOOK][tiny_host.ordinary_mask(contexts)]
        for sae in (a, b):  # thresholds: each latent fires on ~10% of tokens
            sae.b_enc.copy_(-(acts @ sae.W_enc).quantile(0.9, dim=0))
    return a, b


def run_tiny(host, saes, out, **overrides):
    ctx = EvalContext(host=host, hook=HOOK, corpus="sotu", preset="tiny")
    path = run_studies(ctx, list(saes), ["case_study"], out, overrides={"case_study": overrides})[0]
    return ctx, path, CaseStudyResult.model_validate(read_result(path))


def test_case_study_outputs(tiny_host, pair, tmp_path, monkeypatch):
    a, b = pair
    ctx, path, result = run_tiny(tiny_host, pair, tmp_path)
    assert path == tmp_path / "studies" / "case_study.json"
    entries = result.details.entries
    assert [e.group for e in entries] == ["top", "top", "bottom", "bottom"]
    assert {tuple(e.indices) for e in entries[:2]} <= {(2, 9), (5, 0), (11, 4)}
    assert all(e.similarity == pytest.approx(1.0, abs=1e-5) for e in entries[:2])
    assert entries[2].similarity <= entries[3].similarity < 0.7  # worst first among the bottom
    match = match_saes(a, b)
    assert [e.indices for e in entries[2:]] == [[r, c] for r, c, _ in match.bottom(2)]
    for e in entries:
        assert len(e.self_explanations) == len(e.eleuthers) == len(e.windows) == 2
        for side in e.windows:
            assert set(side) == {"mean", "density", "max"}
            for ex in side["max"]:
                assert len(ex.tokens) == len(ex.texts) == len(ex.acts) == 12 and max(ex.acts) > 0
    # Shared latents fire on the same windows in both SAEs.
    assert entries[0].windows[0]["max"] == entries[0].windows[1]["max"]
    assert result.metrics.shared_feature_ratio == pytest.approx(3 / 16) and result.metrics.n_pairs == 4
    assert [s.name for s in result.saes] == ["sae-a", "sae-b"] and result.preset == "tiny"
    assert result.config == get_study("case_study").config("tiny")
    page = get_study("case_study").report_fn()(result)
    assert page.count("class='cs-card'") == 4 and "rgba(255,140,0," in page
    # Seeded: the same config gives the same entries.
    again = get_study("case_study").run_fn()(ctx, [a, b], result.config)
    assert again.details.entries == entries

    # A rerun with the same config keeps the file; another field value recomputes it.
    stamp = path.stat().st_mtime_ns

    def no_run(*args, **kwargs):
        raise AssertionError("recomputed an up-to-date study")

    monkeypatch.setattr(case_run, "run", no_run)
    run_tiny(tiny_host, pair, tmp_path)
    assert path.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    _, _, fewer = run_tiny(tiny_host, pair, tmp_path, top=1, bottom=0)
    assert [e.group for e in fewer.details.entries] == ["top"] and fewer.config_hash != result.config_hash


def test_pairs_are_chosen_among_latents_with_enough_windows(tiny_host, pair, tmp_path):
    """A shared pair whose latents never fire matches perfectly (same decoder rows) but has no activating window:
    it is left out, and the next shared pairs are studied instead."""
    import copy

    a, b = (copy.deepcopy(s) for s in pair)
    with torch.no_grad():
        a.b_enc[2] = b.b_enc[9] = -1e6  # the shared pair (2, 9) never fires
    _, _, result = run_tiny(tiny_host, [a, b], tmp_path, bottom=0)
    assert {tuple(e.indices) for e in result.details.entries} == {(5, 0), (11, 4)}
    assert all(e.fired == [True, True] for e in result.details.entries)
    d = result.details
    assert d.min_activating_windows == get_study("case_study").config("tiny").embedding.n_test
    assert d.n_eligible_pairs == 15  # every matched pair but (2, 9)
    assert select_pairs(match_saes(a, b), 1, 0)[0][2][:2] in {(2, 9), (5, 0), (11, 4)}  # no rule: any shared


def test_select_pairs_without_repeats():
    class M:
        pairs = [(i, i, 1 - i / 10) for i in range(5)]

    chosen = select_pairs(M(), 3, 3)
    assert [p[0] for _, _, p in chosen] == [0, 1, 2, 4, 3]
    odd = select_pairs(M(), 1, 1, keep=lambda a, b: a % 2 == 1)
    assert [(g, p[0]) for g, _, p in odd] == [("top", 1), ("bottom", 3)]


def test_bad_inputs(tiny_host, pair, tmp_path):
    a, _ = pair
    other = create_sae(SAEConfig(architecture="relu", d_in=32, d_sae=8, hook_name=HOOK))
    with pytest.raises(SaevalError, match="different d_in"):
        run_tiny(tiny_host, [a, other], tmp_path)
    with pytest.raises(SaevalError, match="compares 2 SAEs but 1"):
        run_tiny(tiny_host, [a], tmp_path)
    with pytest.raises(SaevalError, match="no preset"):
        get_study("case_study").config("huge")
    with pytest.raises(SaevalError, match="unknown explainer"):
        get_study("case_study").config(explainer="gpt")
    from typer.testing import CliRunner

    from saeval.cli import app

    for args, message in ((["--sae", "only-one"], "exactly two --sae"), (["--preset", "huge"], "no preset"),
                          (["--set", "topp=3"], "no field 'topp'"), (["--set", "top=-1"], "case_study.top")):
        result = CliRunner().invoke(app, ["case-study", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_cross_data_metrics_known_answers(tiny_host):
    """An SAE that reconstructs exactly (ReLU(x) - ReLU(-x)) and one that outputs zero."""
    D = tiny_host.d_model
    exact = create_sae(SAEConfig(architecture="relu", d_in=D, d_sae=2 * D, hook_name=HOOK, apply_b_dec_to_input=False))
    zero = create_sae(SAEConfig(architecture="relu", d_in=D, d_sae=4, hook_name=HOOK))
    with torch.no_grad():
        eye = torch.eye(D)
        exact.W_enc.copy_(torch.cat([eye, -eye], 1))
        exact.W_dec.copy_(torch.cat([eye, -eye], 0))
    m = cross_data_metrics(tiny_host, exact, "moby-dick", n_tokens=256, ctx_len=64)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5) and m["l2_loss"] == pytest.approx(0, abs=1e-8)
    assert m["ce_diff"] == pytest.approx(0.0, abs=1e-4) and m["n_tokens"] == 4 * 63
    z = cross_data_metrics(tiny_host, zero, "moby-dick", n_tokens=256, ctx_len=64)
    contexts = load_contexts(tiny_host, "moby-dick", 256, 64)
    x = tiny_host.capture(contexts, [HOOK])[HOOK][tiny_host.ordinary_mask(contexts)].double()
    assert z["explained_variance_faithfulsae"] == pytest.approx(0.0, abs=1e-6)
    assert z["l2_loss"] == pytest.approx(float(x.pow(2).mean()), rel=1e-5)
    mask = tiny_host.ordinary_mask(contexts)

    def ce(logits):
        logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, contexts[:, 1:, None])[..., 0]
        return float(-logp[mask[:, :-1]].mean())

    ablated = tiny_host.forward(contexts, interventions={HOOK: lambda acts: acts * ~mask[..., None]})
    assert z["ce_diff"] == pytest.approx(ce(ablated) - ce(tiny_host.forward(contexts)), abs=1e-4)


def test_self_generated_corpus(tiny_host, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEVAL_CACHE", str(tmp_path))
    c1 = load_contexts(tiny_host, "self-generated", 4 * 16, ctx_len=16, seed=0)
    assert c1.shape == (4, 16) and (c1[:, 0] == tiny_host.bos_id).all()
    assert not torch.isin(c1[:, 1:], tiny_host.special_ids).any()  # cut at end of text
    assert torch.equal(c1, load_contexts(tiny_host, "self-generated", 4 * 16, ctx_len=16, seed=0))  # cached
    more = load_contexts(tiny_host, "self-generated", 40 * 16, ctx_len=16, seed=0)  # extends the cache
    assert torch.equal(load_contexts(tiny_host, "self-generated", 4 * 16, ctx_len=16, seed=0), c1)
    assert more.shape == (40, 16)
    other = load_contexts(tiny_host, "self-generated", 4 * 16, ctx_len=16, seed=1)
    assert not torch.equal(other, c1)
    from tests.conftest import make_tiny_llama_host

    twin = make_tiny_llama_host(tiny_host.tokenizer, seed=1)  # same name, other weights: its own samples
    assert twin.name == tiny_host.name
    assert not torch.equal(load_contexts(twin, "self-generated", 4 * 16, ctx_len=16, seed=0), c1)
