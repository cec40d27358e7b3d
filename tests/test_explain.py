"""Self-explanation: prompt placeholders, sweep metrics vs an independent full forward, the reference mode's
formulas vs NumPy, prefill-only replacement under left padding, failure flag and threshold, bad input, the
registered eval's latent choice from core's densities and its config checks; one real SmolLM2 check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saeval.errors import SaevalError
from saeval.evals.self_explanation.config import SelfExplanationConfig, SelfExplanationResult
from saeval.evals.self_explanation.explain import (
    build_prompt,
    chosen_index,
    extract_explanation,
    generate_with_vectors,
    left_pad,
    placeholder_intervention,
    ranking_metric,
    scale_sweep,
    self_explain,
    text_metric_indices,
)
from saeval.saes.base import SAEConfig, create_sae

TINY = dict(rep_hook="blocks.1.hook_resid_pre", probe_hook="blocks.3.hook_resid_pre", batch_size=5)


def tiny_sae(host, d_sae=3, seed=0):
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, host.d_model, generator=torch.Generator().manual_seed(seed)))
    return sae


def test_prompt_placeholders(tiny_host):
    for template, n in (("repeat", 4), ("meaning", 2)):
        ids, pos = build_prompt(tiny_host, template)
        assert len(pos) == n and all(tiny_host.tokenizer.decode([ids[p]]).strip() == "X" for p in pos)
    ids, _ = build_prompt(tiny_host, "repeat")
    assert tiny_host.tokenizer.decode(ids).endswith('3. "X"\n4. "')
    with pytest.raises(SaevalError, match="template"):
        build_prompt(tiny_host, "poem")


def full_forward(host, cfg, vec):
    """Next-token log-probs and probe residual at the last position, X replaced by vec: a plain forward."""
    ids, pos = build_prompt(host, cfg.template)

    def fn(acts):
        acts = acts.clone()
        acts[:, pos] = vec
        return acts

    store: list = []
    logits = host.forward(torch.tensor([ids]), interventions={cfg.rep_hook: fn}, captures={cfg.probe_hook: store})
    return F.log_softmax(logits[0, -1].double(), -1), store[0][0, -1].double()


def test_sweep_matches_independent_full_forward(tiny_host):
    host = tiny_host
    cfg = SelfExplanationConfig(n_search_scales=3, max_scale=30.0, **TINY)
    d = F.normalize(torch.randn(host.d_model, generator=torch.Generator().manual_seed(1)), dim=0)
    sweep = scale_sweep(host, d[None], cfg)[0]
    mean_emb = F.normalize(host.model.get_input_embeddings().weight.detach().float().mean(0), dim=0)

    def run(vec):
        return full_forward(host, cfg, vec)

    lp0, r0 = run(torch.zeros(host.d_model))
    lp_base, _ = run(mean_emb)
    cos0 = float(r0 @ d.double() / r0.norm())
    ent0 = float(-(lp0.exp() * lp0).sum())
    for i, s in enumerate((0.0, 15.0, 30.0)):
        lp, r = run(s * d)
        assert sweep.scales[i] == pytest.approx(s)
        assert sweep.selfsim[i] == pytest.approx(float(r @ d.double() / r.norm()) - cos0, abs=1e-4)
        assert sweep.entropy[i] == pytest.approx(float(-(lp.exp() * lp).sum()) - ent0, abs=1e-3)
        assert sweep.crossent[i] == pytest.approx(float(-(lp.exp() * lp_base).sum()), rel=1e-4)
    assert sweep.chosen_scale == sweep.scales[max(range(3), key=lambda j: sweep.selfsim[j])]


def test_reference_mode_reproduces_the_reference_formulas(tiny_host):
    """selfsim='reference': the batch-norm self-similarity equals a NumPy reimplementation over independent full
    forwards, the chosen scale is scales[argmax(selfsim[1:]) - 1] and the filter reads the sweep's maximum."""
    host = tiny_host
    cfg = SelfExplanationConfig(n_search_scales=5, max_scale=40.0, selfsim="reference", **TINY)
    d = F.normalize(torch.randn(host.d_model, generator=torch.Generator().manual_seed(1)), dim=0)
    sweep = scale_sweep(host, d[None], cfg)[0]
    scales = np.linspace(0.0, 40.0, 5)
    R = np.stack([full_forward(host, cfg, float(s) * d)[1].numpy() for s in scales])  # [scales, d_model]
    dn = d.double().numpy()
    sim = R @ dn / np.linalg.norm(R) / np.linalg.norm(dn)  # the norm of the whole batch, as the reference
    want = sim - sim[0]
    np.testing.assert_allclose(sweep.selfsim, want, atol=1e-5)
    assert sweep.chosen_scale == pytest.approx(scales[np.argmax(want[1:]) - 1])
    assert sweep.max_selfsim == pytest.approx(want[np.argmax(want[1:]) - 1], abs=1e-5)
    assert sweep.failed == (not max(want) > 0.01)
    cosine = scale_sweep(host, d[None], cfg.model_copy(update={"selfsim": "cosine"}))[0]
    rows = np.linalg.norm(R, axis=1)
    np.testing.assert_allclose(cosine.selfsim, R @ dn / rows - R[0] @ dn / rows[0], atol=1e-4)  # per row
    assert cosine.chosen_scale == scales[int(np.argmax(cosine.selfsim))] != sweep.chosen_scale


def test_reference_scale_index_and_text_to_metric_index():
    assert chosen_index(np.array([0.0, 1.0, 3.0, 2.0]), "cosine") == 2
    assert chosen_index(np.array([0.0, 1.0, 3.0, 2.0]), "reference") == 0  # argmax(selfsim[1:]) - 1 = 1 - 1
    assert chosen_index(np.array([0.0, 5.0, 1.0, 2.0]), "reference") == 3  # -1: the last scale, as in Python
    gen, search = np.linspace(0, 200, 32), np.linspace(0, 200, 64)
    ref, near = text_metric_indices(gen, search, "reference"), text_metric_indices(gen, search, "cosine")
    assert ref == [int(i / 32 * 64) for i in range(32)]
    assert near == [int(np.abs(search - s).argmin()) for s in gen]
    assert sum(a != b for a, b in zip(ref, near, strict=True)) == 16  # half the texts read another scale


def test_reference_mode_scores_texts_by_position(tiny_host):
    """Three grid texts on five search scales: the reference reads sweep indices 0, 1, 3 (int formula), cosine
    mode the nearest scales 0, 2, 4."""
    sae = tiny_sae(tiny_host)
    base = dict(n_search_scales=5, n_generation_scales=3, max_new_tokens=2, max_scale=50.0, **TINY)
    for mode, want in (("reference", [0, 1, 3]), ("cosine", [0, 2, 4])):
        out = self_explain(tiny_host, sae, [0], SelfExplanationConfig(selfsim=mode, **base))[0]
        metric = ranking_metric(out.sweep, 0.4)
        assert [g.scale for g in out.generations] == [0.0, 25.0, 50.0]
        assert [g.metric for g in out.generations] == pytest.approx([float(metric[k]) for k in want])


def test_zero_direction_is_flagged_failed(tiny_host):
    sae = tiny_sae(tiny_host)
    with torch.no_grad():
        sae.W_dec[2] = 0.0  # no direction: nothing to inject, self-similarity stays 0
    cfg = SelfExplanationConfig(n_search_scales=4, n_generation_scales=2, max_new_tokens=3, max_scale=50.0,
                                selfsim_threshold=0.01, **TINY)
    out = self_explain(tiny_host, sae, [0, 2], cfg)
    assert out[1].sweep.failed and out[1].sweep.max_selfsim == pytest.approx(0.0, abs=1e-6)
    assert out[0].sweep.max_selfsim > 0.01 and not out[0].sweep.failed  # the residual stream carries x forward
    # The default threshold is the reference's 0.01 in cosine units, 0.08: this latent's ~0.03 fails it.
    assert SelfExplanationConfig().threshold()[0] == pytest.approx(0.08)
    assert SelfExplanationConfig(selfsim="reference").threshold()[0] == 0.01
    default = scale_sweep(tiny_host, F.normalize(sae.W_dec[:1].detach(), dim=-1),
                          cfg.model_copy(update={"selfsim_threshold": None}))[0]
    assert default.max_selfsim == pytest.approx(out[0].sweep.max_selfsim) and default.failed
    assert len(out[0].generations) == 2 and [g.scale for g in out[0].generations] == [0.0, 50.0]  # the grid
    best = self_explain(tiny_host, sae, [0], cfg.model_copy(update={"generation_scales": "best"}))[0]
    scales = [g.scale for g in best.generations]
    assert scales[0] == best.sweep.chosen_scale and 0.0 not in scales and len(set(scales)) == 2


def test_prefill_only_replacement():
    vecs = torch.arange(6.0).reshape(2, 3)
    fn = placeholder_intervention([[1], [2, 3]], vecs, prompt_len=5)
    out = fn(torch.zeros(2, 5, 3))
    assert (out[0, 1] == vecs[0]).all() and (out[1, 2] == vecs[1]).all() and (out[1, 3] == vecs[1]).all()
    assert out.abs().sum() == vecs[0].abs().sum() + 2 * vecs[1].abs().sum()
    step = torch.zeros(2, 1, 3)
    assert fn(step) is step  # decoding steps pass through


def test_left_padded_batch_matches_single_rows(tiny_host):
    """Rows of different lengths, left-padded together, get their vector at their own placeholder positions:
    the last-position logits equal each row's run alone, and batched greedy generation equals unbatched."""
    host, hook = tiny_host, "blocks.1.hook_resid_pre"
    ids, pos = build_prompt(host, "meaning")
    extra = host.tokenizer("Hello there.", add_special_tokens=False)["input_ids"]
    prompts = [(ids, pos), (ids[:1] + extra + ids[1:], [p + len(extra) for p in pos])]
    vecs = torch.randn(2, host.d_model, generator=torch.Generator().manual_seed(2))
    tokens, mask, offsets = left_pad([p for p, _ in prompts], host.pad_id)
    assert offsets == [len(extra), 0]
    shifted = [[p + off for p in pp] for (_, pp), off in zip(prompts, offsets, strict=True)]
    batch = host.forward(tokens, mask, {hook: placeholder_intervention(shifted, vecs, tokens.shape[1])})[:, -1]
    for i, (row, pp) in enumerate(prompts):
        fn = placeholder_intervention([pp], vecs[i : i + 1], len(row))
        alone = host.forward(torch.tensor([row]), interventions={hook: fn})[0, -1]
        torch.testing.assert_close(batch[i], alone, atol=1e-4, rtol=1e-4)
    plain = host.forward(torch.tensor([ids]))[0, -1]
    assert (plain - batch[0]).abs().max() > 1e-3  # the vector reaches the output
    greedy = generate_with_vectors(host, prompts, vecs, hook, 4, 0.0, batch_size=2)
    assert greedy == [generate_with_vectors(host, [p], vecs[i : i + 1], hook, 4, 0.0, 1)[0]
                      for i, p in enumerate(prompts)]


def test_extract_and_bad_inputs(tiny_host):
    assert extract_explanation('Elephant" and more') == "Elephant"
    assert extract_explanation(" big cats\nsecond line") == "big cats"
    assert extract_explanation('Nope\n5. "x"') == "Nope"
    # meaning: the model closes the quote on a word and explains after it; the line is the explanation.
    said = 'forest" or "enclosed" in the context of horticulture.\nMore'
    assert extract_explanation(said, "meaning") == '"forest" or "enclosed" in the context of horticulture.'
    assert extract_explanation(said) == "forest"
    assert extract_explanation("a sudden, intense feeling", "meaning") == "a sudden, intense feeling"
    assert extract_explanation('writing."', "meaning") == "writing."
    assert extract_explanation(' "\n\nRust has', "meaning") == ""
    sae = tiny_sae(tiny_host)
    with pytest.raises(SaevalError, match="out of range"):
        self_explain(tiny_host, sae, [3], SelfExplanationConfig(**TINY))
    with pytest.raises(SaevalError, match="must come after"):
        scale_sweep(tiny_host, torch.ones(1, tiny_host.d_model),
                    SelfExplanationConfig(rep_hook="blocks.2.hook_resid_pre", probe_hook="blocks.1.hook_resid_post"))


def test_eval_draws_live_latents_from_core(tiny_host):
    """The registered eval picks its latents among those core's densities call alive (ctx.requirement), and
    needs core only when it must pick them."""
    from types import SimpleNamespace

    from saeval.evals import get_eval
    from saeval.evals.base import EvalContext

    spec = get_eval("self_explanation")
    config = spec.config("tiny", n_latents=2)
    assert spec.prerequisites(config) == ("core",)
    assert spec.prerequisites(spec.config("tiny", latents=[1])) == ()
    sae = tiny_sae(tiny_host, d_sae=6)
    ctx = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post", preset="tiny")
    ctx.provide(sae, SimpleNamespace(eval="core", details=SimpleNamespace(latent_density=[0, 0.1, 0, 0.2, 0, 0])))
    result = spec.run_fn()(ctx, sae, config)
    assert isinstance(result, SelfExplanationResult) and result.details.latents == [1, 3]
    assert [e.latent for e in result.details.explanations] == [1, 3] and result.metrics.n_latents == 2
    assert all(len(e.sweep.scales) == 4 for e in result.details.explanations)  # the tiny preset's sweep
    assert SelfExplanationResult.model_validate(result.model_dump(mode="json")) == result
    d = result.details
    assert d.selfsim == "cosine" and d.selfsim_threshold == pytest.approx(0.08)
    assert "sqrt(64)" in d.selfsim_threshold_derivation
    assert any("whole batch of 64" in x for x in d.departures) and len(d.departures) == 5


def test_config_checks():
    from saeval.evals import get_eval

    spec = get_eval("self_explanation")
    with pytest.raises(SaevalError, match="template"):
        spec.config(template="poem")
    with pytest.raises(SaevalError, match="max_scale"):
        spec.config(min_scale=10.0, max_scale=5.0)
    with pytest.raises(SaevalError, match="n_search_scales"):
        spec.config(n_search_scales=0)
    with pytest.raises(SaevalError, match="generation_scales='grid'"):
        spec.config("demo", selfsim="reference")  # the demo preset generates at the best scales
    with pytest.raises(SaevalError, match="n_search_scales >= 2"):
        spec.config(selfsim="reference", n_search_scales=1)
    assert spec.config("tiny", selfsim="reference").selfsim == "reference"
    assert all(f.description for f in SelfExplanationConfig.model_fields.values())


@pytest.mark.smollm2
def test_smollm2_repeats_an_injected_word(smollm2):
    """A 'latent' whose decoder row is the layer-2 residual of " elephant": SmolLM2 repeats the word."""
    host = smollm2
    tokens = torch.tensor([[host.bos_id] + host.tokenizer("The elephant", add_special_tokens=False)["input_ids"]])
    resid = host.capture(tokens, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"][0, -1]
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=1))
    with torch.no_grad():
        sae.W_dec[0] = resid
    # Its cosine peaks near 0.07: under the reference-equivalent default (0.08) it would be flagged, though
    # the explanation is right; 0.01 keeps this check about the generation.
    cfg = SelfExplanationConfig(n_search_scales=4, n_generation_scales=2, min_scale=60.0, max_scale=140.0,
                                max_new_tokens=5, selfsim_threshold=0.01)
    out = self_explain(host, sae, [0], cfg)[0]
    assert not out.sweep.failed and out.sweep.chosen_scale > 60.0
    assert any("elephant" in e.lower() for e in out.best), out.best


def test_cached_prefix_rows_equal_full_rows(tiny_host, monkeypatch):
    """The sweep runs the positions before the first placeholder once (KV cache); rows continued from that cache
    equal rows run in full from the replacement hook (the path for models whose cache cannot be tiled)."""
    import saeval.evals.self_explanation.explain as explain

    host = tiny_host
    ids, positions = build_prompt(host, "meaning")
    assert min(positions) > 0 and explain._prefix_cache(host, torch.tensor([ids[: min(positions)]])) is not None
    vectors = torch.randn(5, host.d_model, generator=torch.Generator().manual_seed(2)) * 10
    args = (host, ids, positions, vectors, TINY["rep_hook"], TINY["probe_hook"], 2)
    logp, resid = explain.last_position_rows(*args)
    monkeypatch.setattr(explain, "_prefix_cache", lambda host, tokens: None)
    logp_full, resid_full = explain.last_position_rows(*args)
    torch.testing.assert_close(logp, logp_full, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(resid, resid_full, atol=1e-4, rtol=1e-4)
