"""Steerability on language models: metric formulas, the stacked sweep against hooked full forwards, the
registered eval end to end, bad input, and one planted-latent check on the real SmolLM2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saeval.analysis.steering import LMReadout, latent_metrics, polysemanticity, summarise, top_concepts
from saeval.data.vocab import load_vocab, read_vocab_file, wordnet_common_words
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext, get_eval
from saeval.evals.steerability import SPEC, SteerabilityConfig
from saeval.evals.steerability.run import pick_latents, run, steer_sweep
from saeval.results import write_result
from saeval.saes import SAEConfig, create_sae

HOOK = "blocks.1.hook_resid_post"


def _random_sae(d_in: int, d_sae: int, hook: str, seed: int = 0, act_scale: float = 1.0):
    sae = create_sae(SAEConfig(architecture="relu", d_in=d_in, d_sae=d_sae, hook_name=hook, name=f"rand-{seed}",
                               act_scale=act_scale))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1))
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 0.3)
    return sae


def test_metric_formulas_known_values():
    delta = np.array([[0.5, -0.3, -0.2]])
    logit = np.array([[2.0, -1.0, 0.5]])
    m = latent_metrics(delta, logit, np.eye(3))
    assert m["power"][0] == pytest.approx(0.5)
    assert m["steerability"][0] == pytest.approx(0.25 + 0.09 + 0.04)
    assert m["steerability_signed"][0] == pytest.approx(0.25 - 0.09 - 0.04)
    assert m["aggregate_prob_diff"][0] == pytest.approx(0.5)
    assert m["logit_power"][0] == pytest.approx(2.0)
    assert m["logit_steerability"][0] == pytest.approx(4 + 1 + 0.25)
    assert m["logit_steerability_signed"][0] == pytest.approx(4 - 1 + 0.25)
    # Orthonormal concepts: Delta . T = Delta, centroid direction (1,1,1)/sqrt(3).
    c = 1 / np.sqrt(3)
    expect = np.sqrt((0.5 - c) ** 2 + (-0.3 - c) ** 2 + (-0.2 - c) ** 2)
    assert m["polysemanticity"][0] == pytest.approx(expect)
    # Scaling the concept embeddings changes nothing (they are unit-normalised first).
    assert polysemanticity(delta, 3 * np.eye(3))[0] == pytest.approx(expect)


def test_steerability_prefers_fewer_concepts():
    """The post's property: the same probability mass spread uniformly over n concepts scores m^2 / n, so a
    latent with n top concepts beats one with n + 1."""
    scores = []
    for n in (1, 2, 3, 4):
        d = np.zeros((1, 10))
        d[0, :n] = 0.6 / n
        d[0, -1] = -0.6
        scores.append(latent_metrics(d, d, np.eye(10))["steerability"][0] - 0.36)
    assert np.allclose(scores, [0.36 / n for n in (1, 2, 3, 4)])


def test_summary_and_top_concepts():
    steer = np.array([0.5, 0.05, 0.2, 0.3, 0.0])
    power = np.array([0.6, 0.1, 0.4, 0.3, 0.0])
    top = ["cat", "dog", "cat", "sea", "dog"]
    s = summarise(steer, power, top, threshold=0.1)
    assert s["n_steerable"] == 3 and s["frac_steerable"] == pytest.approx(0.6)
    assert s["n_distinct_top_concepts"] == 2 and s["n_distinct_top_concepts_all"] == 3  # steerable: cat, sea
    assert s["mean_power"] == pytest.approx(0.28) and s["mean_steerability"] == pytest.approx(0.21)
    assert s["mean_s_over_p"] == pytest.approx(np.mean([0.5 / 0.6, 0.05 / 0.1, 0.2 / 0.4, 1.0]))  # P=0 skipped
    promoted, demoted = top_concepts(np.array([0.1, -0.4, 0.3, 0.0]), ["a", "b", "c", "d"], 2)
    assert [w for w, _ in promoted] == ["c", "a"] and [w for w, _ in demoted] == ["b", "d"]


@pytest.mark.parametrize("readout", ["last", "all"])
def test_sweep_matches_hooked_forward(tiny_host, readout):
    """The engine (prefix once, stacked variants from the hook, vocabulary rows only) against one hooked full
    forward per (latent, strength); uneven batches and a ragged last chunk of latents exercise the bookkeeping."""
    sae = _random_sae(64, 40, HOOK, act_scale=2.0)
    words = load_vocab(size=300)
    config = SteerabilityConfig(n_inputs=5, prompt_len=12, batch_size=2, max_rows=12, readout=readout)
    lm = LMReadout(tiny_host, HOOK, words, config, corpus="sotu", seed=0)
    latents, strengths, scale = [3, 17, 39], [-5.0, 0.0, 30.0], 2.0
    delta, delta_logit, _, stats = steer_sweep(lm, sae, latents, strengths, scale, config)
    tokens = lm.prompts
    mask = tiny_host.ordinary_mask(tokens)
    weight = mask[:, -1:] if readout == "last" else mask
    ids = torch.tensor(lm.token_ids)

    def read(logits):
        return (logits[:, -1:] if readout == "last" else logits)[..., ids].float()

    plain = read(tiny_host.forward(tokens))
    p0 = torch.softmax(scale * plain, -1)
    for i, f in enumerate(latents):
        for j, s in enumerate(strengths):

            def steer(x, f=f, s=s):
                # decode() divides by act_scale: the decoder direction in activation space is W_dec[f] / 2.
                return x + ((s - sae.encode(x)[..., f]) * mask)[..., None] * sae.W_dec[f] / 2.0

            steered = read(tiny_host.forward(tokens, interventions={HOOK: steer}))
            w = weight[..., None].float()
            expect = ((torch.softmax(scale * steered, -1) - p0) * w).sum((0, 1)) / w.sum()
            assert np.allclose(delta[i, j], expect.numpy(), atol=2e-6)
            expect_logit = ((steered - plain) * w).sum((0, 1)) / w.sum()
            assert np.allclose(delta_logit[i, j], expect_logit.numpy(), atol=1e-4)
    assert stats["n_prefix_sequences"] == 5 and stats["n_suffix_sequences"] == 5 + 3 * 3 * 5


def test_registered_eval_end_to_end(tiny_host, tmp_path):
    assert get_eval("steerability") is SPEC
    sae = _random_sae(64, 64, HOOK, seed=4)
    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny", seed=1)
    paths = [write_result(tmp_path / d, SPEC.run_fn()(ctx, sae, SPEC.config("tiny"))) for d in ("a", "b")]
    first, second = (json.loads(p.read_text()) for p in paths)
    for rec in (first, second):
        rec["details"].pop("seconds_prefix"), rec["details"].pop("seconds_sweep")
        rec.pop("seconds"), rec.pop("created_at")
    assert first == second  # same config and seed: same JSON
    det, met = first["details"], first["metrics"]
    assert det["strengths"] == [0.0, 10.0, 50.0] and met["summary_strength"] == 50.0
    assert [lat["latent"] for lat in det["latents"]] == pick_latents(64, SteerabilityConfig(n_latents=8), 1)
    assert met["n_latents"] == 8 and 0.0 <= met["frac_steerable"] <= 1.0
    s_idx = det["strengths"].index(50.0)
    assert met["mean_steerability"] == pytest.approx(np.mean([lat["steerability"][s_idx] for lat in det["latents"]]))
    html = SPEC.report_fn()([first])
    assert "Steerability S" in html and "rand-4" in html


def test_bad_inputs(tiny_host, tmp_path):
    sae = _random_sae(64, 16, HOOK)
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    tiny = {"n_latents": 2, "n_inputs": 2, "prompt_len": 8, "vocab_size": 50}
    with pytest.raises(SaevalError, match="lack the baseline 0"):
        run(ctx, sae, SteerabilityConfig(strengths=[5.0, 10.0], **tiny))
    with pytest.raises(SaevalError, match="distinct finite"):
        run(ctx, sae, SteerabilityConfig(strengths=[0.0, 5.0, 5.0], **tiny))
    with pytest.raises(SaevalError, match="summary_strength"):
        run(ctx, sae, SteerabilityConfig(strengths=[0.0, 5.0], summary_strength=7.0, **tiny))
    with pytest.raises(SaevalError, match="lack the baseline 0"):  # before any model loads
        SPEC.preflight(SPEC.config("tiny", strengths=[5.0]))
    with pytest.raises(SaevalError, match="vocab_size"):
        SPEC.config("tiny", vocab_size=0)
    with pytest.raises(SaevalError, match="latents"):
        run(ctx, sae, SteerabilityConfig(latents=[3, 99], **tiny))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(SaevalError, match="empty"):
        run(ctx, sae, SteerabilityConfig(vocab=str(empty), **tiny))
    with pytest.raises(SaevalError, match="not found"):
        load_vocab(str(tmp_path / "missing.txt"))
    with pytest.raises(SaevalError, match="tokenise to nothing.*''"):
        LMReadout(tiny_host, HOOK, ["dog", ""], SteerabilityConfig(**tiny), "sotu", 0)


def test_vocabularies(tmp_path):
    words = wordnet_common_words()
    assert len(words) > 10_000 and len(set(words)) == len(words)
    # SemCor's most frequent lemmas come first; every entry is a plain lowercase word.
    assert words.index("time") < 50 and words.index("water") < 500 and all(w.isalpha() for w in words[:5000])
    assert load_vocab(size=10) == list(words[:10])
    f = tmp_path / "v.txt"
    f.write_text("dragon\n# comment\n\n  sea  \ndragon\nred car\n")
    assert read_vocab_file(f) == ["dragon", "sea", "red car"]
    assert load_vocab(str(f), size=2) == ["dragon", "sea"]


@pytest.mark.smollm2
def test_planted_latent_on_smollm2(smollm2):
    """On the real model, a latent whose decoder row is the unembedding direction of " war" (seen through the
    final RMSNorm's gain), steered into the residual two blocks before the end, pushes the next token to "war"."""
    hook = "blocks.27.hook_resid_post"
    host = smollm2
    token = host.tokenizer(" war", add_special_tokens=False)["input_ids"][0]
    gain = host.model.model.norm.weight.detach()
    direction = F.normalize(gain * host.model.get_output_embeddings().weight[token].detach(), dim=0)
    sae = _random_sae(host.d_model, 12, hook, seed=5)
    with torch.no_grad():
        sae.W_dec[4] = direction
    ctx = EvalContext(host=host, hook=hook, corpus="sotu", preset="test", seed=0)
    config = SteerabilityConfig(latents=list(range(12)), n_inputs=4, prompt_len=24, vocab_size=2000,
                                strengths=[0.0, 100.0, 400.0, 1500.0])
    result = run(ctx, sae, config)
    lat = {r.latent: r for r in result.details.latents}
    assert lat[4].top_concept == "war" and lat[4].top_concept_prob[-1] > 0.3
    # At strength 400 only the planted latent is steerable; at 1500 any direction moves the output a lot,
    # but the planted one still moves it most.
    assert lat[4].steerability[2] > 0.1 > max(r.steerability[2] for f, r in lat.items() if f != 4)
    assert lat[4].steerability[-1] > max(r.steerability[-1] for f, r in lat.items() if f != 4)


def test_lm_concepts_single_or_first_token(tiny_host):
    """" andrena" is " and" + "ren" + "a": as a first-token concept it would stand for " and"."""
    words = ["dog", "andrena", "water", "dogs"]
    base = {"n_inputs": 1, "prompt_len": 8}
    single = LMReadout(tiny_host, HOOK, words, SteerabilityConfig(**base), "sotu", 0)
    assert single.words == ["dog", "water", "dogs"] and single.n_dropped == 1
    first = LMReadout(tiny_host, HOOK, words, SteerabilityConfig(lm_concepts="first_token", **base), "sotu", 0)
    assert first.words == words and tiny_host.tokenizer.decode([first.token_ids[1]]) == " and"
    assert torch.equal(first.W_VD[0], tiny_host.model.get_output_embeddings().weight[first.token_ids[0]])


def test_second_sae_reuses_the_unsteered_pass(tiny_host, monkeypatch):
    """Two SAEs in one run give each one's numbers alone, while the prompts run to the hook (and unsteered
    through the rest) only for the first."""
    config = SPEC.config("tiny")
    saes = [_random_sae(64, 40, HOOK, seed=s) for s in (0, 1)]
    alone = [run(EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny", seed=2), sae, config)
             for sae in saes]
    calls = []
    real_prefix = tiny_host.prefix
    monkeypatch.setattr(tiny_host, "prefix", lambda *a, **k: calls.append(1) or real_prefix(*a, **k))
    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny", seed=2)
    together = [run(ctx, sae, config) for sae in saes]
    n_batches = -(-config.n_inputs // min(config.batch_size, config.max_rows // len(config.strengths)))
    assert len(calls) == n_batches  # the second SAE ran no prefix
    for a, b in zip(alone, together, strict=True):
        assert a.metrics == b.metrics
        assert a.details.latents == b.details.latents
    assert alone[0].metrics != alone[1].metrics  # the SAEs differ, so equal numbers would mean a stale memo
    # A config field the unsteered pass depends on gives a pass of its own.
    run(ctx, saes[0], config.model_copy(update={"prompt_len": config.prompt_len + 4}))
    assert len(calls) == 2 * n_batches
