"""Feature matching between two SAEs (FaithfulSAE, arXiv 2506.17673; methods.md C2).

Decoder rows are unit-normalised and compared by cosine, C = W_dec1 W_dec2^T, computed in row chunks so the
full F1 x F2 matrix is only materialised when an exact dense assignment is affordable.

- top-1 ratio: fraction of SAE-2 latents whose best cosine to any SAE-1 latent exceeds the threshold (0.7).
- shared feature ratio: Hungarian assignment maximising the summed cosine (scipy linear_sum_assignment),
  then the fraction of matched pairs above the threshold.

Wide SAEs (e.g. two 65k dictionaries) do not fit a dense assignment: there the assignment is solved exactly on
a sparse candidate graph (each latent's top-k partners on either side) with
scipy.sparse.csgraph.min_weight_full_bipartite_matching. Dummy nodes keep that problem feasible; it maximises
the number of matched pairs first and the summed cosine second, so when the dense optimum uses only candidate
edges both solvers return the same matching. Latents left without a candidate partner are assigned among
themselves afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from saeval.errors import SaevalError

THRESHOLD = 0.7
DENSE_LIMIT = 8192  # exact dense assignment when n_a * n_b <= DENSE_LIMIT**2 (~0.5 GB of float64 costs)


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
    W_a: Tensor, W_b: Tensor, k: int, chunk: int = 2048, k_cols: int | None = None
) -> tuple[Tensor, ...]:
    """One chunked pass over C = A B^T: each row's top-k columns and each column's top-``k_cols`` rows.

    Returns (row_val [n_a, k], row_idx, col_val [k_cols, n_b], col_idx); col_val[0] holds each SAE-2 latent's
    best cosine (the top-1 ratio's input)."""
    A, B = unit_rows(W_a), unit_rows(W_b)
    ka, kb = min(k, len(B)), min(k if k_cols is None else k_cols, len(A))
    row_val, row_idx = torch.empty(len(A), ka), torch.empty(len(A), ka, dtype=torch.long)
    col_val = torch.full((kb, len(B)), -torch.inf)
    col_idx = torch.zeros(kb, len(B), dtype=torch.long)
    for s in range(0, len(A), chunk):
        block = A[s : s + chunk] @ B.T  # [c, n_b]
        row_val[s : s + chunk], row_idx[s : s + chunk] = block.topk(ka, dim=1)
        if kb == 1:
            v, i = block.max(dim=0, keepdim=True)
        else:
            v, i = block.topk(min(kb, len(block)), dim=0)
        merged_v = torch.cat([col_val, v])
        merged_i = torch.cat([col_idx, i + s])
        col_val, pos = merged_v.topk(kb, dim=0)
        col_idx = merged_i.gather(0, pos)
    return row_val, row_idx, col_val, col_idx


# rows, cols, cosines, exact (provably optimal for the full problem), best cosine of each B row (or None)
Assignment = tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray | None]


def _dense_assign(A: Tensor, B: Tensor) -> Assignment:
    C = cosine_matrix(A, B)
    r, c = linear_sum_assignment(C, maximize=True)
    return r, c, C[r, c], True, C.max(0)


def _sparse_assign(A: Tensor, B: Tensor, k: int, dense_limit: int) -> Assignment:
    """Exact assignment on the top-k candidate graph, certified optimal for the dense problem when it matches
    every row of the smaller side through candidate edges (see the bound below)."""
    if len(A) > len(B):
        c, r, s, ok, _ = _sparse_assign(B, A, k, dense_limit)
        return r, c, s, ok, None
    n_a, n_b = len(A), len(B)
    A, B = unit_rows(A), unit_rows(B)
    row_val, row_idx, col_val, _ = topk_both_sides(A, B, k + 1, k_cols=1)
    # A pair (i, j) outside row i's top-k has cos_ij <= bound_i, row i's (k+1)-th cosine.
    bound = row_val[:, -1].double().numpy() if row_val.shape[1] > k else np.full(n_a, -1.0)
    kk = min(k, row_idx.shape[1])
    er = np.repeat(np.arange(n_a), kk)
    ec = row_idx[:, :kk].reshape(-1).numpy()
    cos = row_val[:, :kk].reshape(-1).double().numpy()
    # Relaxation: maximise the sum of matched cosines + bound_i for every row left unmatched. Any dense
    # assignment scores at most this (its pairs outside the candidates are worth <= bound_i, unmatched
    # columns 0), so an optimum that leaves no row unmatched is optimal for the dense problem too. Candidate
    # edges other than the rows' own top-k (e.g. the columns' top-k) would be worth <= bound_i: never needed.
    # As a perfect matching on an augmented graph: row i may take its own dummy column (n_b + i), column j
    # its own dummy row (n_a + j), and dummy row (n_a + j) may take dummy column (n_b + i) wherever (i, j) is
    # an edge, so every matching of the candidate graph extends to a perfect one. With costs K - cos,
    # K - bound_i, K and K, every perfect matching pays K (n_a + n_b) minus the relaxation's value; K = 3
    # keeps every cost positive.
    K, m = 3.0, len(er)
    rows = np.concatenate([er, np.arange(n_a), n_a + np.arange(n_b), n_a + ec])
    cols = np.concatenate([ec, n_b + np.arange(n_a), np.arange(n_b), n_b + er])
    vals = np.concatenate([K - cos, K - bound, np.full(n_b, K), np.full(m, K)])
    graph = sp.csr_matrix((vals, (rows, cols)), shape=(n_a + n_b, n_b + n_a))
    match_rows, match_cols = min_weight_full_bipartite_matching(graph)
    real = (match_rows < n_a) & (match_cols < n_b)
    mr, mc = match_rows[real], match_cols[real]
    sims = (A[torch.from_numpy(mr)] * B[torch.from_numpy(mc)]).sum(-1).numpy()
    best_b = col_val[0].numpy()
    left_a = np.setdiff1d(np.arange(n_a), mr)
    if len(left_a) == 0:
        return mr, mc, sims, True, best_b
    # Rows whose bound beat every free candidate: assign them among the free columns (exact for that
    # sub-problem, but the whole is then not certified). Their cosines are all <= bound_i.
    left_b = np.setdiff1d(np.arange(n_b), mc)
    lr, lc, ls, _, _ = assign(A[torch.from_numpy(left_a)], B[torch.from_numpy(left_b)], dense_limit, 2 * k)
    mr, mc = np.concatenate([mr, left_a[lr]]), np.concatenate([mc, left_b[lc]])
    return mr, mc, np.concatenate([sims, ls]), False, best_b


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
    limit = {"auto": dense_limit, "dense": max(len(W_a), len(W_b)), "sparse": 0}[method]
    rows, cols, sims, exact, best_b = assign(W_a, W_b, limit, k)
    used = "dense" if len(W_a) * len(W_b) <= limit**2 else f"sparse(k={k})"
    if best_b is None:  # more SAE-1 than SAE-2 latents in the sparse path: one more pass for the column max
        best_b = topk_both_sides(W_a, W_b, 1)[2][0].numpy()
    order = np.argsort(-sims, kind="stable")
    return MatchResult(
        shared_feature_ratio=float((sims > threshold).mean()) if len(sims) else 0.0,
        top1_ratio=float((best_b > threshold).mean()),
        threshold=threshold,
        method=used,
        exact=exact,
        rows=rows[order].astype(np.int64),
        cols=cols[order].astype(np.int64),
        similarity=sims[order].astype(np.float32),
        best_cos_b=best_b,
        n_a=len(W_a),
        n_b=len(W_b),
        seconds=round(time.time() - start, 3),
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
    from saeval.evals.core import ReconstructionStats, next_token_stats
    from saeval.progress import track

    hook = hook or sae.cfg.hook_name
    if not hook:
        raise SaevalError(f"SAE {sae.name} names no hook: pass hook=")
    contexts = load_contexts(host, corpus, n_tokens, ctx_len, seed) if contexts_NL is None else contexts_NL
    stats = ReconstructionStats(sae.d_in, sae.d_sae)
    sums = np.zeros(5)  # err, err^2, x, x^2, element count
    ce = np.zeros(3)  # clean, sae, positions
    for s in track(
        range(0, len(contexts), batch_size), f"cross-data {sae.name} on {corpus}", total=-(-len(contexts) // batch_size)
    ):
        tokens = contexts[s : s + batch_size]
        mask = host.ordinary_mask(tokens)
        acts, state = host.prefix(tokens, hook)
        sae.check_input(acts)
        x = acts[mask].float()
        f = sae.encode(x)
        xhat = sae.decode(f)
        stats.update(x, xhat, f)
        err = (x - xhat).double()
        sums += [
            float(err.sum()),
            float(err.pow(2).sum()),
            float(x.double().sum()),
            float(x.double().pow(2).sum()),
            err.numel(),
        ]
        recon = acts.clone()
        recon[mask] = xhat.to(acts.dtype)  # special tokens keep their activation
        logits = host.run_from(state, torch.cat([acts, recon])).float()
        B = len(tokens)
        clean_logp = F.log_softmax(logits[:B, :-1], dim=-1)
        ce_clean, _, n = next_token_stats(logits[:B], clean_logp, tokens, mask)
        ce_sae, _, _ = next_token_stats(logits[B:], clean_logp, tokens, mask)
        ce += [ce_clean, ce_sae, n]
    n_el = sums[4]
    var_err = sums[1] / n_el - (sums[0] / n_el) ** 2
    var_x = sums[3] / n_el - (sums[2] / n_el) ** 2
    summary = stats.summary()
    return {
        "corpus": corpus,
        "n_tokens": stats.n,
        "explained_variance": summary["explained_variance"],
        "explained_variance_faithfulsae": 1 - var_err / var_x if var_x > 0 else float("nan"),
        "mse": summary["mse"],
        "l2_loss": sums[1] / n_el,
        "ce_clean": ce[0] / ce[2],
        "ce_sae": ce[1] / ce[2],
        "ce_diff": (ce[1] - ce[0]) / ce[2],
    }


# FaithfulSAE comparisons the demo can call by name (signatures above: two SAEs; an SAE on another corpus).
PAIRWISE: dict[str, Callable[..., Any]] = {"feature_matching": match_saes, "cross_data": cross_data_metrics}
