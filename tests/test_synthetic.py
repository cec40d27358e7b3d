"""Synthetic-activations eval: step construction, MS step, plateau, target constructions (saeval's rules and
teren's, each teren rule on small inputs and against a literal reading of its code), the cached runner against
plain forwards, bad inputs, and tiny end-to-end runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saeval.analysis.synthetic_targets import (
    baseline_latents,
    fit_gaussian,
    structured_latents,
    teren_baseline_latents,
    teren_structured_latents,
)
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.core.config import CoreDetails, CoreResult
from saeval.evals.synthetic import SPEC
from saeval.evals.synthetic.report import report
from saeval.evals.synthetic.run import (
    LastPositionRunner,
    absolute_steps,
    curve_values,
    max_slope_step,
    plateau_length,
    plateau_on_grid,
    relative_steps,
    run,
)
from saeval.results import write_result
from saeval.saes.base import SAEConfig, create_sae

HOOK = "blocks.1.hook_resid_post"


def random_sae(d_in: int = 64, d_sae: int = 256, k: int = 8, hook: str = HOOK, seed: int = 0, name="rand"):
    """Random TopK SAE with unit decoder rows and a tied encoder: every latent can fire."""
    torch.manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, hook_name=hook, name=name))
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(torch.randn(d_sae, d_in), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


# ------------------------------------------------------------------------------------------ curves
def test_max_slope_step_finds_the_jump_and_the_floor():
    curve = np.r_[np.linspace(0, 1, 40), np.linspace(5, 6, 60)]  # jump between index 39 and 40
    assert max_slope_step(curve) == 40
    assert max_slope_step(np.linspace(0, 0.5, 100)) == 99  # slope 0.005 everywhere: below the 0.02 floor
    assert max_slope_step(0.5 * np.arange(10.0)) == 0  # all slopes equal (exactly): the first one wins
    # s_0 duplicates s_1, so a curve that rises most at its first step reports step 0 (ties go to the first)
    assert max_slope_step(np.array([0.0, 3.0, 4.0, 4.5])) == 0
    assert max_slope_step(np.array([1.0])) == 99


def test_absolute_steps_follow_the_grid_and_stop_short_of_the_target():
    A, T = torch.zeros(8), torch.zeros(8)
    T[3] = 10.3  # floor(10.3 / 0.5) = 20 points of the 100-point grid
    steps = absolute_steps(A, T, 0.5, 100)
    assert steps.shape == (20, 8)
    gaps = steps.diff(dim=0).norm(dim=-1)
    assert torch.allclose(gaps, torch.full_like(gaps, 0.5 * 100 / 99))
    assert float(steps[-1].norm()) <= 10.3
    assert torch.allclose(steps[:, [0, 1, 2, 4, 5, 6, 7]], torch.zeros(20, 7))
    assert absolute_steps(A, T, 0.5, 50).shape[0] == 10  # same span on a coarser grid
    far = T * 100
    assert absolute_steps(A, far, 0.5, 100).shape[0] == 100  # a far target: all 100 steps


def test_relative_steps_interpolate_between_endpoints():
    A, T = torch.randn(5), torch.randn(5)
    steps = relative_steps(A, T, 11)
    assert torch.allclose(steps[0], A) and torch.allclose(steps[-1], T)
    assert torch.allclose(steps[5], (A + T) / 2, atol=1e-6)


def test_plateau_length_is_the_first_crossing():
    assert plateau_length(np.array([0, 1, 2, 19.9, 20, 30]), 20.0) == (4, False)
    assert plateau_length(np.array([0, 1, 2]), 20.0) == (3, True)


def test_teren_ms_step_ties_go_to_the_last_index():
    """teren's argsort(nan_to_num(slopes))[::-1][0], read with a stable sort: the last tied maximum."""
    rise_first = np.array([0.0, 3.0, 4.0, 4.5])  # s_0 = s_1 = 3
    assert max_slope_step(rise_first) == 0 and max_slope_step(rise_first, ties="last") == 1
    assert max_slope_step(0.5 * np.arange(10.0), ties="last") == 9
    assert max_slope_step(np.linspace(0, 0.5, 100), ties="last") == 99  # the floor still applies
    assert max_slope_step(np.array([0.0, 1.0, np.nan, 1.0, 2.5]), ties="last") == 4  # NaN slopes count 0
    rng = np.random.default_rng(0)
    for _ in range(200):  # integer slopes: many ties
        curve = np.cumsum(rng.integers(0, 4, 12)).astype(float)
        slopes = np.diff(curve)
        slopes = np.r_[slopes[:1], slopes]
        want = np.argsort(np.nan_to_num(slopes), kind="stable")[::-1][0] if (slopes > 0.02).any() else 99
        assert max_slope_step(curve, ties="last") == want


def test_teren_plateau_threshold_and_censored_value():
    curve = np.linspace(0, 15, 30)  # cut short at its target before reaching 20
    assert plateau_on_grid(curve, 20.0, 100, "teren") == (100.0, True)
    assert plateau_on_grid(curve, 20.0, 100, "saeval") == (30.0, True)
    assert plateau_on_grid(curve, 10.0, 100, "teren") == plateau_on_grid(curve, 10.0, 100, "saeval") == (20.0, False)
    assert plateau_on_grid(np.linspace(0, 15, 30), 20.0, 50, "teren") == (100.0, True)  # 100 on any grid


# ------------------------------------------------------------------------------------------ targets
def test_baseline_replaces_each_latent_within_its_density_neighbourhood():
    rng = np.random.default_rng(0)
    F_ = 400
    log10 = np.full(F_, -1.0)
    active = [5, 50, 100]
    for a, level in zip(active, (-2.0, -4.0, -6.0), strict=True):
        log10[a] = level
        log10[a + 1 : a + 11] = level + np.linspace(0.01, 0.1, 10)  # the ten nearest neighbours
    live = np.ones(F_, dtype=bool)
    f = np.zeros(F_)
    f[active] = [3.0, 2.0, 1.0]
    picked = {a: set() for a in active}
    for _ in range(200):
        out = baseline_latents(f, log10, live, 10, rng)
        assert sorted(out[out > 0].tolist()) == [1.0, 2.0, 3.0] and not out[active].any()
        for a, value in zip(active, (3.0, 2.0, 1.0), strict=True):
            idx = int(np.flatnonzero(out == value)[0])
            assert a < idx <= a + 10
            picked[a].add(idx)
    assert all(len(s) == 10 for s in picked.values())  # uniform over the ten: every neighbour gets drawn


def test_baseline_skips_dead_latents():
    log10 = np.array([-2.0, -2.0, -2.0001, -2.1, -3.0, -5.0])
    live = np.array([True, True, False, True, True, True])
    f = np.array([1.0, 0, 0, 0, 0, 0])
    out = baseline_latents(f, log10, live, 1, np.random.default_rng(0))
    assert out[1] == 1.0  # latent 2 is closer in density but dead


# teren's rules (jettjaniak/teren, explorations, experiment_plateaus.ipynb), read literally: torch sorts,
# ``nonzero()`` order, the baseline's in-place updates and its set of 0-d tensors (which never excludes).
def teren_bag_of_features_literal(f, sparsity, top_k):
    feature_acts = torch.tensor(f)
    feature_sparsities = torch.tensor(sparsity)
    selected = set()
    for feat_id in feature_acts.nonzero().ravel():
        act = feature_acts[feat_id].clone()
        _, order = torch.sort(abs(feature_sparsities - feature_sparsities[feat_id]), stable=True)
        allowed = [g for g in order if g != feat_id and g not in selected]
        pick = allowed[:top_k][0]  # top_k = 1: no draw
        selected.add(pick)
        feature_acts[feat_id] = 0
        feature_acts[pick] = act
    return feature_acts.numpy()


def teren_homeschooled_v2_literal(f, sparsity, W, pool, target_cos):
    feature_acts, feature_sparsities = torch.tensor(f), torch.tensor(sparsity)
    active = feature_acts.nonzero().ravel()
    top = feature_acts.argsort(stable=True)[-1]
    spars = abs(feature_sparsities - feature_sparsities[top])
    spars[top] = torch.inf
    cands = spars.argsort(stable=True)[:pool]
    sims = F.cosine_similarity(W[top], W[cands]).double()
    anchor = cands[abs(sims - target_cos).argsort(stable=True)[0]]
    anchor_sims = F.cosine_similarity(W[anchor], W).double()
    top_sims = F.cosine_similarity(W[top], W[active]).double()
    ids, vals = [], []
    for i, f_id in enumerate(active):
        _, order = abs(anchor_sims - top_sims[i]).sort(stable=True)
        for g in order:
            if g in ids:
                continue
            ids.append(g.item())
            vals.append(feature_acts[f_id].item())
            break
    out = torch.zeros(len(f), dtype=torch.float64)
    out[ids] = torch.tensor(vals, dtype=torch.float64)
    return out.numpy(), int(anchor)


def test_teren_neighbours_are_nearest_in_linear_density():
    density = np.array([1e-2, 1e-3, 5e-2, 0.5, 0.9])  # latent 0: 1e-3 is nearer linearly, 5e-2 in log10
    f = np.array([1.0, 0, 0, 0, 0])
    with np.errstate(divide="ignore"):
        log10 = np.log10(density)
    live = np.ones(5, dtype=bool)
    assert np.flatnonzero(baseline_latents(f, log10, live, 1, np.random.default_rng(0))).tolist() == [2]
    assert np.flatnonzero(teren_baseline_latents(f, density, 1, np.random.default_rng(0))).tolist() == [1]


def test_teren_replacements_may_be_dead_or_active_and_repeat():
    rng = np.random.default_rng(0)
    dead = np.array([1e-6, 0.0, 1e-4, 0.3, 0.6])  # latent 1 never fires: the nearest to latent 0 in linear density
    f = np.array([2.0, 0, 0, 0, 0])
    assert teren_baseline_latents(f, dead, 1, rng)[1] == 2.0
    assert baseline_latents(f, np.log10(np.maximum(dead, 1e-12)), dead > 0, 1, rng)[1] == 0.0
    # Two active latents: 0's nearest is the active 1, whose (overwritten) value then moves on to 0: its own
    # value 2.0 is lost, in place as teren's code runs.
    density = np.array([0.10, 0.11, 0.30, 0.31, 0.5, 0.9])
    f = np.array([3.0, 2.0, 0, 0, 0, 0])
    assert teren_baseline_latents(f, density, 1, rng).tolist() == [3.0, 0, 0, 0, 0, 0]
    # Two active latents with the same nearest neighbour both write to it (teren's used-set never excludes).
    density = np.array([0.50, 0.51, 0.52, 0.9, 0.1])
    f = np.array([1.0, 0, 2.0, 0, 0])
    assert teren_baseline_latents(f, density, 1, rng).tolist() == [0, 2.0, 0, 0, 0]
    out = baseline_latents(f, np.log10(density), np.ones(5, dtype=bool), 1, rng)  # saeval: distinct, unused
    assert sorted(out[out > 0].tolist()) == [1.0, 2.0] and not out[[0, 2]].any()


def test_teren_constructions_match_a_literal_reading_of_its_code():
    rng = np.random.default_rng(3)
    F_, D = 120, 16
    W = F.normalize(torch.randn(F_, D, generator=torch.Generator().manual_seed(3)), dim=-1).double()
    for _ in range(20):
        density = rng.permutation(np.r_[np.zeros(1), rng.uniform(1e-5, 0.2, F_ - 1)])  # one dead latent
        f = np.zeros(F_)
        f[rng.choice(F_, 9, replace=False)] = rng.uniform(0.5, 3, 9)
        np.testing.assert_array_equal(teren_baseline_latents(f, density, 1, rng),
                                      teren_bag_of_features_literal(f, density, 1))
        out, anchor = teren_structured_latents(f, density, W, pool=30, anchor_cos=0.1)
        want, want_anchor = teren_homeschooled_v2_literal(f, density, W, 30, 0.1)
        assert anchor == want_anchor
        np.testing.assert_array_equal(out, want)
    # Uniform over the ten nearest in linear density, itself excluded and nothing else (active ones included).
    density = np.linspace(0.0, 0.2, 40)
    f = np.zeros(40)
    f[[20, 21]] = [1.0, 1.0]
    seen = {int(np.flatnonzero(teren_baseline_latents(f, density, 10, rng) == 1.0)[-1]) for _ in range(300)}
    assert seen <= set(range(15, 27)) and {20, 21} & seen  # the ten around each, active ones included


def test_teren_structured_goes_in_index_order_so_an_earlier_latent_can_take_the_anchor():
    D = 8
    basis = torch.eye(D, dtype=torch.float64)
    W = torch.zeros(10, D, dtype=torch.float64)
    top, early, anchor = 5, 2, 7
    W[top] = basis[0]
    W[early] = 0.99 * basis[0] + (1 - 0.99**2) ** 0.5 * basis[1]  # cos(top, early) = 0.99
    W[anchor] = 0.42 * basis[0] + (1 - 0.42**2) ** 0.5 * basis[2]
    for j in (0, 1, 3, 4, 6, 8, 9):
        W[j] = basis[3 + j % 5]
    f = np.zeros(10)
    f[[early, top]] = [1.0, 4.0]
    density = np.full(10, 0.5)
    density[[top, anchor]] = [0.1, 0.1001]  # the anchor is the top latent's nearest neighbour in density
    out, chosen = teren_structured_latents(f, density, W, pool=1, anchor_cos=0.42)
    assert chosen == anchor and out[anchor] == 1.0  # cos(anchor, anchor) = 1 is closest to 0.99: stolen
    mine, mine_anchor = structured_latents(f, np.log10(density), np.ones(10, dtype=bool), W, pool=1, anchor_cos=0.42)
    assert mine_anchor == anchor and mine[anchor] == 4.0  # saeval: the top latent always takes the anchor


def test_structured_picks_the_anchor_and_matches_cosines():
    D, F_ = 256, 600
    gen = torch.Generator().manual_seed(0)
    W = F.normalize(torch.randn(F_, D, generator=gen), dim=-1)  # decoys: |cos| ~ 0.06
    basis = torch.linalg.qr(torch.randn(D, 8, generator=gen))[0].T  # orthonormal e0..e7

    def unit_with_cos(u, cos, other):
        return cos * u + (1 - cos**2) ** 0.5 * other

    top, others, anchor = 0, [1, 2, 3], 10
    W[top] = basis[0]
    target_cos = [0.9, 0.6, 0.3]
    for j, c in zip(others, target_cos, strict=True):
        W[j] = unit_with_cos(basis[0], c, basis[j])
    W[anchor] = unit_with_cos(basis[0], 0.42, basis[4])  # the planted anchor ...
    W[11] = unit_with_cos(basis[0], 0.8, basis[5])  # ... and density-near candidates with other cosines
    W[12] = unit_with_cos(basis[0], 0.1, basis[6])
    planted = [20, 21, 22]  # cos to the anchor equals cos(top, f)
    rest = [basis[1], basis[2], basis[3]]
    anchor_dir = W[anchor]
    for g, c, r in zip(planted, target_cos, rest, strict=True):
        r = F.normalize(r - (r @ anchor_dir) * anchor_dir, dim=0)
        W[g] = unit_with_cos(anchor_dir, c, r)
    log10 = np.full(F_, -6.0)
    log10[[top, anchor, 11, 12]] = [-2.0, -2.01, -2.02, -2.03]
    log10[50:] = -5.0  # everything else is far in density from the top latent
    f = np.zeros(F_)
    f[[top, *others]] = [4.0, 3.0, 2.0, 1.0]
    out, chosen = structured_latents(f, log10, np.ones(F_, dtype=bool), W, pool=3, anchor_cos=0.42)
    assert chosen == anchor and out[anchor] == 4.0
    assert [out[g] for g in planted] == [3.0, 2.0, 1.0]
    assert np.count_nonzero(out) == 4


def test_fit_gaussian_full_rank_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen) @ torch.randn(6, 6, generator=gen) + 3.0
    fit = fit_gaussian(x)
    assert fit.warning is None
    cov = np.cov(x.numpy().T, bias=True)
    assert np.allclose((fit.factor_DD @ fit.factor_DD.T).numpy(), cov, atol=1e-8)
    samples = fit.sample(40000, torch.Generator().manual_seed(1)).double().numpy()
    assert np.allclose(samples.mean(0), x.mean(0).numpy(), atol=0.1)
    assert np.allclose(np.cov(samples.T), cov, rtol=0.1, atol=0.1 * np.abs(cov).max())


def test_fit_gaussian_regularises_a_singular_covariance_and_says_so():
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))  # 5 samples in 12 dims: rank 4
    fit = fit_gaussian(x)
    assert fit.warning is not None and "singular" in fit.warning and "rank 4" in fit.warning
    samples = fit.sample(10, torch.Generator().manual_seed(0))
    assert torch.isfinite(samples).all()


# ------------------------------------------------------------------------------------------ runner
@pytest.mark.parametrize("hook", [HOOK, "blocks.2.hook_resid_pre", "blocks.3.hook_resid_post"])
def test_cached_runner_matches_plain_forward(tiny_host, hook):
    tokens = torch.tensor([[tiny_host.bos_id, 100, 200, 300, 400, 500, 600]])
    base = tiny_host.capture(tokens, [hook])[hook][0, -1]
    acts = base + torch.randn(5, base.shape[0], generator=torch.Generator().manual_seed(0))
    fast, full = LastPositionRunner(tiny_host, hook), LastPositionRunner(tiny_host, hook, fast=False)
    assert fast.fast and not full.fast
    for runner in (fast, full):
        runner.prepare(tokens)
    final_fast, logits_fast = fast.run(acts)
    final_full, logits_full = full.run(acts)
    assert torch.allclose(final_fast, final_full, atol=1e-4, rtol=1e-4)
    assert torch.allclose(logits_fast, logits_full, atol=1e-4, rtol=1e-4)
    # Independently: a plain forward with the last position replaced.
    def replace(a):
        a = a.clone()
        a[:, -1] = acts
        return a

    caps = {fast.read_hook: []}
    logits = tiny_host.forward(tokens.repeat(len(acts), 1), interventions={hook: replace}, captures=caps)[:, -1]
    assert torch.allclose(final_fast, caps[fast.read_hook][0][:, -1], atol=1e-4, rtol=1e-4)
    assert torch.allclose(logits_fast, logits, atol=1e-4, rtol=1e-4)
    assert not LastPositionRunner(tiny_host, "blocks.1.hook_mlp_out").fast  # inside a block: full forwards


def test_curve_values_match_numpy_l2_and_kl(tiny_host):
    hook = "blocks.1.hook_resid_post"
    tokens = torch.tensor([[tiny_host.bos_id, 11, 22, 33, 44]])
    base = tiny_host.capture(tokens, [hook])[hook][0, -1]
    target = base + 3 * torch.randn(base.shape[0], generator=torch.Generator().manual_seed(0))
    runner = LastPositionRunner(tiny_host, hook)
    runner.prepare(tokens)
    steps = relative_steps(base, target, 6)
    l2, kl, _ = curve_values(runner, base[None], [(0, steps[1:])], batch_rows=2)
    # Independent: full forwards with the last position replaced, then NumPy.
    final = f"blocks.{tiny_host.n_layers - 1}.hook_resid_post"
    resid, probs = [], []
    for act in steps:
        caps = {final: []}

        def replace(a, act=act):
            a = a.clone()
            a[:, -1] = act
            return a

        logits = tiny_host.forward(tokens, interventions={hook: replace}, captures=caps)[0, -1]
        logits = logits.double().numpy()
        resid.append(caps[final][0][0, -1].double().numpy())
        p = np.exp(logits - logits.max())
        probs.append(p / p.sum())
    want_l2 = [np.linalg.norm(r - resid[0]) for r in resid]
    want_kl = [np.sum(probs[0] * (np.log(probs[0]) - np.log(q))) for q in probs]
    assert np.allclose(l2[0].numpy(), want_l2, rtol=1e-3, atol=1e-4)
    assert np.allclose(kl[0].numpy(), want_kl, rtol=1e-2, atol=1e-6)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors(tiny_host):
    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
    tiny = SPEC.config("tiny")
    with pytest.raises(SaevalError, match="differs from SAE"):
        run(ctx, random_sae(), SPEC.config("tiny", hook="blocks.2.hook_resid_post"))
    with pytest.raises(SaevalError, match="past the depth"):
        run(ctx, random_sae(hook="blocks.9.hook_resid_post"), tiny)
    with pytest.raises(SaevalError, match="n_steps"):
        run(ctx, random_sae(), SPEC.config("tiny", n_steps=1))
    with pytest.raises(SaevalError, match="live latents"):
        run(ctx, random_sae(d_sae=24, k=4), tiny)
    with pytest.raises(SaevalError, match="d_in"):
        run(ctx, random_sae(d_in=32), tiny)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_runs(tiny_host, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    sae, other = random_sae(), random_sae(seed=1, name="rand-b")
    cfg = SPEC.config("tiny")
    shared_ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
    first = run(shared_ctx, sae, cfg)
    other_shared = run(shared_ctx, other, cfg)  # reuses the first run's prompts and SAE-free curves
    other_fresh = run(EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny"), other, cfg)
    # A core result with planted densities (latents 0..99 dead, the rest live), as the runner hands it over.
    density = [0.0] * 100 + [0.01] * 156
    details = CoreDetails(n_eval_tokens=500, n_density_tokens=1000, latent_density=density,
                          log10_density_histogram={}, max_decoder_cosine=[0.0] * 256)
    core = CoreResult.model_construct(eval="core", details=details)
    with_core = []
    for _ in range(2):
        ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
        ctx.provide(sae, core)
        with_core.append(run(ctx, sae, cfg))
    second, third = with_core
    return first, second, third, out, other_shared, other_fresh


def test_tiny_run_is_deterministic_and_reuses_core_densities(tiny_runs):
    first, second, third, *_ = tiny_runs
    assert first.details.density_source == "corpus pass"
    assert second.details.density_source == "core" and second.details.n_live_latents == 156
    assert second.details.density_tokens == 1000
    assert SPEC.prerequisites(first.config) == ("core",)  # the runner runs core first and hands its result over
    strip = {"created_at", "seconds"}
    assert second.model_dump(exclude=strip) == third.model_dump(exclude=strip)
    d = first.details
    n = first.config.n_samples
    for stats in (d.ms_step_l2, d.ms_step_kl, d.ms_step_l2_relative):
        assert all(len(v) == n and all(0 <= x <= 99 for x in v) for v in stats.per_sample.values())
    assert d.plateau is not None and d.plateau_threshold == pytest.approx(0.1 * d.final_resid_norm_median)
    assert d.step_size == pytest.approx(d.median_real_distance / 100)  # "auto" in the tiny preset


def test_tiny_run_records_departures_and_teren_mode_applies_its_rules(tiny_host, tiny_runs):
    first, *_ = tiny_runs
    assert first.details.reference == "saeval" and len(first.details.departures) == 6
    assert any("linear densities" in x for x in first.details.departures)
    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
    teren = run(ctx, random_sae(), SPEC.config("tiny", reference="teren"))
    d = teren.details
    assert d.reference == "teren" and d.plateau_threshold == 20.0 and "teren" in d.plateau_threshold_derivation
    # The tiny host's final residual norms (~0.3) never reach 20: every plateau is censored and counts 100
    # (saeval's rules count the curve's length on the grid instead).
    assert set(d.plateau_censored_fraction.values()) == {1.0}
    assert all(v == 100.0 for values in d.plateau.per_sample.values() for v in values)
    assert d.departures and "ties" in d.departures[0]


def test_memo_shared_across_saes_changes_nothing(tiny_runs):
    *_, other_shared, other_fresh = tiny_runs
    strip = {"created_at", "seconds"}
    assert other_shared.model_dump(exclude=strip) == other_fresh.model_dump(exclude=strip)


def test_second_sae_prepares_no_prompt(tiny_host, monkeypatch):
    """The prompts' cached prefixes (and the fast-path check), their activations and the density pass's forward
    depend on no SAE: only the first SAE runs them."""
    calls, captures = [], []
    real, real_capture = tiny_host.prefix_last, tiny_host.capture
    monkeypatch.setattr(tiny_host, "prefix_last", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(tiny_host, "capture", lambda *a, **k: captures.append(1) or real_capture(*a, **k))
    cfg = SPEC.config("tiny", plateau=False)
    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
    run(ctx, random_sae(), cfg)
    assert len(calls) == cfg.n_samples + 1  # each base prompt, and the check against a plain forward
    n_captures = len(captures)
    run(ctx, random_sae(seed=1, name="rand-b"), cfg)
    assert len(calls) == cfg.n_samples + 1
    assert len(captures) == n_captures  # the prompts' and the density pass's activations come from the memo
    run(ctx, random_sae(), cfg.model_copy(update={"prompt_len": cfg.prompt_len + 2}))  # other prompts: prepared
    assert len(calls) == 2 * (cfg.n_samples + 1)


def test_synthetic_latents_are_live_unused_and_keep_the_values():
    rng = np.random.default_rng(1)
    F_, D = 300, 32
    W = F.normalize(torch.randn(F_, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    log10 = rng.uniform(-5, -1, F_)
    live = rng.random(F_) < 0.5
    f = np.zeros(F_)
    active = rng.choice(F_, 12, replace=False)
    f[active] = rng.uniform(0.5, 3, 12)
    for out in (baseline_latents(f, log10, live, 10, rng),
                structured_latents(f, log10, live, W, pool=20, anchor_cos=0.42)[0]):
        used = np.flatnonzero(out)
        assert live[used].all() and not np.isin(used, active).any()
        assert np.allclose(np.sort(out[used]), np.sort(f[active]))


def test_report_section_renders(tiny_runs):
    first, _, _, out, *_ = tiny_runs
    path = write_result(out, first)
    html = report([json.loads(path.read_text())])
    assert "MS step (L2) CDF" in html and "plateau" in html and first.sae.name in html


# ------------------------------------------------------------------------------------------ SmolLM2
@pytest.mark.smollm2
def test_smollm2_cached_runner_and_tiny_run(smollm2):
    """On the real model: the cached single-position pass equals a full forward at the demo hook and at
    the paper's early hook, and a tiny run regularises the Gaussian fitted to fewer prompts than d_model."""
    tokens = torch.tensor([[smollm2.bos_id, *smollm2.tokenizer("The state of the union is strong")["input_ids"]]])
    for hook in ("blocks.15.hook_resid_post", "blocks.1.hook_resid_pre"):
        base = smollm2.capture(tokens, [hook])[hook][0, -1]
        acts = base + 0.5 * base.norm() * F.normalize(torch.randn(3, base.shape[0]), dim=-1)
        fast, full = LastPositionRunner(smollm2, hook), LastPositionRunner(smollm2, hook, fast=False)
        fast.prepare(tokens)
        full.prepare(tokens)
        (f1, l1), (f2, l2) = fast.run(acts), full.run(acts)
        assert torch.allclose(f1, f2, rtol=1e-3, atol=1e-2 * float(f2.abs().mean()))
        assert torch.allclose(F.log_softmax(l1, -1), F.log_softmax(l2, -1), atol=1e-3)
    hook = "blocks.15.hook_resid_post"
    sae = random_sae(d_in=smollm2.d_model, d_sae=1024, k=16, hook=hook)
    config = SPEC.config("tiny", n_samples=4, n_steps=6)
    result = run(EvalContext(host=smollm2, hook=hook, corpus="sotu", preset="tiny"), sae, config)
    warnings = " ".join(result.details.warnings)
    assert "singular" in warnings and "cached" not in warnings  # 80 prompts < 576 dims; fast path agreed
    assert result.details.step_size == pytest.approx(result.details.median_real_distance / 100)


def test_sae_free_curves_are_not_shared_across_gaussian_fits(tiny_host):
    """The random targets are drawn from the Gaussian fit: a run with another cov_eps in the same memo gives what
    it gives alone, not the first fit's curves."""
    cfg = SPEC.config("tiny", plateau=False, n_fit=40)  # fewer samples than dimensions: cov_eps floors the fit
    other = cfg.model_copy(update={"cov_eps": 0.5})  # lifts the small eigenvalues: other random targets
    ctx = EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny")
    first = run(ctx, random_sae(), cfg)
    shared = run(ctx, random_sae(), other)
    alone = run(EvalContext(host=tiny_host, hook=HOOK, corpus="sotu", preset="tiny"), random_sae(), other)
    curves = [r.details.examples["random"]["l2"] for r in (first, shared, alone)]  # L2 curves along the steps
    assert curves[1] == curves[2] and curves[0] != curves[2]
