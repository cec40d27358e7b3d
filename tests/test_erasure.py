"""TPP / SCR: agreement with an independent NumPy re-implementation of SAEBench's procedure on the same
activations, probes and example draws; planted latents found and erased; eval runs, caching, bad input.
(tests/test_saebench_parity.py runs SAEBench's own code against saeval's on the same random stream.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import saeval.evals.scr.pairs as pairs
import saeval.evals.scr.run as scr
import saeval.evals.shift.run as shift
import saeval.evals.tpp.run as tpp
from saeval.analysis import erasure
from saeval.analysis.erasure import ExampleActivations, attribution, split_metrics, summarize, top_n
from saeval.analysis.probes import LinearProbe, ProbeConfig
from saeval.data.cache import lookup
from saeval.data.labeled import ErasureTask
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.scr import SPEC as SCR
from saeval.evals.scr.report import report as scr_report
from saeval.evals.shift import SPEC as SHIFT
from saeval.evals.tpp import SPEC as TPP
from saeval.evals.tpp.config import TPPMetrics
from saeval.evals.tpp.report import report as tpp_report
from saeval.judges import Judgement
from saeval.saes.base import SAEConfig, create_sae
from tests.cold_cache import private_cache  # noqa: F401 (autouse: a cold cache per test)

D, CTX = 16, 12


def random_topk_sae(d_sae: int = 48, k: int = 4, seed: int = 0, d_in: int = D):
    torch.manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, name=f"topk-{seed}"))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.W_dec.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)  # so that encode(0) is not 0 and SAEBench's padding quirk matters
        sae.b_enc.normal_(0, 0.3)
    return sae


def synthetic_examples(labels: list[np.ndarray], seed: int):
    """Per example: ordinary-token activations = the sum of its attributes' directions + noise."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(32, D))
    examples = []
    for attrs in zip(*labels, strict=True):
        n = int(rng.integers(2, CTX - 1))
        mean = sum(dirs[10 * a + v] for a, v in enumerate(attrs))
        acts = mean + rng.normal(scale=1.5, size=(n, D))
        examples.append((torch.tensor(acts, dtype=torch.float32), torch.arange(n)))
    return examples


# ------------------------------------------------------------------------ the NumPy reference (SAEBench)
def np_encode(sae, x):
    W_enc, b_enc, b_dec = (t.detach().double().numpy() for t in (sae.W_enc, sae.b_enc, sae.b_dec))
    pre = np.maximum((x - b_dec) @ W_enc + b_enc, 0)
    k = sae.cfg.k
    keep = np.argsort(-pre, axis=-1, kind="stable")[..., :k]
    f = np.zeros_like(pre)
    np.put_along_axis(f, keep, np.take_along_axis(pre, keep, -1), -1)
    return f


def np_decode(sae, f):
    return f @ sae.W_dec.detach().double().numpy() + sae.b_dec.detach().double().numpy()


def padded(examples):
    """SAEBench's input: [BOS] + tokens + pads to CTX, activations zeroed at BOS and pads."""
    X = np.zeros((len(examples), CTX, D))
    for i, (acts, _) in enumerate(examples):
        X[i, 1 : 1 + len(acts)] = acts.double().numpy()
    return X


def np_pooled_latents(sae, X):
    nonzero = (X.sum(-1) != 0).astype(float)
    f = np_encode(sae, X) * nonzero[..., None]
    return f.sum(1) / nonzero.sum(1)[:, None]


def np_ablated_pooled(sae, X, ablate, quirk: bool):
    """SAEBench ablated_precomputed_activations: decode(f with S zeroed) + (x - decode(f)), summed over every
    position (quirk) or only the ordinary ones, divided by the ordinary count."""
    nonzero = (X.sum(-1) != 0).astype(float)
    f = np_encode(sae, X)
    error = X - np_decode(sae, f)
    f[..., ablate] = 0.0
    modified = np_decode(sae, f) + error
    if not quirk:
        modified = modified * nonzero[..., None]
    return modified.sum(1) / nonzero.sum(1)[:, None]


def np_accuracy(pooled, probe: LinearProbe, pos, neg):
    w, b = probe.w_D.double().numpy(), probe.b
    logits = pooled[np.concatenate([pos, neg])] @ w + b
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(((logits > 0) == labels).mean())


def np_top(effects, n, mode="validation"):
    k = min(n, int((effects != 0).sum()))
    if mode == "saebench" and k:  # SAEBench's torch.topk: its own choice among tied effects
        return torch.topk(torch.tensor(effects, dtype=torch.float32), k).indices.numpy()
    return np.argsort(-effects, kind="stable")[:k]


def np_effects(sae, X, probe, pos, neg, kind):
    pooled = np_pooled_latents(sae, X)
    diff = pooled[pos].mean(0) - pooled[neg].mean(0)
    if kind == "tpp":
        diff = np.maximum(diff, 0)
    eff = diff * (sae.W_dec.detach().double().numpy() @ probe.w_D.double().numpy())
    return np.abs(eff) if kind == "scr" else eff


# ------------------------------------------------------------------------------------------------- TPP
def tpp_world(tmp_path, n_train=24, n_test=12, n_classes=4):
    n = n_classes * (n_train + n_test)
    cls = np.repeat(np.arange(n_classes), n_train + n_test)
    examples = synthetic_examples([cls], seed=1)
    acts = ExampleActivations.from_examples(tmp_path / "acts", examples, CTX, shard_examples=50)
    train, test = {}, {}
    for c in range(n_classes):
        ids = np.flatnonzero(cls == c)
        train[str(c)], test[str(c)] = ids[:n_train].tolist(), ids[n_train:].tolist()
    labels = {str(c): f"c{c}" for c in range(n_classes)}
    task = ErasureTask("synthetic:tpp", [f"t{i}" for i in range(n)], train, test, labels)
    return task, acts, examples


@pytest.mark.parametrize("mode", ["saebench", "validation"])
def test_tpp_matches_numpy_saebench_reference(tmp_path, mode):
    task, acts, examples = tpp_world(tmp_path)
    config = tpp.TPPConfig(n_values=[1, 2, 5, 20], mode=mode, seeds=[7], probe=ProbeConfig(epochs=4))
    draws, fits = tpp.seed_draws(task, acts, config, 7)
    probes = {c: probe for c, (probe, _) in fits.items()}
    sae = random_topk_sae()
    per_seed, _ = tpp.tpp_scores(sae, task, acts, {7: draws}, {7: probes}, config)

    X = padded(examples)
    quirk = mode == "saebench"
    clean_pooled = X.sum(1) / (X.sum(-1) != 0).sum(1)[:, None]
    classes = list(task.train)
    clean = {j: np_accuracy(clean_pooled, probes[j], draws.test[j], draws.clean[j]) for j in classes}
    expected, quirk_changed = {}, False
    for n in config.n_values:
        totals, intended, unintended = [], [], []
        for i in classes:
            pos, neg = draws.attr[i]
            chosen = np_top(np_effects(sae, X, probes[i], pos, neg, "tpp"), n, mode)
            pooled = np_ablated_pooled(sae, X, chosen, quirk)
            quirk_changed |= not np.allclose(pooled, np_ablated_pooled(sae, X, chosen, not quirk))
            drop = {j: clean[j] - np_accuracy(pooled, probes[j], draws.test[j], draws.ablation_negatives(i, n, j))
                    for j in classes}
            un = np.mean([drop[j] for j in classes if j != i])
            intended.append(drop[i])
            unintended.append(un)
            totals.append(drop[i] - un)
        expected[f"tpp_threshold_{n}_total_metric"] = np.mean(totals)
        expected[f"tpp_threshold_{n}_intended_diff_only"] = np.mean(intended)
        expected[f"tpp_threshold_{n}_unintended_diff_only"] = np.mean(unintended)
    assert quirk_changed, "the synthetic SAE must make the padding quirk matter, or the test proves nothing"
    assert set(per_seed[7]) == set(expected)
    for key, value in expected.items():
        assert per_seed[7][key] == pytest.approx(value, abs=1e-4), key
    assert any(abs(v) > 0.01 for v in expected.values())  # not a trivially all-zero comparison


def test_attribution_and_selection_follow_saebench():
    pos, neg = torch.tensor([1.0, 0.0, 2.0, 0.5]), torch.tensor([0.0, 1.0, 2.5, 0.1])
    dot = torch.tensor([2.0, 3.0, -1.0, -4.0])
    assert attribution(pos, neg, dot, "tpp").tolist() == pytest.approx([2.0, 0.0, 0.0, -1.6])
    assert attribution(pos, neg, dot, "scr").tolist() == pytest.approx([2.0, 3.0, 0.5, 1.6])
    # SAEBench: k = min(N, number of non-zero effects), then the k largest of ALL effects, so with fewer
    # positive effects than k a zero-effect latent (lowest index on ties) beats the negative one.
    assert top_n(attribution(pos, neg, dot, "tpp"), 3).tolist() == [0, 1]
    assert top_n(torch.tensor([0.0, 3.0, -1.0, 2.0]), 2).tolist() == [1, 3]
    with pytest.raises(SaevalError, match="larger than"):
        top_n(torch.ones(3), 4)


# ------------------------------------------------------------------------------------------------- SCR
def scr_world(tmp_path, m=16, m_test=10):
    """Quadrants (c1 value, c2 value) with SAEBench's six groups; c2 (gender-like) is the louder signal."""
    rows = []
    for split, size in (("train", m), ("test", m_test)):
        for a in (0, 1):
            for b in (0, 1):
                need = 2 * size if a == b else size
                rows += [(split, a, b)] * need
    c1 = np.array([r[1] for r in rows])
    c2 = np.array([r[2] for r in rows])
    examples = synthetic_examples([c1, c2], seed=2)
    acts = ExampleActivations.from_examples(tmp_path / "acts", examples, CTX)
    groups: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
    for split, size in (("train", m), ("test", m_test)):
        ids = {(a, b): [i for i, r in enumerate(rows) if r == (split, a, b)] for a in (0, 1) for b in (0, 1)}
        pp, pn, np_, nn = ids[(0, 0)], ids[(1, 0)], ids[(0, 1)], ids[(1, 1)]
        groups[split] = {"c2_pos": pp[:size] + pn[:size], "c2_neg": np_[:size] + nn[:size],
                         "c1_pos": pp[:size] + np_[:size], "c1_neg": pn[:size] + nn[:size],
                         "biased_pos": pp[: 2 * size], "biased_neg": nn[: 2 * size]}
    labels = {"c2": "b0 / b1", "c1": "a0 / a1", "biased": "b0_a0 / b1_a1"}
    task = ErasureTask("synthetic:scr", [f"t{i}" for i in range(len(rows))], groups["train"], groups["test"],
                       labels, {"descriptions": {"c1": "attribute a", "c2": "attribute b"}})
    return task, acts, examples, rows


@pytest.mark.parametrize("mode", ["saebench", "validation"])
def test_scr_matches_numpy_saebench_reference(tmp_path, mode):
    task, acts, examples, _ = scr_world(tmp_path)
    config = scr.SCRConfig(n_values=[1, 3, 10, 40], mode=mode, seeds=[5], probe=ProbeConfig(epochs=5))
    probes = pairs.pair_probes(task, acts, config, 5)
    setup = pairs.make_setup(None, task, acts, {5: probes}, saebench=mode == "saebench")
    sae = random_topk_sae(seed=3)
    ctx = EvalContext(host=None, hook="synthetic")
    per_seed, detail = scr.run_pair(ctx, sae, setup, config)

    X = padded(examples)
    clean_pooled = X.sum(1) / (X.sum(-1) != 0).sum(1)[:, None]
    test = {k: np.asarray(v) for k, v in task.test.items()}

    def acc(pooled, probe, group):
        return np_accuracy(pooled, probes[probe][0], test[f"{group}_pos"], test[f"{group}_neg"])

    on_c1, on_c2 = acc(clean_pooled, "biased", "c1"), acc(clean_pooled, "biased", "c2")
    expected = {}
    for d, ablated, measured in ((1, "c2", "c1"), (2, "c1", "c2")):
        pos, neg = task.train[f"{ablated}_pos"], task.train[f"{ablated}_neg"]
        effects = np_effects(sae, X, probes[ablated][0], pos, neg, "scr")
        original, oracle = acc(clean_pooled, "biased", measured), acc(clean_pooled, measured, measured)
        for n in config.n_values:
            chosen = np_top(effects, n, mode)
            changed = acc(np_ablated_pooled(sae, X, chosen, mode == "saebench"), "biased", measured)
            score = 0.0 if oracle - original < 0.001 else (changed - original) / (oracle - original)
            expected[f"scr_dir{d}_threshold_{n}"] = score
            if (d == 1 and on_c1 < on_c2) or (d == 2 and on_c1 > on_c2):
                expected[f"scr_metric_threshold_{n}"] = score
    assert set(per_seed[5]) == set(expected)
    for key, value in expected.items():
        assert per_seed[5][key] == pytest.approx(value, abs=1e-4), key
    assert detail["reported_direction"]["5"] == (1 if on_c1 < on_c2 else 2 if on_c1 > on_c2 else None)


def test_scr_guard_and_direction_rules():
    assert pairs.normalized_gain(0.9, 0.7, 0.7005) == 0.0  # oracle within 0.001 of the biased probe
    assert pairs.normalized_gain(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert pairs.normalized_gain(0.5, 0.6, 1.0) == pytest.approx(-0.25)


# ------------------------------------------------------------------------------------ planted latents
def signed_basis_sae(seed: int = 0):
    """A ReLU SAE with latents +e_i and -e_i of an orthonormal basis: exact reconstruction, and latent 2i
    (2i+1) carries the positive (negative) part of the activation along e_i."""
    torch.manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D))[0].T  # rows e_i
    sae = create_sae(SAEConfig(architecture="relu", d_in=D, d_sae=2 * D, name="signed-basis"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.stack([s * e for e in basis for s in (1.0, -1.0)]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae, basis


def planted_examples(basis, coeffs: np.ndarray, seed: int):
    """Example i: coeffs[i, a] * e_a at every token, plus noise in the directions no attribute uses."""
    rng = np.random.default_rng(seed)
    free = basis[coeffs.shape[1] :].numpy()
    out = []
    for row in coeffs:
        n = int(rng.integers(3, CTX - 1))
        signal = row @ basis[: coeffs.shape[1]].numpy()
        noise = rng.normal(scale=0.8, size=(n, len(free))) @ free
        out.append((torch.tensor(signal + noise, dtype=torch.float32), torch.arange(n)))
    return out


def test_tpp_finds_and_erases_the_planted_class_latents(tmp_path):
    sae, basis = signed_basis_sae()
    n_classes, n_train, n_test = 3, 30, 20
    cls = np.repeat(np.arange(n_classes), n_train + n_test)
    # Class c carries +2 e_c; its negatives carry their own classes' directions.
    examples = planted_examples(basis, 2.0 * np.eye(n_classes)[cls], seed=4)
    acts = ExampleActivations.from_examples(tmp_path / "acts", examples, CTX)
    train = {str(c): np.flatnonzero(cls == c)[:n_train].tolist() for c in range(n_classes)}
    test = {str(c): np.flatnonzero(cls == c)[n_train:].tolist() for c in range(n_classes)}
    task = ErasureTask("planted", ["x"] * len(cls), train, test, {str(c): f"c{c}" for c in range(n_classes)})
    seeds = [0, 1, 2, 3, 4]  # one seed's probes vary a lot on 40 test examples (intended 0.1-0.5)
    config = tpp.TPPConfig(n_values=[1], seeds=seeds, probe=ProbeConfig(epochs=20, lr=0.05))
    draws, probes = {}, {}
    for s in seeds:
        draws[s], fits = tpp.seed_draws(task, acts, config, s)
        probes[s] = {c: probe for c, (probe, _) in fits.items()}
    per_seed, detail = tpp.tpp_scores(sae, task, acts, draws, probes, config)
    for c in range(n_classes):
        assert detail["top_latents"][f"c{c}"][0][0] == 2 * c
    # Erasing class c's latent hurts probe c far more than the other probes (which also read e_c a little).
    intended = np.mean([per_seed[s]["tpp_threshold_1_intended_diff_only"] for s in seeds])
    unintended = np.mean([per_seed[s]["tpp_threshold_1_unintended_diff_only"] for s in seeds])
    assert intended > 0.2 and intended > 2.5 * abs(unintended)


def planted_scr(tmp_path):
    """SCR world on the signed-basis SAE: c1 on e_0 (+-2), c2 on e_1 (+-4, louder, so the biased probe
    leans on it); latents 2 and 3 carry c2, latents 0 and 1 carry c1. (With c1 at +-1 the biased probe, kept
    at epoch 1, reads c1 so weakly that the recovery swings 0.3-0.9 with the seed.)"""
    sae, basis = signed_basis_sae(1)
    task, _, _, rows = scr_world(tmp_path / "layout", m=40, m_test=20)
    sign = np.array([[1.0 if r[1] == 0 else -1.0, 1.0 if r[2] == 0 else -1.0] for r in rows])
    examples = planted_examples(basis, sign * np.array([2.0, 4.0]), seed=5)
    acts = ExampleActivations.from_examples(tmp_path / "acts", examples, CTX)
    config = scr.SCRConfig(seeds=[0], n_values=[2], probe=ProbeConfig(epochs=20, lr=0.05))
    return sae, pairs.make_setup(None, task, acts, {0: pairs.pair_probes(task, acts, config, 0)}, saebench=True)


def test_scr_erasing_the_planted_spurious_latents_recovers_the_biased_probe(tmp_path):
    sae, setup = planted_scr(tmp_path)
    config = scr.SCRConfig(n_values=[2], seeds=[0])
    per_seed, detail = scr.run_pair(EvalContext(host=None, hook="synthetic"), sae, setup, config)
    assert detail["reported_direction"]["0"] == 1  # the biased probe is worse on c1 data: it relies on c2
    assert {f for f, _ in detail["top_latents"]["b0 / b1"][:2]} == {2, 3}  # c2 lives on +-e_1
    assert per_seed[0]["scr_metric_threshold_2"] > 0.8


# ----------------------------------------------------------------------------------------------- SHIFT
class ScriptedJudge:
    name = "scripted"

    def __init__(self, spurious: set[int], failing: set[int] = frozenset(), first_fails: bool = False):
        self.spurious, self.failing, self.first_fails, self.asked = spurious, set(failing), first_fails, []

    def judge(self, evidence, question):
        self.asked.append(question)
        if self.first_fails:
            self.failing.add(evidence[0].latent)
        return [Judgement(latent=e.latent, verdict="failed", error="endpoint down") if e.latent in self.failing
                else Judgement(latent=e.latent, verdict="spurious" if e.latent in self.spurious else "not_spurious")
                for e in evidence]


def test_shift_ablates_exactly_the_latents_judged_spurious(tmp_path, smollm2_tokenizer):
    sae, setup = planted_scr(tmp_path)
    ctx = EvalContext(host=SimpleNamespace(tokenizer=smollm2_tokenizer), hook="synthetic")
    config = shift.SHIFTConfig(n_values=[2, 4], n_candidates=4, n_evidence=3, explainer="none", seeds=[0])
    judge = ScriptedJudge({2, 3})
    per_seed, detail = shift.run_pair(ctx, sae, setup, config, judge, {}, {})
    assert {j["latent"] for j in detail["judgements"]} == {0, 1, 2, 3}  # the biased probe's top four
    assert judge.asked[0].spurious.startswith("attribute b")  # auto: the attribute SCR's direction removes
    assert per_seed[0]["shift_score"] > 0.8 and per_seed[0]["judge_agreement_with_probes"] == 1.0
    scr_rows, _ = scr.run_pair(ctx, sae, setup, scr.SCRConfig(n_values=[2], seeds=[0]))
    assert per_seed[0]["shift_score"] == pytest.approx(scr_rows[0]["scr_dir1_threshold_2"])
    for j in detail["judgements"]:
        assert j["evidence"]["windows"] and "«" in j["evidence"]["windows"][0]
    # Judging the target attribute's latents spurious instead erases the wrong thing.
    wrong, _ = shift.run_pair(ctx, sae, setup, config, ScriptedJudge({0, 1}), {}, {})
    assert wrong[0]["shift_score"] < 0.2
    # A failed judgement is never ablated and, with max_failed_fraction 0, voids the headline score.
    failed, detail = shift.run_pair(ctx, sae, setup, config, ScriptedJudge({2, 3}, failing={2}), {}, {})
    assert "shift_score" not in failed[0] and failed[0]["n_failed_judgements"] == 1
    assert failed[0]["shift_score_partial"] < per_seed[0]["shift_score"]
    assert [j["error"] for j in detail["judgements"] if j["verdict"] == "failed"] == ["endpoint down"]


def test_shift_hands_self_explanations_to_the_judge(tiny_host):
    from saeval.evals.self_explanation.config import TINY_EXPLAIN

    ctx = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post", preset="tiny")
    sae = random_topk_sae(d_sae=64, d_in=tiny_host.d_model)
    seen = []

    class Recording(ScriptedJudge):
        def judge(self, evidence, question):
            seen.extend(evidence)
            return super().judge(evidence, question)

    config = SHIFT.config("tiny", self_explanation=True, self_explanation_config=TINY_EXPLAIN, n_candidates=2,
                          n_values=[2])
    shift.run_pair(ctx, sae, pairs.pair_setups(ctx, config)[0], config, Recording(set()), {}, {})
    assert len(seen) == 2 and all(item.self_explanation is None or item.self_explanation.strip() for item in seen)
    # The explanations went through the run memo, so embedding_score/self_explanation can reuse them.
    memos = [v for k, v in ctx.memo.items() if str(k).startswith("self_explain|")]
    assert len(memos) == 1 and {item.latent for item in seen} <= set(memos[0])


def test_shift_run_reports_failed_judgements_as_null_score(tmp_path, tiny_host, monkeypatch):
    monkeypatch.setattr(shift, "make_judge", lambda spec, host=None: ScriptedJudge(set(), first_fails=True))
    ctx = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post", preset="tiny")
    sae = random_topk_sae(d_sae=64, d_in=tiny_host.d_model)
    result = shift.run(ctx, sae, SHIFT.config("tiny"))
    assert result.metrics.shift_score is None and result.metrics.n_failed_judgements == 1
    assert result.metrics.shift_score_partial is not None
    relaxed = shift.run(ctx, sae, SHIFT.config("tiny", max_failed_fraction=0.5))
    assert relaxed.metrics.shift_score == relaxed.metrics.shift_score_partial


# ------------------------------------------------------------------------- eval runs on a tiny model
def run_and_write(ctx, saes, specs, out) -> list:
    """Each eval's run function on each SAE with the context's preset, results written as the runner does."""
    from saeval.results import write_result

    return [write_result(out, spec.run_fn()(ctx, sae, spec.config(ctx.preset))) for sae in saes for spec in specs]


def test_evals_run_deterministically_cache_activations_and_report(tmp_path, tiny_host, monkeypatch):
    sae_a, sae_b = (random_topk_sae(d_sae=128, seed=s, d_in=tiny_host.d_model) for s in (1, 2))
    forwards, fits = [], []
    capture, train = tiny_host.capture, erasure.train_probe
    monkeypatch.setattr(tiny_host, "capture", lambda *a, **k: forwards.append(1) or capture(*a, **k))
    monkeypatch.setattr(erasure, "train_probe", lambda *a, **k: fits.append(1) or train(*a, **k))
    ctx = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post", preset="tiny")
    paths = run_and_write(ctx, [sae_a, sae_b], [TPP, SCR], tmp_path / "out")
    assert len(paths) == 4
    # The first run filled this test's private cache: forwards, probe fits, and entries on disk.
    acts_dir, probes_dir = tmp_path / "cache" / erasure.ACTS_KIND, tmp_path / "cache" / erasure.PROBES_KIND
    entries = [p for p in acts_dir.iterdir() if p.is_dir()]
    assert forwards and fits and len(entries) == 2 and not any(p.name.endswith(".tmp") for p in entries)
    assert all(lookup(p) == p for p in entries)
    assert list(probes_dir.glob("*.json")) and not list(probes_dir.glob(".*"))
    n_forwards, n_fits = len(forwards), len(fits)
    ctx2 = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post", preset="tiny")
    run_and_write(ctx2, [sae_a], [TPP, SCR], tmp_path / "out2")
    # A fresh context has an empty memo: only the disk cache can spare the forwards and the probe training.
    assert len(forwards) == n_forwards and len(fits) == n_fits
    for name in ("tpp", "scr"):
        first = json.loads((tmp_path / "out" / sae_a.name / f"{name}.json").read_text())
        again = json.loads((tmp_path / "out2" / sae_a.name / f"{name}.json").read_text())
        assert first["metrics"] == again["metrics"] and first["details"]["mode"] == "saebench"
        assert first["preset"] == "tiny" and first["config"]["train_set_size"] == 40
    tpp_result = json.loads((tmp_path / "out" / sae_a.name / "tpp.json").read_text())
    assert tpp_result["metrics"]["tpp_threshold_10_total_metric"] is not None  # in the tiny preset's n_values
    assert tpp_result["metrics"]["tpp_threshold_20_total_metric"] is None  # not computed
    assert tpp_result["details"]["by_n"] == {}
    scr_result = json.loads((tmp_path / "out" / sae_a.name / "scr.json").read_text())
    assert all(scr_result["metrics"][f"scr_dir1_threshold_{n}"] is not None for n in (2, 5, 10))
    for spec, report in ((TPP, tpp_report), (SCR, scr_report)):
        records = [json.loads(p.read_text()) for p in paths if p.name == f"{spec.name}.json"]
        section = report(records)
        assert "class='plot'" in section and "application/json" in section  # a figure, drawn from its JSON
        assert sae_a.name in section and sae_b.name in section
        assert spec.report_fn() is report


def test_metrics_outside_saebench_n_go_to_details_and_seed_std_is_typed():
    runs = {"a": {0: {"tpp_threshold_2_total_metric": 0.2, "tpp_threshold_3_total_metric": 0.3},
                  1: {"tpp_threshold_2_total_metric": 0.4, "tpp_threshold_3_total_metric": 0.1}}}
    flat, per_seed = summarize(runs, [0, 1])
    metrics, by_n = split_metrics(flat, TPPMetrics)
    typed = TPPMetrics(**metrics)
    assert typed.tpp_threshold_2_total_metric == pytest.approx(0.3)
    assert typed.tpp_threshold_2_total_metric_std == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert typed.tpp_threshold_5_total_metric is None and typed.tpp_threshold_2_intended_diff_only is None
    assert set(by_n) == {"tpp_threshold_3_total_metric", "tpp_threshold_3_total_metric_std"}
    assert per_seed["1"]["tpp_threshold_3_total_metric"] == pytest.approx(0.1)
    # Every metric field says what it is (saeval show prints it).
    for cls in (TPPMetrics, SCR.result_cls.model_fields["metrics"].annotation,
                SHIFT.result_cls.model_fields["metrics"].annotation):
        assert all(f.description for f in cls.model_fields.values()), cls


def test_configs_import_no_torch():
    code = ("import sys; import saeval.evals.tpp.config, saeval.evals.scr.config, saeval.evals.shift.config; "
            "import saeval.evals.tpp, saeval.evals.scr, saeval.evals.shift; "
            "heavy = [m for m in ('torch', 'numpy', 'transformers', 'sklearn') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_config_fields_are_described_and_bounded():
    for spec in (TPP, SCR, SHIFT):
        for name, f in spec.config_cls.model_fields.items():
            assert f.description, f"{spec.name}.{name}"
        spec.config("demo"), spec.config("tiny")  # presets keep validating
    for bad in ({"train_set_size": 0}, {"n_values": [0, 2]}, {"validation_fraction": 1.0}, {"seeds": []},
                {"probe": {"lr": 0}}, {"probe": {"lrr": 1e-3}}):
        with pytest.raises(SaevalError, match="tpp"):
            TPP.config(**bad)
    with pytest.raises(SaevalError, match="n_evidence"):
        SHIFT.config("tiny", n_evidence=11)
    with pytest.raises(SaevalError, match="n_candidates"):
        SHIFT.preflight(SHIFT.config("tiny", n_values=[2, 8]))


def test_activation_cache_is_keyed_by_model_content(tmp_path, tiny_host, smollm2_tokenizer, monkeypatch):
    from tests.conftest import make_tiny_llama_host

    texts = ["the cat sat on the mat", "a dog ran far away", "tax policy and trade"]
    hook = "blocks.1.hook_resid_post"
    first = ExampleActivations.build(tiny_host, hook, texts, 8)
    forwards = []
    capture = tiny_host.capture
    monkeypatch.setattr(tiny_host, "capture", lambda *a, **k: forwards.append(1) or capture(*a, **k))
    monkeypatch.setattr(tiny_host, "name", "renamed")  # same weights under another name: same entry
    assert ExampleActivations.build(tiny_host, hook, texts, 8).key == first.key and not forwards
    other = make_tiny_llama_host(smollm2_tokenizer, seed=1)  # same name, other weights: another entry
    assert other.name == "tiny-llama-4x64"
    second = ExampleActivations.build(other, hook, texts, 8)
    assert second.key != first.key and not torch.equal(second.xbar_ED, first.xbar_ED)
    assert first.meta["model_fingerprint"] == tiny_host.fingerprint()


def test_a_failed_build_leaves_nothing_and_foreign_folders_are_refused(tmp_path):
    examples = [(torch.randn(3, D), torch.arange(3)), (torch.zeros(0, D), torch.zeros(0, dtype=torch.long))]
    with pytest.raises(SaevalError, match="no ordinary token"):
        ExampleActivations.from_examples(tmp_path / "bad", examples, CTX)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["bad.lock"]  # no entry, no temp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SaevalError, match="holds other files"):
        ExampleActivations.from_examples(foreign, examples[:1], CTX)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_probe_cache_is_keyed_by_activation_content(tmp_path):
    task, acts, examples = tpp_world(tmp_path)
    specs = tpp.TPPDraws.validation(task, 0, 0.2).specs[:1]
    config = ProbeConfig(epochs=2)
    probe, _ = erasure.fit_probes(acts, specs, config, 0)[specs[0].name]
    again = ExampleActivations.from_examples(tmp_path / "again", examples, CTX)
    assert again.key == acts.key  # same content, same key: the probe comes from the cache
    assert torch.equal(erasure.fit_probes(again, specs, config, 0)[specs[0].name][0].w_D, probe.w_D)
    shifted = ExampleActivations.from_examples(tmp_path / "shifted", [(a + 1.0, t) for a, t in examples], CTX)
    assert shifted.key != acts.key
    assert not torch.equal(erasure.fit_probes(shifted, specs, config, 0)[specs[0].name][0].w_D, probe.w_D)


def test_bad_config_is_a_clear_error(tmp_path, tiny_host):
    ctx = EvalContext(host=tiny_host, hook="blocks.1.hook_resid_post")
    sae = random_topk_sae(d_sae=64, d_in=tiny_host.d_model)
    with pytest.raises(SaevalError, match="n_values"):
        tpp.run(ctx, sae, TPP.config("tiny", n_values=[2, 500]))
    with pytest.raises(SaevalError, match="need two attributes"):
        scr.run(ctx, sae, SCR.config("tiny", datasets=["wordnet"]))
    with pytest.raises(SaevalError, match="scr needs two attributes.*--set scr.datasets='\\[\"sotu\"\\]'"):
        SCR.preflight(SCR.config("tiny", datasets=["wordnet"]))  # caught before any model loads
    with pytest.raises(SaevalError, match="fewer than"):
        tpp.run(ctx, sae, TPP.config("tiny", train_set_size=40_000))
    with pytest.raises(SaevalError, match="n_evidence"):
        shift.run(ctx, sae, SHIFT.config("tiny", n_evidence=50))


# ---------------------------------------------------------------------------------- the real SmolLM2
@pytest.mark.smollm2
def test_offline_scr_set_is_not_degenerate_on_smollm2(smollm2):
    """On SmolLM2 at the demo hook, both attributes of the offline two-attribute set are decodable (oracles
    well above chance) and the perfectly biased probe leans on one of them (unequal accuracies)."""
    config = scr.SCRConfig(datasets=["wordnet-pos"], pairs={"wordnet-pos": [("cognition", "body")]},
                           train_set_size=160, test_set_size=80, ctx_len=24, sink_ratio=10.0, seeds=[0],
                           probe=ProbeConfig(lr=1e-2))
    ctx = EvalContext(host=smollm2, hook="blocks.15.hook_resid_post")
    (setup,) = pairs.pair_setups(ctx, config)
    check = pairs.sanity(setup)["per_seed"][0]
    assert check["oracle_c1"] > 0.7 and check["oracle_c2"] > 0.7
    assert abs(check["biased_on_c1"] - check["biased_on_c2"]) > 0.05
    assert check["biased_on_biased"] > 0.85
