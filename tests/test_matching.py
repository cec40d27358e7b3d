"""Feature matching: known answers, brute-force optimality, dense vs sparse agreement (to the optimum, certified,
up to 16k latents), bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from saeval.analysis import matching
from saeval.analysis.matching import match_saes, topk_both_sides
from saeval.errors import SaevalError


def planted(n_a=400, n_b=420, d=48, shared=0.6, noise=0.15, seed=0):
    """SAE-2 = a permuted noisy copy of a fraction ``shared`` of SAE-1's decoder rows, the rest random."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n_a, d, generator=g)
    B = torch.randn(n_b, d, generator=g)
    n_s = int(shared * n_a)
    src = torch.randperm(n_a, generator=g)[:n_s]
    dst = torch.randperm(n_b, generator=g)[:n_s]
    B[dst] = A[src] / A[src].norm(dim=1, keepdim=True) + noise * torch.randn(n_s, d, generator=g) / d**0.5
    return A, B, dict(zip(src.tolist(), dst.tolist(), strict=True))


def test_top1_and_hungarian_known_answer():
    """SAE-2 holds two copies of one SAE-1 direction: both have a perfect best match (top-1 2/3), but a
    one-to-one matching can pair only one of them (shared 1/3)."""
    eye = torch.eye(6)
    A = eye[:4]
    B = torch.stack([eye[0], eye[0] * 3.0, eye[4] + 0.2 * eye[1]])
    res = match_saes(A, B, threshold=0.7)
    assert res.top1_ratio == pytest.approx(2 / 3)
    assert res.shared_feature_ratio == pytest.approx(1 / 3)
    assert res.pairs[0][0] == 0 and res.pairs[0][1] in (0, 1) and res.pairs[0][2] == pytest.approx(1.0)
    np.testing.assert_allclose(res.best_cos_b, [1.0, 1.0, 0.2 / np.sqrt(1.04)], atol=1e-6)


def test_dense_assignment_is_optimal_by_brute_force():
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    C = (torch.nn.functional.normalize(A, dim=1) @ torch.nn.functional.normalize(B, dim=1).T).numpy()
    best = max(sum(C[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
    res = match_saes(A, B, method="dense")
    assert float(res.similarity.sum()) == pytest.approx(best, abs=1e-5)
    assert sorted(res.rows.tolist()) == list(range(6)) and sorted(res.cols.tolist()) == list(range(6))


def test_planted_pairs_recovered_and_sparse_agrees_with_dense():
    A, B, truth = planted()
    dense = match_saes(A, B, method="dense")
    sparse = match_saes(A, B, method="sparse", k=6)
    assert dense.method == "dense" and sparse.method.startswith("sparse")
    assert dense.shared_feature_ratio == pytest.approx(len(truth) / len(A))
    above = {(r, c) for r, c, s in dense.pairs if s > 0.7}
    assert above == set(truth.items())
    assert sparse.shared_feature_ratio == dense.shared_feature_ratio
    assert {(r, c) for r, c, s in sparse.pairs if s > 0.7} == above
    assert sparse.top1_ratio == dense.top1_ratio
    assert len(sparse.rows) == len(dense.rows) == len(A)
    assert len(set(sparse.rows.tolist())) == len(set(sparse.cols.tolist())) == len(A)  # one-to-one


def test_sparse_is_certified_and_identical_when_candidates_suffice():
    A, B, truth = planted(n_a=300, n_b=300, shared=1.0, noise=0.3, seed=1)
    dense = match_saes(A, B, method="dense")
    sparse = match_saes(A, B, method="sparse", k=4)
    assert sparse.certified and sparse.exact and sparse.summary()["certified"]
    assert sorted(zip(sparse.rows.tolist(), sparse.cols.tolist(), strict=True)) == sorted(truth.items())
    assert float(sparse.similarity.sum()) == pytest.approx(float(dense.similarity.sum()), abs=1e-3)


def test_sparse_equals_dense_when_certified_mid_size():
    A, B, truth = planted(n_a=1500, n_b=1600, d=64, shared=1.0, noise=0.5, seed=6)
    dense, sparse = match_saes(A, B, method="dense"), match_saes(A, B, method="sparse", k=8)
    assert sparse.certified and sparse.gap == pytest.approx(0.0, abs=1e-6)
    assert sorted(zip(sparse.rows.tolist(), sparse.cols.tolist(), strict=True)) == sorted(
        zip(dense.rows.tolist(), dense.cols.tolist(), strict=True)
    )
    np.testing.assert_allclose(sparse.best_cos_b, dense.best_cos_b, atol=1e-6)


def test_sparse_handles_more_rows_than_columns():
    B, A, truth = planted(n_a=150, n_b=200, seed=2)  # A has 200 rows, B 150
    dense, sparse = match_saes(A, B, method="dense"), match_saes(A, B, method="sparse", k=5)
    assert len(sparse.rows) == len(dense.rows) == 150
    assert sparse.shared_feature_ratio == dense.shared_feature_ratio == pytest.approx(len(truth) / 150)


def test_topk_both_sides_matches_numpy():
    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(50, 8, generator=g), torch.randn(70, 8, generator=g)
    C = (torch.nn.functional.normalize(A, dim=1) @ torch.nn.functional.normalize(B, dim=1).T).numpy()
    row_val, row_idx, col_val, col_idx = topk_both_sides(A, B, 3, chunk=16)
    np.testing.assert_allclose(row_val.numpy(), -np.sort(-C, axis=1)[:, :3], atol=1e-6)
    np.testing.assert_allclose(col_val.numpy(), -np.sort(-C, axis=0)[:3], atol=1e-6)
    assert (np.take_along_axis(C, col_idx.numpy(), 0) == col_val.numpy()).all()
    _, _, col_max, no_idx = topk_both_sides(A, B, 3, chunk=16, k_cols=1)  # the sparse path's form: max only
    assert no_idx is None
    np.testing.assert_allclose(col_max[0].numpy(), C.max(0), atol=1e-6)


def test_bad_inputs():
    with pytest.raises(SaevalError, match="different d_in"):
        match_saes(torch.randn(5, 4), torch.randn(5, 6))
    with pytest.raises(SaevalError, match="method"):
        match_saes(torch.randn(5, 4), torch.randn(5, 4), method="greedy")


# ------------------------------------------------------------------ the sparse path's solvers and certificate
def summed(res) -> float:
    return float(res.similarity.astype(np.float64).sum())


def test_row_perfect_matching_is_optimal_and_its_least_prices_are_a_tight_dual():
    """On random graphs (ties included) LAPJVsp matches every row at the brute-force optimum, and the least
    prices consistent with it are feasible on every edge, tight on the matching (restricted gap 0), and least:
    each positive price is set by a tight edge of another row."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        n_a, n_b = 5, 6
        mask = rng.random((n_a, n_b)) < 0.45
        mask[np.arange(n_a), rng.permutation(n_b)[:n_a]] = True  # some matching of every row exists
        er, ec = np.nonzero(mask)
        w = np.round(rng.random(len(er)) * 2 - 1, 1 if trial % 2 else 6)  # coarse weights: many ties
        weight = dict(zip(zip(er.tolist(), ec.tolist(), strict=True), w, strict=True))
        best = max(
            sum(weight[(r, c)] for r, c in enumerate(p))
            for p in itertools.permutations(range(n_b), n_a)
            if all((r, c) in weight for r, c in enumerate(p))
        )
        match = matching._row_perfect_matching(er, ec, w, n_a, n_b)
        assert len(set(match.tolist())) == n_a and all((r, c) in weight for r, c in enumerate(match.tolist()))
        assert sum(weight[(r, c)] for r, c in enumerate(match.tolist())) == pytest.approx(best, abs=1e-9)
        v = matching._min_prices(er, ec, w, match, n_b)
        u = np.array([weight[(r, c)] for r, c in enumerate(match.tolist())]) - v[match]
        assert (v >= 0).all() and (u[er] + v[ec] >= w - 1e-12).all()
        assert matching._restricted_gap(er, ec, w, match, v) == pytest.approx(0.0, abs=1e-9)
        tight = np.abs(u[er] + v[ec] - w) < 1e-12
        assert all(tight[(ec == j) & (match[er] != j)].any() for j in np.flatnonzero(v > 1e-12))


def test_certificate_is_false_until_the_excluded_pair_is_priced(monkeypatch):
    """a0 and a1 share their best partner b0 and the optimum pairs a1 with b1, outside a1's top-1 list. On that
    list the least prices make b0 cost 0.6 and b2 nothing, so a1 seems to prefer b2 (0.316) to b1 (0.3): after one
    pricing pass the matching is optimal but the bound exceeds it by 0.016. The pass adds a1's pairs within that
    gap; re-solved, the candidates hold every pair an optimum can use, and the result is certified."""
    A = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.316], [0.0, 0.0, 1.0]])
    B = torch.eye(3)
    with monkeypatch.context() as m:
        m.setattr(matching, "MAX_ROUNDS", 1)
        res = match_saes(A, B, method="sparse", k=1)
    assert not res.certified and res.rounds == 1
    assert sorted((r, c) for r, c, _ in res.pairs) == [(0, 0), (1, 1), (2, 2)]
    assert res.gap == pytest.approx((0.316 - 0.3) / np.sqrt(0.9 * 0.9 + 0.3 * 0.3 + 0.316 * 0.316), abs=1e-6)
    res = match_saes(A, B, method="sparse", k=1)
    assert res.certified and res.gap == pytest.approx(0.0, abs=1e-9)
    assert sorted((r, c) for r, c, _ in res.pairs) == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize("fallback_limit", [16384, 1])
def test_sparse_is_optimal_on_near_ties(monkeypatch, fallback_limit):
    """Low-dimensional decoders (many near-ties) and tiny lists: the sparse result is one-to-one, never beats the
    dense optimum, is within its reported gap of it, and is certified at it, with or without the dense fallback."""
    monkeypatch.setattr(matching, "FALLBACK_LIMIT", fallback_limit)
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        A, B = torch.randn(30, 6, generator=g), torch.randn(36, 6, generator=g)
        if seed % 2:
            A, B = B, A  # more SAE-1 than SAE-2 latents
        dense = match_saes(A, B, method="dense")
        best = summed(dense)
        for k in (1, 3, 12):
            res = match_saes(A, B, method="sparse", k=k)
            assert len(res.rows) == min(len(A), len(B))
            assert len(set(res.rows.tolist())) == len(set(res.cols.tolist())) == len(res.rows)
            assert summed(res) <= best + 1e-5 and summed(res) + res.gap >= best - 1e-5
            np.testing.assert_allclose(res.best_cos_b, dense.best_cos_b, atol=1e-6)
            assert res.certified and res.gap <= 1e-6 and summed(res) == pytest.approx(best, abs=1e-5)


def test_stalled_growth_falls_back_to_the_dense_solve(monkeypatch):
    """With no growth allowed (empty edge budget) and every round counted as stalled, rows whose lists may miss
    eligible pairs leave the sparse path the exact dense solve; where that does not fit and the rounds run out,
    the best matching found is flagged not certified, with a gap that bounds its distance to the optimum."""
    A, B, _ = planted(n_a=300, n_b=300, d=8, shared=0.5, noise=0.5, seed=3)
    best = summed(match_saes(A, B, method="dense"))
    monkeypatch.setattr(matching, "EDGE_BUDGET", 0)
    monkeypatch.setattr(matching, "STALL", -1.0)
    res = match_saes(A, B, method="sparse", k=2)
    assert res.certified and res.gap == 0.0 and res.phases["dense"] > 0
    assert summed(res) == pytest.approx(best, rel=1e-6)
    monkeypatch.setattr(matching, "FALLBACK_LIMIT", 1)
    monkeypatch.setattr(matching, "MAX_ROUNDS", 2)
    res = match_saes(A, B, method="sparse", k=2)
    assert not res.certified and res.rounds == 2 and res.phases["dense"] == 0
    assert summed(res) <= best + 1e-5 <= summed(res) + res.gap + 2e-5


@pytest.mark.parametrize(
    "case",
    [
        dict(n_a=4096, n_b=4096, d=64, shared=1.0, noise=1.3, seed=1),  # noisy copies: partners beyond top-k
        dict(n_a=4096, n_b=4200, d=96, shared=0.6, noise=0.15, seed=2),  # planted, the rest random
        dict(n_a=4096, n_b=4096, d=96, shared=0.5, noise=1.0, seed=4),  # matched cosines around the threshold
    ],
    ids=["noisy", "planted", "near-threshold"],
)
def test_sparse_equals_dense_and_is_certified_at_4k(monkeypatch, case):
    monkeypatch.setattr(matching, "FALLBACK_LIMIT", 1)  # the sparse path on its own
    A, B, _ = planted(**case)
    dense, sparse = match_saes(A, B, method="dense"), match_saes(A, B, method="sparse", k=8)
    assert sparse.certified and sparse.gap <= 1e-6 and sparse.phases["dense"] == 0
    assert summed(sparse) == pytest.approx(summed(dense), rel=1e-6)
    assert sparse.shared_feature_ratio == dense.shared_feature_ratio
    assert sparse.top1_ratio == dense.top1_ratio


def test_random_16k_decoders_match_scipy_exactly(monkeypatch):
    """Two independent random 16k x 576 decoders (no shared structure: the hardest case, all near-ties): the
    sparse path, without its dense fallback, reaches scipy's optimum on the dense cosine matrix and certifies it."""
    monkeypatch.setattr(matching, "FALLBACK_LIMIT", 1)
    g = torch.Generator().manual_seed(16384)
    A, B = torch.randn(16384, 576, generator=g), torch.randn(16384, 576, generator=g)
    sparse = match_saes(A, B, method="sparse")
    assert sparse.method.startswith("sparse") and sparse.certified and sparse.gap <= 1e-6
    dense = match_saes(A, B, method="dense")  # scipy linear_sum_assignment, the one dense 16k solve
    assert summed(sparse) == pytest.approx(summed(dense), rel=1e-6)
    assert sparse.shared_feature_ratio == dense.shared_feature_ratio and sparse.top1_ratio == dense.top1_ratio
    assert len(set(sparse.cols.tolist())) == 16384
