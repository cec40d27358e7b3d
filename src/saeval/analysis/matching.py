"""Feature matching between two SAEs (FaithfulSAE, arXiv 2506.17673; methods.md C2).

Decoder rows are unit-normalised and compared by cosine, C = W_dec1 W_dec2^T, computed in row chunks so the
full F1 x F2 matrix is only materialised when an exact dense assignment is affordable.

- top-1 ratio: fraction of SAE-2 latents whose best cosine to any SAE-1 latent exceeds the threshold (0.7).
- shared feature ratio: Hungarian assignment maximising the summed cosine (scipy linear_sum_assignment),
  then the fraction of matched pairs above the threshold.

Wide SAEs (e.g. two 65k dictionaries) do not fit a dense assignment. There each latent of the smaller SAE keeps
its top-k partners, and since no other partner beats its (k+1)-th cosine, the dense problem relaxes to a
max-weight matching on that sparse candidate graph (see _sparse_assign). That is a linear program with integral
vertices: HiGHS's dual simplex solves it exactly in seconds at 65k latents (scipy's LAPJVsp, kept as the
fallback, scans every column at each step of its shortest-path search and took minutes at 32k), and its duals
are checked as a certificate. When the relaxation matches every latent, the matching is certified optimal for
the dense problem. Otherwise (typical for unshared latents, whose optimal partners lie deeper than top-k) the
result is flagged as not certified, with a bound on how far its summed cosine can be below the optimum; it is
completed by re-solving the unmatched latents and those of the weakest pairs, as many as fit, exactly and densely.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment, linprog
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from saeval.errors import SaevalError

THRESHOLD = 0.7
DENSE_LIMIT = 8192  # exact dense assignment when n_a * n_b <= DENSE_LIMIT**2 (~0.5 GB of float64 costs)
BLOCK = 2**25  # cosine entries per chunk of a chunked pass (128 MB of float32)
GAP_TOL = 1e-6  # summed cosine: the LP's matching is accepted when its dual bound is this close (else LAPJVsp)
GROW, GROW_ROUNDS = 4, 3  # rows the relaxation leaves unmatched get GROW x longer candidate lists, this many times
GROW_MAX = 0.02  # ... while they are at most this fraction of the rows (else each round costs a full LP solve
# and, for unshared latents, only displaces others: certification is out of reach there anyway)


@dataclass
class MatchResult:
    """One-to-one matching of SAE-1 latents (rows) to SAE-2 latents (cols), sorted by similarity (desc)."""

    shared_feature_ratio: float
    top1_ratio: float
    threshold: float
    method: str  # "dense" or "sparse(k=..)"
    exact: bool  # True: the assignment is provably optimal for the full (dense) problem
    rows: np.ndarray  # SAE-1 latent of each matched pair
    cols: np.ndarray  # SAE-2 latent
    similarity: np.ndarray  # cosine of each matched pair
    best_cos_b: np.ndarray  # per SAE-2 latent: best cosine to any SAE-1 latent (top-1 ratio's input)
    n_a: int
    n_b: int
    seconds: float = 0.0
    gap: float = 0.0  # the summed cosine is at most this far below the dense optimum (~0 when exact)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (cosines/top-k, solve, ...)

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        triples = zip(self.rows, self.cols, self.similarity, strict=True)
        return [(int(r), int(c), float(s)) for r, c, s in triples]

    def top(self, n: int) -> list[tuple[int, int, float]]:
        return self.pairs[:n]

    def bottom(self, n: int) -> list[tuple[int, int, float]]:
        return self.pairs[-n:][::-1] if n > 0 else []

    def summary(self, bins: int = 40) -> dict[str, Any]:
        hist, edges = np.histogram(self.similarity, bins=bins, range=(-1.0, 1.0))
        return {
            "shared_feature_ratio": self.shared_feature_ratio,
            "top1_ratio": self.top1_ratio,
            "threshold": self.threshold,
            "method": self.method,
            "exact": self.exact,
            "optimality_gap": self.gap,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "n_pairs": len(self.rows),
            "mean_matched_cosine": float(self.similarity.mean()) if len(self.rows) else 0.0,
            "matched_cosine_histogram": {"counts": hist.tolist(), "edges": edges.tolist()},
            "seconds": self.seconds,
        }


def unit_rows(W_FD: Tensor) -> Tensor:
    return F.normalize(W_FD.detach().float(), dim=-1)


def decoder_of(sae) -> Tensor:
    W = getattr(sae, "W_dec", sae)
    if not isinstance(W, Tensor) or W.ndim != 2:
        raise SaevalError("matching needs SAEs (with W_dec [d_sae, d_in]) or 2-D decoder matrices")
    return W


def cosine_matrix(W_a: Tensor, W_b: Tensor, chunk: int = 4096) -> np.ndarray:
    """Full float32 cosine matrix [n_a, n_b], filled chunk by chunk (no temporary beyond chunk x n_b)."""
    A, B = unit_rows(W_a), unit_rows(W_b)
    out = np.empty((len(A), len(B)), dtype=np.float32)
    for s in range(0, len(A), chunk):
        out[s : s + chunk] = (A[s : s + chunk] @ B.T).cpu().numpy()
    return out


def topk_both_sides(
    W_a: Tensor, W_b: Tensor, k: int, chunk: int | None = None, k_cols: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One chunked pass over C = A B^T: each row's top-k columns and each column's top-``k_cols`` rows.

    Returns (row_val [n_a, k], row_idx, col_val [k_cols, n_b], col_idx); col_val[0] holds each SAE-2 latent's
    best cosine (the top-1 ratio's input). With k_cols=1 only that maximum is kept and col_idx is None: torch's
    max with indices over dim 0 costs ~10x the plain amax, more than the matmul itself."""
    return _topk_pass(unit_rows(W_a), unit_rows(W_b), k, chunk, k_cols)


def _topk_pass(
    A: Tensor, B: Tensor, k: int, chunk: int | None = None, k_cols: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """topk_both_sides on unit rows (no normalised copies: 300 MB at 65k latents)."""
    chunk = chunk or max(1, BLOCK // max(len(B), 1))
    ka, kb = min(k, len(B)), min(k if k_cols is None else k_cols, len(A))
    row_val, row_idx = torch.empty(len(A), ka), torch.empty(len(A), ka, dtype=torch.long)
    col_val = torch.full((kb, len(B)), -torch.inf)
    col_idx = None if kb == 1 else torch.zeros(kb, len(B), dtype=torch.long)
    for s in range(0, len(A), chunk):
        block_CB = A[s : s + chunk] @ B.T
        row_val[s : s + chunk], row_idx[s : s + chunk] = block_CB.topk(ka, dim=1)
        if col_idx is None:
            col_val = torch.maximum(col_val, block_CB.amax(0, keepdim=True))
            continue
        v, i = block_CB.topk(min(kb, len(block_CB)), dim=0)
        col_val, pos = torch.cat([col_val, v]).topk(kb, dim=0)
        col_idx = torch.cat([col_idx, i + s]).gather(0, pos)
    return row_val, row_idx, col_val, col_idx


class Assignment(NamedTuple):
    rows: np.ndarray
    cols: np.ndarray
    sims: np.ndarray  # cosine of each pair
    exact: bool  # provably optimal for the full (dense) problem
    best_b: np.ndarray  # per B row: best cosine to any A row
    best_a: np.ndarray  # per A row: best cosine to any B row
    gap: float  # upper bound on (dense optimum - summed cosine)
    phases: dict[str, float]


def _dense_assign(A: Tensor, B: Tensor) -> Assignment:
    start = time.time()
    A, B = unit_rows(A), unit_rows(B)
    # -cos in C-contiguous float64 is what linear_sum_assignment works on: a float32 input or maximize=True
    # would cost two more n_a x n_b float64 copies (5 GB instead of 2 GB at 16k x 16k).
    cost = np.empty((len(A), len(B)))
    chunk = max(1, BLOCK // max(len(B), 1))
    for s in range(0, len(A), chunk):
        np.negative((A[s : s + chunk] @ B.T).numpy(), out=cost[s : s + chunk])
    cosine = time.time() - start
    r, c = linear_sum_assignment(cost)
    phases = {"cosine": cosine, "solve": time.time() - start - cosine}
    return Assignment(r, c, -cost[r, c], True, -cost.min(0, initial=np.inf), -cost.min(1, initial=np.inf), 0.0, phases)


def _edges(val_RK: Tensor, idx_RK: Tensor, k: int, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Candidate edges (row, col, cosine) of ``rows`` from their sorted top-(k+1) lists, and each row's bound on
    the cosine to any column outside its list (-1 when the list holds every column)."""
    k = min(k, idx_RK.shape[1])
    bound = val_RK[:, k].double().numpy() if val_RK.shape[1] > k else np.full(len(rows), -1.0)
    cos = val_RK[:, :k].reshape(-1).double().numpy()
    return np.repeat(rows, k), idx_RK[:, :k].reshape(-1).numpy(), cos, bound


def _max_weight_matching(er: np.ndarray, ec: np.ndarray, w: np.ndarray, n_a: int, n_b: int) -> tuple[np.ndarray, float]:
    """Maximum-weight (not necessarily perfect) matching of the bipartite graph with edges (er, ec) and weights
    w >= 0: the indices of the edges it uses, and an upper bound on the optimum that it attains (to GAP_TOL)."""
    m = len(er)
    if m == 0:
        return np.zeros(0, dtype=np.int64), 0.0
    # LP: max w.x with each vertex on at most one chosen edge, x >= 0. A bipartite incidence matrix is totally
    # unimodular, so the simplex method's (basic) optimum is a 0/1 matching.
    incidence = sp.csc_matrix(
        (np.ones(2 * m), (np.concatenate([er, n_a + ec]), np.tile(np.arange(m), 2))), shape=(n_a + n_b, m)
    )
    res = linprog(-w, A_ub=incidence, b_ub=np.ones(n_a + n_b), bounds=(0, None), method="highs-ds")
    if res.status == 0:
        chosen = np.flatnonzero(res.x > 0.5)
        integral = bool(np.all(np.abs(res.x - np.round(res.x)) < 1e-6))
        one_to_one = len(np.unique(er[chosen])) == len(np.unique(ec[chosen])) == len(chosen)
        # Weak duality, checked rather than trusted: for any y >= 0 on the vertices, a matching x weighs
        # w.x = sum (y_r + y_c) x + sum (w - y_r - y_c) x <= sum y + sum max(w - y_r - y_c, 0).
        y = np.maximum(-res.ineqlin.marginals, 0.0)
        upper = float(y.sum() + np.maximum(w - y[er] - y[n_a + ec], 0.0).sum())
        if integral and one_to_one and upper - w[chosen].sum() <= GAP_TOL:
            return chosen, upper
    return _lapjvsp_matching(er, ec, w, n_a, n_b)


def _lapjvsp_matching(er: np.ndarray, ec: np.ndarray, w: np.ndarray, n_a: int, n_b: int) -> tuple[np.ndarray, float]:
    """Same as _max_weight_matching, by scipy's LAPJVsp (exact, but slow beyond ~10k vertices; the fallback).

    As a perfect matching on an augmented graph: row i may take its own dummy column (n_b + i), column j its own
    dummy row (n_a + j), and dummy row (n_a + j) may take dummy column (n_b + i) wherever (i, j) is an edge, so
    every matching of the graph extends to a perfect one. With cost K - w on edges and K elsewhere, every perfect
    matching pays K (n_a + n_b) minus its real edges' weight; K = 3 > max w keeps every cost positive."""
    K, m = 3.0, len(er)
    rows = np.concatenate([er, np.arange(n_a), n_a + np.arange(n_b), n_a + ec])
    cols = np.concatenate([ec, n_b + np.arange(n_a), np.arange(n_b), n_b + er])
    vals = np.concatenate([K - w, np.full(n_a + n_b + m, K)])
    match_rows, match_cols = min_weight_full_bipartite_matching(
        sp.csr_matrix((vals, (rows, cols)), shape=(n_a + n_b, n_b + n_a))
    )
    real = (match_rows < n_a) & (match_cols < n_b)
    edge_id = sp.csr_matrix((np.arange(1, m + 1), (er, ec)), shape=(n_a, n_b))
    chosen = np.asarray(edge_id[match_rows[real], match_cols[real]]).ravel() - 1
    return chosen, float(w[chosen].sum())


def _sparse_assign(A: Tensor, B: Tensor, k: int, dense_limit: int) -> Assignment:
    """Exact assignment on the top-k candidate graph, certified optimal for the dense problem when it matches
    every row of the smaller side through candidate edges (see the bound below)."""
    if len(A) > len(B):
        t = _sparse_assign(B, A, k, dense_limit)
        return Assignment(t.cols, t.rows, t.sims, t.exact, t.best_a, t.best_b, t.gap, t.phases)
    n_a, n_b = len(A), len(B)
    A, B = unit_rows(A), unit_rows(B)
    phases = dict.fromkeys(("topk", "solve", "grow", "leftover"), 0.0)
    start = time.time()
    row_val, row_idx, col_val, _ = _topk_pass(A, B, k + 1, k_cols=1)
    best_b, best_a = col_val[0].numpy(), row_val[:, 0].numpy()
    er, ec, cos, bound = _edges(row_val, row_idx, k, np.arange(n_a))
    phases["topk"] = time.time() - start
    # A pair (i, j) outside row i's list has cos_ij <= bound_i. Relaxation: maximise the summed cosine of the
    # matched candidate pairs + bound_i for every row left unmatched. Any dense assignment scores at most this
    # (its pairs outside the lists are worth <= bound_i, unmatched columns 0), so an optimum that leaves no row
    # unmatched is optimal for the dense problem too. Less sum(bound), it is a max-weight matching with weights
    # cos_ij - bound_i >= 0. Rows it leaves unmatched get longer lists (lower bounds), and it is solved again.
    k_rows = k
    for round_ in range(GROW_ROUNDS + 1):
        start = time.time()
        chosen, upper = _max_weight_matching(er, ec, cos - bound[er], n_a, n_b)
        phases["solve"] += time.time() - start
        left_a = np.setdiff1d(np.arange(n_a), er[chosen])
        if not len(left_a) or round_ == GROW_ROUNDS or k_rows >= n_b or len(left_a) > GROW_MAX * n_a:
            break
        start = time.time()
        k_rows = min(k_rows * GROW, n_b)
        val, idx, _, _ = _topk_pass(A[torch.from_numpy(left_a)], B, k_rows + 1, k_cols=1)
        keep = ~np.isin(er, left_a)
        gr, gc, gcos, bound[left_a] = _edges(val, idx, k_rows, left_a)
        er, ec, cos = np.concatenate([er[keep], gr]), np.concatenate([ec[keep], gc]), np.concatenate([cos[keep], gcos])
        phases["grow"] += time.time() - start
    relaxed = upper + float(bound.sum())  # >= the dense optimum
    mr, mc = er[chosen], ec[chosen]
    sims = (A[torch.from_numpy(mr)] * B[torch.from_numpy(mc)]).sum(-1).numpy()
    value = float(cos[chosen].sum())
    if len(left_a):
        # Not certified. Complete the matching: the rows left unmatched (their bound beat every free candidate)
        # and the rows of the weakest matched pairs, as many as fit a dense solve, are re-assigned exactly among
        # their columns and the free ones. That can only raise the summed cosine (the pairs so far, with the
        # unmatched rows among the free columns, are one feasible answer); the worst pairs gain most.
        start = time.time()
        extra = n_b - n_a
        fit = int((np.sqrt(extra**2 + 4.0 * dense_limit**2) - extra) / 2)  # s rows x (s + extra) cols fit dense
        weak = np.argsort(cos[chosen], kind="stable")
        kept = weak[int(np.clip(fit - len(left_a), 0, len(weak))) :]
        rows_s = np.setdiff1d(np.arange(n_a), mr[kept])
        cols_s = np.setdiff1d(np.arange(n_b), mc[kept])
        sub = assign(A[torch.from_numpy(rows_s)], B[torch.from_numpy(cols_s)], dense_limit, 2 * k)
        mr, mc = np.concatenate([mr[kept], rows_s[sub.rows]]), np.concatenate([mc[kept], cols_s[sub.cols]])
        sims = np.concatenate([sims[kept], sub.sims])
        value = float(cos[chosen][kept].sum() + sub.sims.sum())
        phases["leftover"] = time.time() - start
        if not len(kept) and sub.exact:  # the re-solve was the whole problem
            return Assignment(mr, mc, sims, True, best_b, best_a, 0.0, phases)
    return Assignment(mr, mc, sims, not len(left_a), best_b, best_a, max(0.0, relaxed - value), phases)


def assign(A: Tensor, B: Tensor, dense_limit: int = DENSE_LIMIT, k: int = 8) -> Assignment:
    """Max-cosine one-to-one assignment of the rows of A to the rows of B."""
    if len(A) * len(B) <= dense_limit**2:
        return _dense_assign(A, B)
    return _sparse_assign(A, B, k, dense_limit)


def match_saes(
    sae_a, sae_b, threshold: float = THRESHOLD, dense_limit: int = DENSE_LIMIT, k: int = 8, method: str = "auto"
) -> MatchResult:
    """Match the latents of two SAEs by decoder cosine; ``method`` auto | dense | sparse."""
    start = time.time()
    W_a, W_b = decoder_of(sae_a).detach().float().cpu(), decoder_of(sae_b).detach().float().cpu()
    if W_a.shape[1] != W_b.shape[1]:
        raise SaevalError(
            f"cannot match SAEs of different d_in ({W_a.shape[1]} vs {W_b.shape[1]}): "
            "pick two SAEs trained on the same model and hook"
        )
    if method not in ("auto", "dense", "sparse"):
        raise SaevalError(f"unknown matching method {method!r}: use auto, dense or sparse")
    if method == "dense" or (method == "auto" and len(W_a) * len(W_b) <= dense_limit**2):
        res, used = _dense_assign(W_a, W_b), "dense"
    else:
        res, used = _sparse_assign(W_a, W_b, k, dense_limit), f"sparse(k={k})"
    order = np.argsort(-res.sims, kind="stable")
    return MatchResult(
        shared_feature_ratio=float((res.sims > threshold).mean()) if len(res.sims) else 0.0,
        top1_ratio=float((res.best_b > threshold).mean()),
        threshold=threshold,
        method=used,
        exact=res.exact,
        rows=res.rows[order].astype(np.int64),
        cols=res.cols[order].astype(np.int64),
        similarity=res.sims[order].astype(np.float32),
        best_cos_b=res.best_b,
        n_a=len(W_a),
        n_b=len(W_b),
        seconds=round(time.time() - start, 3),
        gap=res.gap,
        phases={name: round(s, 3) for name, s in res.phases.items()},
    )


# ---------------------------------------------------------------------------------------------- cross-data
@torch.inference_mode()
def cross_data_metrics(
    host,
    sae,
    corpus: str,
    n_tokens: int = 65_536,
    ctx_len: int = 128,
    batch_size: int = 8,
    seed: int = 0,
    hook: str | None = None,
    contexts_NL: Tensor | None = None,
) -> dict[str, Any]:
    """FaithfulSAE's cross-dataset metrics of ``sae`` on ``corpus`` (e.g. an SAE trained on State of the Union
    text evaluated on the model's own samples, corpus "self-generated").

    explained_variance is the core eval's (1 - E||x - xhat||^2 / total variance); explained_variance_faithfulsae
    and l2_loss follow FaithfulSAE's scripts (1 - Var(x - xhat) / Var(x) and the mean squared error, both over
    all elements); ce_diff = CE with xhat spliced at the hook - clean CE. Special tokens are excluded.
    ``contexts_NL`` (e.g. a held-out split) replaces the draw from ``corpus``, which then only names them."""
    from saeval.analysis.reconstruction import ReconstructionStats, SpliceLosses, reconstruction_batches
    from saeval.data.corpora import load_contexts

    hook = hook or sae.cfg.hook_name
    if not hook:
        raise SaevalError(f"SAE {sae.name} names no hook: pass hook=")
    contexts = load_contexts(host, corpus, n_tokens, ctx_len, seed) if contexts_NL is None else contexts_NL
    stats = ReconstructionStats(sae.d_in, sae.d_sae)
    losses = SpliceLosses(zero_ablation=False)
    sums = np.zeros(5)  # err, err^2, x, x^2, element count
    for batch in reconstruction_batches(host, sae, hook, contexts, batch_size, stats, losses,
                                        f"cross-data {sae.name} on {corpus}"):
        err = (batch.x_ND - batch.xhat_ND).double()
        x = batch.x_ND.double()
        sums += [float(err.sum()), float(err.pow(2).sum()), float(x.sum()), float(x.pow(2).sum()), err.numel()]
    n_el = sums[4]
    var_err = sums[1] / n_el - (sums[0] / n_el) ** 2
    var_x = sums[3] / n_el - (sums[2] / n_el) ** 2
    summary = stats.summary()
    ce, n_pos = losses.ce_sums, losses.n_positions
    return {
        "corpus": corpus,
        "n_tokens": stats.n,
        "explained_variance": summary["explained_variance"],
        "explained_variance_faithfulsae": 1 - var_err / var_x if var_x > 0 else float("nan"),
        "mse": summary["mse"],
        "l2_loss": sums[1] / n_el,
        "ce_clean": ce[0] / n_pos,
        "ce_sae": ce[1] / n_pos,
        "ce_diff": (ce[1] - ce[0]) / n_pos,
    }
