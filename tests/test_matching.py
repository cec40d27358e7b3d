"""Feature matching: known answers, brute-force optimality, dense vs sparse agreement, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from saeval.errors import SaevalError
from saeval.evals.matching import match_saes, topk_both_sides


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


def test_bad_inputs():
    with pytest.raises(SaevalError, match="different d_in"):
        match_saes(torch.randn(5, 4), torch.randn(5, 6))
    with pytest.raises(SaevalError, match="method"):
        match_saes(torch.randn(5, 4), torch.randn(5, 4), method="greedy")
