"""Feature matching between two SAEs (FaithfulSAE, arXiv 2506.17673; methods.md C2).

Decoder rows are unit-normalised and compared by cosine, C = W_dec1 W_dec2^T, computed in row chunks so the
full F1 x F2 matrix is only materialised when an exact dense assignment is affordable.

- top-1 ratio: fraction of SAE-2 latents whose best cosine to any SAE-1 latent exceeds the threshold (0.7).
- shared feature ratio: Hungarian assignment maximising the summed cosine (scipy linear_sum_assignment),
  then the fraction of matched pairs above the threshold.

Wide SAEs (e.g. two 65k dictionaries) do not fit a dense assignment; there the same optimum comes from column
generation on a sparse candidate graph (see _sparse_assign), starting from each row's top-k. Every row of the
smaller SAE is matched: exactly on the candidates by scipy's LAPJVsp, which with the least column prices v >= 0
consistent with that matching (Bellman-Ford) is the restricted LP's primal and dual optimum. A chunked pass over
all of C, never materialised, then prices every pair: with u_i = max_j (c_ij - v_j), (u, v) is a feasible dual
of the dense problem, so sum u + sum v bounds the optimum, and the gap, sum_i [u_i - (c_iM(i) - v_M(i))] (plus
prices of unmatched columns), is zero exactly when no pair has positive reduced cost. A pair whose slack
u_i + v_j - c_ij exceeds the gap lies in no optimal matching; the pass adds the others, and once every row's
candidates hold all of its eligible pairs the restricted optimum is the dense one. Growth that stalls ends in a
dense solve where one fits, else in a matching flagged not certified, with its gap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from saeval.errors import SaevalError

log = logging.getLogger(__name__)

THRESHOLD = 0.7
DENSE_LIMIT = 8192  # exact dense assignment when n_a * n_b <= DENSE_LIMIT**2 (~0.5 GB of float64 costs)
FALLBACK_LIMIT = 16384  # ... and as the fallback of a stalled sparse solve up to this (2 GB, tens of seconds)
BLOCK = 2**25  # cosine entries per chunk of a chunked pass (128 MB of float32)
GAP_TOL = 1e-6  # summed cosine: a dual bound this close to the matching certifies it
EPS = 1e-6  # slack margin: one pair's float32 cosine differs by ~1e-7 between passes of different chunk shapes
F32_ERR = 1e-6  # bound on the float32 rounding of c_ij - v_j (cosines and prices of magnitude below ~4)
MAX_ROUNDS = 8  # pricing passes over all of C (each costs about one top-k pass)
STALL = 0.5  # a round that does not at least halve the gap has stalled
EDGE_BUDGET = 2**23  # candidates at most after growing the lists of open rows to all their eligible pairs
BF_ITERS = 10_000  # Bellman-Ford rounds at most (each extends the longest paths by one edge; hundreds at 16k)

@dataclass
class MatchResult:
    """One-to-one matching of SAE-1 latents (rows) to SAE-2 latents (cols), sorted by similarity (desc)."""

    shared_feature_ratio: float
    top1_ratio: float
    threshold: float
    method: str  # "dense" or "sparse(k=..)"
    certified: bool  # True: the assignment is provably optimal for the full (dense) problem
    rows: np.ndarray  # SAE-1 latent of each matched pair
    cols: np.ndarray  # SAE-2 latent
    similarity: np.ndarray  # cosine of each matched pair
    best_cos_b: np.ndarray  # per SAE-2 latent: best cosine to any SAE-1 latent (top-1 ratio's input)
    n_a: int
    n_b: int
    seconds: float = 0.0
    gap: float = 0.0  # the summed cosine is at most this far below the dense optimum (0, to float error, if certified)
    rounds: int = 0  # pricing passes of the sparse path
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (cosines/top-k, solve, ...)

    @property
    def exact(self) -> bool:  # the earlier name of ``certified``
        return self.certified

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
            "certified": self.certified,
            "exact": self.certified,
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
    certified: bool  # provably optimal for the full (dense) problem
    best_b: np.ndarray  # per B row: best cosine to any A row
    best_a: np.ndarray  # per A row: best cosine to any B row
    gap: float  # upper bound on (dense optimum - summed cosine)
    phases: dict[str, float]
    rounds: int = 0


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


# ------------------------------------------------------------------------------- sparse: column generation
def _row_perfect_matching(er: np.ndarray, ec: np.ndarray, w: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """Max-weight matching of every row (n_a <= n_b) on the edges (er, ec) with weights w, which must admit one:
    the column of each row. scipy's LAPJVsp is exact and, on these graphs, several times faster than HiGHS on the
    same LP; its duals are not exposed, hence _min_prices. Costs 3 - w > 0 keep every edge explicit."""
    rows, cols = min_weight_full_bipartite_matching(sp.csr_matrix((3.0 - w, (er, ec)), shape=(n_a, n_b)))
    match = np.empty(n_a, dtype=np.int64)
    match[rows] = cols
    return match


def _min_prices(er: np.ndarray, ec: np.ndarray, w: np.ndarray, match: np.ndarray, n_b: int) -> np.ndarray:
    """The least column prices v >= 0 that, with u_i = w_iM(i) - v_M(i), are a feasible dual on the edges (sorted
    by row): v_j = max(0, max over edges (i, j) of v_M(i) + w_ij - w_iM(i)), longest paths by Bellman-Ford over
    the rows whose matched column changed. Finite since M is optimal on the edges (no alternating cycle gains);
    the iteration cap only guards against float creep, and any v >= 0 still gives a valid bound."""
    n_a = len(match)
    mine = match[er] == ec
    own = np.zeros(n_a)
    own[er[mine]] = w[mine]
    gain = w - own[er]  # along the arc M(i) -> j
    row_of = np.full(n_b, -1)
    row_of[match] = np.arange(n_a)
    ptr = np.searchsorted(er, np.arange(n_a + 1))
    v, rows = np.zeros(n_b), np.arange(n_a)
    for _ in range(BF_ITERS):
        lens = ptr[rows + 1] - ptr[rows]
        edge = np.repeat(ptr[rows] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        new = v.copy()
        np.maximum.at(new, ec[edge], v[match[er[edge]]] + gain[edge])
        rows = row_of[np.flatnonzero(new > v + 1e-12)]
        v = new
        rows = rows[rows >= 0]
        if not len(rows):
            break
    return v


class _Prices(NamedTuple):
    best: np.ndarray  # per row: max_j (c_ij - v_j), the dual u_i that makes (u, v) feasible
    own: np.ndarray  # per row: c_iM(i) - v_M(i)
    idx: np.ndarray  # [rows, m + 1] the columns of the m + 1 largest c_ij - v_j
    cos: np.ndarray  # [rows, m + 1] their cosines
    beyond: np.ndarray  # per row: bound on c_ij - v_j of the other columns (-inf when the list holds them all)


def _price(A: Tensor, B: Tensor, v_B: np.ndarray, match: np.ndarray, m: int) -> _Prices:
    """One chunked pass over C = A B^T, each row's pairs ranked by c_ij - v_j in float32; best and own are then
    recomputed in float64 from the same cosines (so rows whose matched column is their best add nothing)."""
    n_a, n_b = len(A), len(B)
    m1 = min(m + 1, n_b)
    v32, v64, match_t = torch.from_numpy(v_B.astype(np.float32)), torch.from_numpy(v_B), torch.from_numpy(match)
    idx, cos = torch.empty(n_a, m1, dtype=torch.long), torch.empty(n_a, m1)
    own_cos, last, exact = torch.empty(n_a), torch.empty(n_a), torch.full((n_a,), -torch.inf, dtype=torch.float64)
    chunk = max(1, BLOCK // max(n_b, 1))
    for s in range(0, n_a, chunk):
        block_CB = A[s : s + chunk] @ B.T
        val, idx[s : s + chunk] = (block_CB - v32).topk(m1, dim=1)
        last[s : s + chunk] = val[:, -1]
        cos[s : s + chunk] = block_CB.gather(1, idx[s : s + chunk])
        own_cos[s : s + chunk] = block_CB.gather(1, match_t[s : s + chunk, None])[:, 0]
        # Rows tied across their whole list (min prices tie a row with every column it prices): their best in
        # float64 over all columns, so that the bound need not allow for float32 error beyond the list.
        tied = torch.nonzero(val[:, -1] >= val[:, 0] - F32_ERR)[:, 0]
        if len(tied) and m1 < n_b:
            exact[s + tied] = (block_CB[tied].double() - v64).amax(1)
    idx_np, cos_np = idx.numpy(), cos.double().numpy()
    own = own_cos.double().numpy() - v_B[match]
    best = np.maximum((cos_np - v_B[idx_np]).max(1), own)
    # Columns outside the list rank below its last pair in float32, so within F32_ERR of it in float64.
    beyond = last.double().numpy() + F32_ERR if m1 < n_b else np.full(n_a, -np.inf)
    exact_np = exact.numpy()
    tied = np.isfinite(exact_np)
    best = np.where(tied, np.maximum(best, exact_np), np.maximum(best, np.where(beyond >= best, beyond, -np.inf)))
    return _Prices(best, own, idx_np, cos_np, np.where(tied, best, beyond))


def _eligible(A: Tensor, B: Tensor, v_B: np.ndarray, floor: np.ndarray, rows: np.ndarray, budget: int):
    """Every pair (i, j) of ``rows`` with c_ij - v_j >= floor_i (to float32 error), as edges (row, col, cosine), by
    one chunked pass over those rows; None as soon as they would exceed ``budget`` at the rate so far."""
    v32 = torch.from_numpy(v_B.astype(np.float32))
    floor32 = torch.from_numpy((floor - F32_ERR).astype(np.float32))
    out, total = [], 0
    chunk = max(1, BLOCK // max(len(B), 1))
    for s in range(0, len(rows), chunk):
        r = torch.from_numpy(rows[s : s + chunk])
        block_CB = A[r] @ B.T
        i, j = ((block_CB - v32) >= floor32[r, None]).nonzero(as_tuple=True)
        total += len(i)
        if total * len(rows) > budget * min(s + chunk, len(rows)):
            return None
        out.append((r[i].numpy(), j.numpy(), block_CB[i, j].double().numpy()))
    return tuple(np.concatenate(x) for x in zip(*out, strict=True))


def _unique_edges(er: np.ndarray, ec: np.ndarray, w: np.ndarray, n_b: int) -> tuple[np.ndarray, ...]:
    """Edges without repeats, sorted by row (then column); a repeat keeps its first cosine."""
    _, first = np.unique(er * n_b + ec, return_index=True)
    return er[first], ec[first], w[first]


def _restricted_gap(er: np.ndarray, ec: np.ndarray, w: np.ndarray, match: np.ndarray, v: np.ndarray) -> float:
    """Dual bound minus value of the matching, as if the edges were the whole problem."""
    reduced = w - v[ec]
    best = np.full(len(match), -np.inf)
    np.maximum.at(best, er, reduced)
    mine = match[er] == ec
    unmatched = np.setdiff1d(np.arange(len(v)), match)
    return float(best.sum() - reduced[mine].sum() + v[unmatched].sum())


def _sparse_assign(A: Tensor, B: Tensor, k: int, fallback_limit: int = FALLBACK_LIMIT) -> Assignment:
    """The dense optimum by column generation over a sparse candidate graph, certified by the duals (see the
    module docstring); when growth stalls, a dense solve if n_a * n_b <= fallback_limit**2, else the best matching
    found with its (tight) gap bound, flagged not certified."""
    if len(A) > len(B):
        t = _sparse_assign(B, A, k, fallback_limit)
        return Assignment(t.cols, t.rows, t.sims, t.certified, t.best_a, t.best_b, t.gap, t.phases, t.rounds)
    n_a, n_b = len(A), len(B)
    A, B = unit_rows(A), unit_rows(B)
    phases = dict.fromkeys(("topk", "solve", "price", "grow", "dense"), 0.0)
    start = time.time()
    row_val, row_idx, col_val, _ = _topk_pass(A, B, k, k_cols=1)
    best_b, best_a = col_val[0].numpy(), row_val[:, 0].numpy()
    # Each row's top-k, plus the pairs (i, i) so that the candidates hold a matching of every row.
    diag = np.arange(n_a)
    er = np.concatenate([np.repeat(diag, row_idx.shape[1]), diag])
    ec = np.concatenate([row_idx.reshape(-1).numpy(), diag])
    w = np.concatenate([row_val.reshape(-1).double().numpy(), (A * B[:n_a]).sum(-1).double().numpy()])
    er, ec, w = _unique_edges(er, ec, w, n_b)
    phases["topk"] = time.time() - start

    def solve() -> tuple[np.ndarray, np.ndarray]:
        start = time.time()
        match = _row_perfect_matching(er, ec, w, n_a, n_b)
        v = _min_prices(er, ec, w, match, n_b)
        phases["solve"] += time.time() - start
        return match, v

    def finish(match: np.ndarray, certified: bool, gap: float, rounds: int) -> Assignment:
        # The candidates' cosines, from chunked matmuls like the dense path's (so a pair at the threshold falls on
        # the same side of it), rather than recomputed pair by pair.
        mine = match[er] == ec
        sims = np.empty(n_a, dtype=np.float32)
        sims[er[mine]] = w[mine]
        return Assignment(diag, match, sims, certified, best_b, best_a, max(gap, 0.0), phases, rounds)

    match, v = solve()
    gap_prev = np.inf
    for round_ in range(1, MAX_ROUNDS + 1):
        start = time.time()
        p = _price(A, B, v, match, k)
        unmatched = np.setdiff1d(np.arange(n_b), match)
        gap = float((p.best - p.own).sum() + v[unmatched].sum())  # dual objective - summed cosine of M
        phases["price"] += time.time() - start
        if gap <= GAP_TOL or round_ == MAX_ROUNDS:
            return finish(match, gap <= GAP_TOL, gap, round_)
        # A pair of slack best_i - (c_ij - v_j) > gap is in no optimal matching: drop such candidates, add the
        # priced pairs that are not. A row whose priced list ends above that floor may have more beyond it.
        floor = p.best - gap - EPS
        keep = (w - v[ec] >= floor[er]) | (match[er] == ec)
        new = (p.cos - v[p.idx] >= floor[:, None]).reshape(-1)
        er = np.concatenate([er[keep], np.repeat(diag, p.idx.shape[1])[new]])
        ec = np.concatenate([ec[keep], p.idx.reshape(-1)[new]])
        w = np.concatenate([w[keep], p.cos.reshape(-1)[new]])
        open_rows = np.flatnonzero(p.beyond >= floor)
        stalled = gap > STALL * gap_prev
        log.info("matching %dx%d round %d: gap %.3g, %d candidates, %d rows open", n_a, n_b, round_, gap, len(er),
                 len(open_rows))
        if len(open_rows):  # one pass over those rows, that ends the search if their eligible pairs fit
            start = time.time()
            more = _eligible(A, B, v, floor, open_rows, EDGE_BUDGET - len(er))
            if more is not None:
                er, ec, w = np.concatenate([er, more[0]]), np.concatenate([ec, more[1]]), np.concatenate([w, more[2]])
                open_rows = open_rows[:0]
            phases["grow"] += time.time() - start
        if len(open_rows) and stalled and n_a * n_b <= fallback_limit**2:
            start = time.time()
            dense = _dense_assign(A, B)
            phases["dense"] = time.time() - start
            return Assignment(dense.rows, dense.cols, dense.sims, True, best_b, best_a, 0.0, phases, round_)
        er, ec, w = _unique_edges(er, ec, w, n_b)
        match, v = solve()
        if not len(open_rows):
            # The candidates hold every pair that can be in an optimal matching: the restricted optimum is the
            # dense one, to the float error of its own dual bound.
            return finish(match, True, _restricted_gap(er, ec, w, match, v), round_)
        gap_prev = gap
    raise AssertionError("unreachable")


def assign(A: Tensor, B: Tensor, dense_limit: int = DENSE_LIMIT, k: int = 32) -> Assignment:
    """Max-cosine one-to-one assignment of the rows of A to the rows of B."""
    if len(A) * len(B) <= dense_limit**2:
        return _dense_assign(A, B)
    return _sparse_assign(A, B, k)


def match_saes(
    sae_a, sae_b, threshold: float = THRESHOLD, dense_limit: int = DENSE_LIMIT, k: int = 32, method: str = "auto"
) -> MatchResult:
    """Match the latents of two SAEs by decoder cosine; ``method`` auto | dense | sparse. Both paths return the
    optimal assignment; the sparse one says whether its duals proved it (``certified``, with ``gap`` 0) and else
    bounds its distance to the optimum by ``gap``. ``k``: the sparse path's candidates per row to start from and
    priced per round; with fewer, unshared latents find too few free partners among them, the poor pairs they are
    forced onto inflate the first prices, and each extra pricing round is another pass over all cosines."""
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
        res, used = _sparse_assign(W_a, W_b, k, FALLBACK_LIMIT), f"sparse(k={k})"
    order = np.argsort(-res.sims, kind="stable")
    return MatchResult(
        shared_feature_ratio=float((res.sims > threshold).mean()) if len(res.sims) else 0.0,
        top1_ratio=float((res.best_b > threshold).mean()),
        threshold=threshold,
        method=used,
        certified=res.certified,
        rows=res.rows[order].astype(np.int64),
        cols=res.cols[order].astype(np.int64),
        similarity=res.sims[order].astype(np.float32),
        best_cos_b=res.best_b,
        n_a=len(W_a),
        n_b=len(W_b),
        seconds=round(time.time() - start, 3),
        gap=res.gap,
        rounds=res.rounds,
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
    from saeval.data.corpora import load_contexts

    hook = hook or sae.cfg.hook_name
    if not hook:
        raise SaevalError(f"SAE {sae.name} names no hook: pass hook=")
    contexts = load_contexts(host, corpus, n_tokens, ctx_len, seed) if contexts_NL is None else contexts_NL
    return cross_data_table(host, [sae], corpus, hook, contexts, batch_size)[0]


@torch.inference_mode()
def cross_data_table(host, saes: list, corpus: str, hook: str, contexts_NL: Tensor,
                     batch_size: int = 8) -> list[dict[str, Any]]:
    """cross_data_metrics of several SAEs at one hook on the same contexts: the model runs to the hook and on to
    its clean logits once per batch for all of them; each SAE adds its encode/decode and one spliced run."""
    from saeval.analysis.reconstruction import ReconstructionStats, SpliceLosses, reconstruction_batches

    stats = [ReconstructionStats(sae.d_in, sae.d_sae) for sae in saes]
    losses = [SpliceLosses(kl=False) for _ in saes]  # the table reports CE, not KL
    sums = np.zeros((len(saes), 5))  # per SAE: err, err^2, x, x^2, element count
    description = f"cross-data {', '.join(sae.name for sae in saes)} on {corpus}"
    for batch in reconstruction_batches(host, saes, hook, contexts_NL, batch_size, stats, losses, description):
        for i, rec in enumerate(batch):
            err = (rec.x_ND - rec.xhat_ND).double()
            x = rec.x_ND.double()
            sums[i] += [float(err.sum()), float(err.pow(2).sum()), float(x.sum()), float(x.pow(2).sum()), err.numel()]
    return [_cross_data_row(corpus, st, loss, row) for st, loss, row in zip(stats, losses, sums, strict=True)]


def _cross_data_row(corpus: str, stats, losses, sums: np.ndarray) -> dict[str, Any]:
    n_el = sums[4]
    var_err = sums[1] / n_el - (sums[0] / n_el) ** 2
    var_x = sums[3] / n_el - (sums[2] / n_el) ** 2
    ce, n_pos = losses.ce_sums, losses.n_positions
    summary = stats.summary()
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
