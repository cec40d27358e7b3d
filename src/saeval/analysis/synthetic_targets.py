"""Targets for the synthetic-activations eval (Giglemiani et al. 2024; shared spec methods.md section D).

Latent log-densities (one corpus pass, or the core eval's), the Gaussian fitted to real activations, and the
two synthetic constructions built from a base activation's active latents: the "bag of latents" baseline and
the cosine-structured variant, each in saeval's rules and in teren's (jettjaniak/teren, branch explorations,
notebooks/experiment_plateaus.ipynb: synthetic_perturbation_bag_of_features and
synthetic_perturbation_homeschooled_v2) as its code runs:

- density neighbours: saeval compares log10 densities; teren linear ones (10 ** log sparsity), where every
  rare latent's nearest neighbours are the dead and near-dead ones (density ~ 0);
- replacements: saeval draws among unused live latents, never another active one; teren among all latents
  but the replaced one, dead and active included;
- order: saeval replaces the largest latents first (the top one by the anchor); teren in ascending latent
  index (``nonzero()``), the top latent included, so an earlier latent may take the anchor;
- teren's baseline rewrites the latent vector in place (a replacement that is an active latent processed
  later carries the earlier value on), and its set of used replacements holds 0-d tensors, which hash by
  identity, so it never excludes anything: replacements can repeat (the later value wins). Its structured
  variant keeps a list of ints, which does exclude used ones.

Ties in teren's (unstable) sorts are broken here by latent index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.analysis.windows import shared_host
from saeval.data.activations import stream_activations
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.progress import track


@dataclass
class LatentDensity:
    log10_F: np.ndarray  # log10 firing frequency; -inf where the latent never fired
    live_F: np.ndarray  # bool: log10 density above the dead threshold
    source: str  # "core" (reused) or "corpus pass"
    n_tokens: int

    @property
    def n_live(self) -> int:
        return int(self.live_F.sum())

    def linear(self) -> np.ndarray:
        """Firing frequencies (0 where never seen): teren's density scale."""
        return np.power(10.0, self.log10_F)

    def reference_log10(self) -> np.ndarray:
        """log10 densities with never-seen latents put just below the resolution of the pass (half a firing),
        so that a base latent unseen in the density pass still has a density to match against."""
        floor = math.log10(0.5 / max(self.n_tokens, 1))
        return np.where(np.isfinite(self.log10_F), self.log10_F, floor)


def latent_density(ctx, sae, hook: str, n_tokens: int, ctx_len: int, batch_size: int,
                   dead_log10: float) -> LatentDensity:
    """Per-latent firing frequency (encode > 0): the core eval's when this run has it for this SAE
    (``ctx.requirement``), else one corpus pass (its activations kept in the run's memo for the next SAE at the
    same hook when small)."""
    core = ctx.requirement(sae, "core")
    density = None
    if core is not None and len(core.details.latent_density) == sae.d_sae:
        density = torch.tensor(core.details.latent_density, dtype=torch.float64)
        n_seen = int(core.details.n_density_tokens)
        source = "core"
    if density is None:
        counts, n_seen = _count_firings(ctx, sae, hook, n_tokens, ctx_len, batch_size)
        density = counts / max(n_seen, 1)
        source = "corpus pass"
    with np.errstate(divide="ignore"):
        log10 = np.log10(density.numpy())
    return LatentDensity(log10, log10 > dead_log10, source, n_seen)


@torch.inference_mode()
def _count_firings(ctx, sae, hook: str, n_tokens: int, ctx_len: int, batch_size: int) -> tuple[Tensor, int]:
    """Firing counts over the ordinary tokens of ``n_tokens`` corpus tokens; the forward to the hook is the same
    for every SAE at the hook, so it goes through the run's memo (windows.shared_host) when small."""
    host = ctx.host
    contexts = load_contexts(host, ctx.corpus, n_tokens, ctx_len, ctx.seed)
    counts = torch.zeros(sae.d_sae, dtype=torch.float64)
    n_seen = 0
    n_batches = -(-len(contexts) // batch_size)
    for batch in track(stream_activations(shared_host(host, hook, contexts, ctx.memo), hook, contexts, batch_size),
                       f"synthetic {sae.name}: latent density", total=n_batches):
        f = sae.encode(batch.flat().to(sae.W_enc.device))
        counts += (f > 0).sum(0).double().cpu()
        n_seen += len(f)
    return counts, n_seen


def check_live(density: LatentDensity, sae_name: str, needed: int) -> None:
    if density.n_live < needed:
        raise SaevalError(
            f"SAE {sae_name} has only {density.n_live} live latents (log10 density above the dead threshold "
            f"over {density.n_tokens} tokens, source: {density.source}); the synthetic targets need at least "
            f"{needed}: use an SAE with more live latents or raise n_density_tokens"
        )


# ---------------------------------------------------------------------------------------------- Gaussian
@dataclass
class GaussianFit:
    mean_D: Tensor
    factor_DD: Tensor  # x = mean + z @ factor.T with z ~ N(0, I) has the fitted covariance
    warning: str | None = None

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.mean_D.shape[0], generator=generator, dtype=torch.float64)
        return (self.mean_D + z @ self.factor_DD.T).float()


def fit_gaussian(acts_ND: Tensor, eps_rel: float = 1e-6) -> GaussianFit:
    """Mean and full covariance (divided by N, as the source does) of real activations.

    A singular covariance (fewer samples than dimensions, or exactly collinear directions) has no Cholesky
    factor: its eigenvalues are floored at ``eps_rel`` x their mean, and a warning says so."""
    x = acts_ND.double()
    n, d = x.shape
    if n < 2:
        raise SaevalError(f"the Gaussian target needs at least 2 real activations, got {n}: raise n_fit")
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / n
    if n > d:
        factor, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            return GaussianFit(mean, factor)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    floor = eps_rel * float(eigvals.clamp_min(0).mean())
    rank = int((eigvals > floor).sum())
    factor = eigvecs * eigvals.clamp_min(floor).sqrt()
    warning = (f"covariance of {n} activations in {d} dimensions is singular (numerical rank {rank}): "
               f"eigenvalues floored at {floor:.3g} ({eps_rel:g} x their mean); raise n_fit above {d} "
               "for a full-rank random target")
    return GaussianFit(mean, factor, warning)


# ---------------------------------------------------------------------------------------------- synthetic
def _nearest_available(values_F: np.ndarray, reference: float, available_F: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` available latents whose value is closest to ``reference`` (ties by index)."""
    idx = np.flatnonzero(available_F)
    if len(idx) == 0:
        raise SaevalError("ran out of unused live latents while building a synthetic activation: use a wider "
                          "SAE")
    dist = np.abs(values_F[idx] - reference)
    k = min(k, len(idx))
    part = np.argpartition(dist, k - 1)[:k] if k < len(idx) else np.arange(len(idx))
    order = np.lexsort((idx[part], dist[part]))
    return idx[part][order]


def active_order(f_F: np.ndarray) -> np.ndarray:
    """Active latents (value > 0), largest first: larger latents pick their replacements first."""
    active = np.flatnonzero(f_F > 0)
    return active[np.lexsort((active, -f_F[active]))]


def baseline_latents(f_F: np.ndarray, log10_F: np.ndarray, live_F: np.ndarray, pool: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Bag of latents: each active latent is replaced by one drawn uniformly from the ``pool`` unused live
    latents closest to it in log-density, carrying the same value."""
    out = np.zeros_like(f_F)
    active = active_order(f_F)
    available = live_F.copy()
    available[active] = False
    for a in active:
        candidates = _nearest_available(log10_F, log10_F[a], available, pool)
        choice = candidates[rng.integers(len(candidates))]
        out[choice] = f_F[a]
        available[choice] = False
    return out


def structured_latents(f_F: np.ndarray, log10_F: np.ndarray, live_F: np.ndarray, W_unit_FD: Tensor, pool: int,
                       anchor_cos: float) -> tuple[np.ndarray, int]:
    """Cosine-structured: the top latent t is replaced by an anchor c, the unused live latent among the
    ``pool`` nearest to t in log-density whose decoder cosine to t is closest to ``anchor_cos``; every other
    active latent f is replaced by the unused live latent whose cosine to c is closest to cos(t, f). Values
    are kept. Returns the new latent vector and the anchor."""
    out = np.zeros_like(f_F)
    active = active_order(f_F)
    top = int(active[0])
    available = live_F.copy()
    available[active] = False
    candidates = _nearest_available(log10_F, log10_F[top], available, pool)
    cos_t_F = (W_unit_FD @ W_unit_FD[top]).double().cpu().numpy()
    anchor = int(_nearest_available(cos_t_F, anchor_cos, np.isin(np.arange(len(f_F)), candidates), 1)[0])
    out[anchor] = f_F[top]
    available[anchor] = False
    cos_c_F = (W_unit_FD @ W_unit_FD[anchor]).double().cpu().numpy()
    for a in active[1:]:
        choice = int(_nearest_available(cos_c_F, cos_t_F[a], available, 1)[0])
        out[choice] = f_F[a]
        available[choice] = False
    return out, anchor


def unit_decoder(sae) -> Tensor:
    return F.normalize(sae.W_dec.detach().float(), dim=-1)


def teren_baseline_latents(f_F: np.ndarray, density_F: np.ndarray, pool: int, rng: np.random.Generator) -> np.ndarray:
    """teren's bag of latents: in ascending latent index, the current value of each active latent moves to one
    drawn uniformly from the ``pool`` latents nearest it in linear density (itself excluded, nothing else),
    in place."""
    out = f_F.copy()
    everyone = np.ones(len(f_F), dtype=bool)
    for a in np.flatnonzero(f_F > 0):
        value = out[a]  # an earlier move may have written here
        out[a] = 0.0
        everyone[a] = False
        candidates = _nearest_available(density_F, density_F[a], everyone, pool)
        everyone[a] = True
        out[candidates[rng.integers(len(candidates))]] = value
    return out


def teren_structured_latents(f_F: np.ndarray, density_F: np.ndarray, W_unit_FD: Tensor, pool: int,
                             anchor_cos: float) -> tuple[np.ndarray, int]:
    """teren's cosine-structured construction: the anchor c is, among the ``pool`` latents nearest the top
    latent t in linear density (t excluded), the one whose cosine to t is closest to ``anchor_cos``; then, in
    ascending latent index with t included, each active f goes to the not yet chosen latent (any latent)
    whose cosine to c is closest to cos(t, f). Values are kept. Returns the latent vector and the anchor."""
    out = np.zeros_like(f_F)
    top = int(np.argsort(f_F, kind="stable")[-1])
    others = np.ones(len(f_F), dtype=bool)
    others[top] = False
    candidates = _nearest_available(density_F, density_F[top], others, pool)
    cos_t_F = (W_unit_FD @ W_unit_FD[top]).double().cpu().numpy()
    anchor = int(_nearest_available(cos_t_F, anchor_cos, np.isin(np.arange(len(f_F)), candidates), 1)[0])
    cos_c_F = (W_unit_FD @ W_unit_FD[anchor]).double().cpu().numpy()
    free = np.ones(len(f_F), dtype=bool)
    for a in np.flatnonzero(f_F > 0):
        choice = int(_nearest_available(cos_c_F, cos_t_F[a], free, 1)[0])
        out[choice] = f_F[a]
        free[choice] = False
    return out, anchor
