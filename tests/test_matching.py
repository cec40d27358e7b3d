"""Feature matching: known answers, brute-force optimality, dense vs sparse agreement, bad input."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

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
    assert sparse.exact
    assert sorted(zip(sparse.rows.tolist(), sparse.cols.tolist(), strict=True)) == sorted(truth.items())
    assert float(sparse.similarity.sum()) == pytest.approx(float(dense.similarity.sum()), abs=1e-3)


def test_sparse_equals_dense_when_certified_mid_size():
    A, B, truth = planted(n_a=1500, n_b=1600, d=64, shared=1.0, noise=0.5, seed=6)
    dense, sparse = match_saes(A, B, method="dense"), match_saes(A, B, method="sparse", k=8)
    assert sparse.exact and sparse.gap == pytest.approx(0.0, abs=1e-6)
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
def test_lp_matching_is_optimal_and_agrees_with_lapjvsp():
    """The HiGHS matching on a random graph (with unmatched vertices and ties) weighs the brute-force optimum,
    attains its own dual bound, and agrees with the LAPJVsp fallback."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        n_a, n_b = 5, 6
        mask = rng.random((n_a, n_b)) < 0.45
        er, ec = np.nonzero(mask)
        w = np.round(rng.random(len(er)), 1 if trial % 2 else 6)  # coarse weights: many ties
        weight = dict(zip(zip(er.tolist(), ec.tolist(), strict=True), w, strict=True))
        best = 0.0
        for choice in itertools.product(range(-1, n_b), repeat=n_a):  # -1: row unmatched
            used = [c for c in choice if c >= 0]
            if len(used) == len(set(used)) and all((r, c) in weight for r, c in enumerate(choice) if c >= 0):
                best = max(best, sum(weight[(r, c)] for r, c in enumerate(choice) if c >= 0))
        chosen, upper = matching._max_weight_matching(er, ec, w, n_a, n_b)
        assert len(set(er[chosen])) == len(set(ec[chosen])) == len(chosen)
        assert w[chosen].sum() == pytest.approx(best, abs=1e-9) and upper == pytest.approx(best, abs=1e-6)
        chosen_j, _ = matching._lapjvsp_matching(er, ec, w, n_a, n_b)
        assert w[chosen_j].sum() == pytest.approx(best, abs=1e-9)


def test_lapjvsp_fallback_when_the_lp_fails(monkeypatch):
    A, B, truth = planted(n_a=120, n_b=120, shared=1.0, noise=0.3, seed=5)
    fast = match_saes(A, B, method="sparse", k=4)
    monkeypatch.setattr(matching, "linprog", lambda *a, **kw: SimpleNamespace(status=4))
    slow = match_saes(A, B, method="sparse", k=4)
    assert fast.exact and slow.exact
    assert sorted(slow.pairs) == sorted(fast.pairs) and {(r, c) for r, c, _ in slow.pairs} == set(truth.items())


def test_certificate_is_false_when_the_optimum_leaves_the_candidates(monkeypatch):
    """a0 and a1 share their best partner b0, a1's second best b2 is a2's: the optimum pairs a1 with b1, outside
    a1's top-1 list, so the k=1 relaxation cannot certify it; its bound (a1 worth its 2nd cosine, 0.316) exceeds
    the optimum by 0.316 - 0.3."""
    A = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.316], [0.0, 0.0, 1.0]])
    B = torch.eye(3)
    monkeypatch.setattr(matching, "GROW_ROUNDS", 0)
    res = match_saes(A, B, method="sparse", k=1, dense_limit=1)  # completion re-solves a1 alone, among b1
    assert not res.exact
    assert sorted((r, c) for r, c, _ in res.pairs) == [(0, 0), (1, 1), (2, 2)]
    assert res.gap == pytest.approx((0.316 - 0.3) / np.sqrt(0.9 * 0.9 + 0.3 * 0.3 + 0.316 * 0.316), abs=1e-5)
    monkeypatch.setattr(matching, "GROW_ROUNDS", 2)
    monkeypatch.setattr(matching, "GROW_MAX", 1.0)
    grown = match_saes(A, B, method="sparse", k=1, dense_limit=1)  # a1's list grows to every column: certified
    assert grown.exact and grown.gap == pytest.approx(0.0, abs=1e-6)
    assert sorted((r, c) for r, c, _ in grown.pairs) == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize("dense_limit", [8192, 3])
def test_sparse_bounds_hold_on_near_ties(dense_limit):
    """Low-dimensional decoders (many near-ties, small k): the sparse result is one-to-one, never beats the
    dense optimum, is within its reported gap of it, and equals it whenever it claims to be exact. With the
    default dense_limit the completion re-solves the whole problem densely (exact); a tiny one sends it through
    the recursive sparse path instead."""
    n_exact = 0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        A, B = torch.randn(30, 6, generator=g), torch.randn(36, 6, generator=g)
        if seed % 2:
            A, B = B, A  # more SAE-1 than SAE-2 latents
        dense = match_saes(A, B, method="dense")
        best = float(dense.similarity.astype(np.float64).sum())
        for k in (1, 3, 12):
            res = match_saes(A, B, method="sparse", k=k, dense_limit=dense_limit)
            value = float(res.similarity.astype(np.float64).sum())
            assert len(res.rows) == min(len(A), len(B))
            assert len(set(res.rows.tolist())) == len(set(res.cols.tolist())) == len(res.rows)
            assert value <= best + 1e-5 and value + res.gap >= best - 1e-5
            np.testing.assert_allclose(res.best_cos_b, dense.best_cos_b, atol=1e-6)
            if res.exact:
                n_exact += 1
                assert value == pytest.approx(best, abs=1e-5)
    assert n_exact > 0


def test_growing_the_lists_of_unmatched_rows_certifies(monkeypatch):
    """Noisy copies: with k=4 some latents' partners fall outside their lists; the few rows the relaxation leaves
    unmatched get longer lists until it matches every row (dense_limit=100 keeps the completion from re-solving
    the whole problem densely, which would hide the growth)."""
    A, B, _ = planted(n_a=4000, n_b=4000, d=64, shared=1.0, noise=1.3, seed=1)
    with monkeypatch.context() as m:
        m.setattr(matching, "GROW_ROUNDS", 0)
        assert not match_saes(A, B, method="sparse", k=4, dense_limit=100).exact
    res = match_saes(A, B, method="sparse", k=4, dense_limit=100)
    assert res.exact and res.gap == pytest.approx(0.0, abs=1e-6)
    dense = match_saes(A, B, method="dense")
    assert float(res.similarity.astype(np.float64).sum()) == pytest.approx(
        float(dense.similarity.astype(np.float64).sum()), abs=1e-4
    )
    assert res.shared_feature_ratio == dense.shared_feature_ratio
