"""Self-explanation: prompt placeholders, sweep metrics vs an independent full forward, prefill-only
replacement under left padding, failure flag, bad input, the registered eval's latent choice from core's
densities and its config checks; one real SmolLM2 check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saeval.errors import SaevalError
from saeval.evals.self_explanation.config import SelfExplanationConfig, SelfExplanationResult
from saeval.evals.self_explanation.explain import (
    build_prompt,
    extract_explanation,
    generate_with_vectors,
    left_pad,
    placeholder_intervention,
    scale_sweep,
    self_explain,
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


def test_sweep_matches_independent_full_forward(tiny_host):
    host = tiny_host
    cfg = SelfExplanationConfig(n_search_scales=3, max_scale=30.0, **TINY)
    d = F.normalize(torch.randn(host.d_model, generator=torch.Generator().manual_seed(1)), dim=0)
    sweep = scale_sweep(host, d[None], cfg)[0]
    ids, pos = build_prompt(host, "repeat")
    tokens = torch.tensor([ids])
    mean_emb = F.normalize(host.model.get_input_embeddings().weight.detach().float().mean(0), dim=0)

    def run(vec):
        def fn(acts):
            acts = acts.clone()
            acts[:, pos] = vec
            return acts

        store: list = []
        logits = host.forward(tokens, interventions={cfg.rep_hook: fn}, captures={cfg.probe_hook: store})
        return F.log_softmax(logits[0, -1].double(), -1), store[0][0, -1].double()

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


def test_zero_direction_is_flagged_failed(tiny_host):
    sae = tiny_sae(tiny_host)
    with torch.no_grad():
        sae.W_dec[2] = 0.0  # no direction: nothing to inject, self-similarity stays 0
    cfg = SelfExplanationConfig(n_search_scales=4, n_generation_scales=2, max_new_tokens=3, max_scale=50.0, **TINY)
    out = self_explain(tiny_host, sae, [0, 2], cfg)
    assert out[1].sweep.failed and out[1].sweep.max_selfsim == pytest.approx(0.0, abs=1e-6)
    assert out[0].sweep.max_selfsim > 0.01 and not out[0].sweep.failed  # the residual stream carries x forward
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


def test_config_checks():
    from saeval.evals import get_eval

    spec = get_eval("self_explanation")
    with pytest.raises(SaevalError, match="template"):
        spec.config(template="poem")
    with pytest.raises(SaevalError, match="max_scale"):
        spec.config(min_scale=10.0, max_scale=5.0)
    with pytest.raises(SaevalError, match="n_search_scales"):
        spec.config(n_search_scales=0)
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
    cfg = SelfExplanationConfig(n_search_scales=4, n_generation_scales=2, min_scale=60.0, max_scale=140.0,
                                max_new_tokens=5)
    out = self_explain(host, sae, [0], cfg)[0]
    assert not out.sweep.failed and out.sweep.chosen_scale > 60.0
    assert any("elephant" in e.lower() for e in out.best), out.best
