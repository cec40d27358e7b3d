"""Synthetic activations: does the model treat activations built from SAE latents like real ones?

Giglemiani et al. 2024 (arXiv 2409.15019), shared spec methods.md section D. A real activation A (last
position of a short prompt, at the SAE's hook) is moved step by step towards a target T: another prompt's
activation (real), its SAE reconstruction, two synthetic activations built from A's active latents (the
cosine-structured one and the "bag of latents" baseline), or a sample of a Gaussian fitted to real
activations. The final layer's residual (last position) and the next-token distribution are read at each
step; the step of maximal slope (MS step) of the L2 curve is where the model "blows up". Real targets blow
up earliest in GPT-2; the closer a synthetic type's MS distribution is to the real one, the more realistic.
The plateau experiment starts at each target type and moves towards a fresh Gaussian sample, counting the
steps before the final residual moves by more than a threshold.

Departures from teren's code (jettjaniak/teren, branch explorations, notebooks/experiment_plateaus.ipynb),
on purpose; ``reference="teren"`` reproduces them for comparison with the paper's numbers (DEPARTURES below
gives each reason; the result's details list them):

- density neighbours in log10 density (teren: linear density);
- replacements are unused live latents, never another active one (teren: any latent but the replaced one;
  its baseline's used-set never excludes anything, and it rewrites the latent vector in place);
- the largest latents pick their replacements first, the top one taking the anchor (teren: ascending latent
  index, the top latent included in the loop);
- the plateau threshold is 0.1 x the median final residual norm (teren and the paper: 20);
- a plateau that never reaches it counts its curve's length (teren: 100);
- MS-step ties go to the first index (teren: ``np.argsort(np.nan_to_num(slopes))[::-1][0]``, the last tied
  index under a stable sort; numpy's default sort is not stable, so teren's own choice among ties varies).

Speed: only the last position is perturbed and causal attention never lets it change earlier positions, so
every prompt's earlier positions are run once (their keys and values cached) and each perturbed activation
costs one single-token pass through the blocks after the hook.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp
from torch import Tensor

from saeval.analysis.synthetic_targets import (
    baseline_latents,
    check_live,
    fit_gaussian,
    latent_density,
    structured_latents,
    teren_baseline_latents,
    teren_structured_latents,
    unit_decoder,
)
from saeval.analysis.windows import MEMO_MAX_FLOATS
from saeval.data.activations import check_finite
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.synthetic.config import (
    GRID_MAX,
    PAPER_MS_STEP,
    PAPER_PLATEAU,
    T_MAX,
    TARGET_TYPES,
    TEREN_CENSORED_PLATEAU,
    TEREN_PLATEAU_THRESHOLD,
    CurveStats,
    SyntheticConfig,
    SyntheticDetails,
    SyntheticMetrics,
    SyntheticResult,
)
from saeval.progress import track

DEPARTURES = [
    "density neighbours are compared in log10 density; teren compares linear densities, where the nearest "
    "neighbours of every rare latent are the dead and near-dead ones (density ~ 0)",
    "replacements are unused live latents, never another active one; teren allows any latent but the replaced "
    "one (dead latents, whose decoder rows the SAE never uses, and active ones, which keep part of A in the "
    "target); its baseline's used-set holds tensors that hash by identity, so replacements can repeat",
    "the largest latents pick their replacements first and the top latent always takes the anchor; teren goes "
    "in ascending latent index, so an earlier latent close to the top one can take the anchor",
    "the plateau threshold is 0.1 x the median final residual norm of the real prompts; teren and the paper "
    "use 20, which is in GPT-2 small units",
    "a plateau that never reaches the threshold counts its curve's length (and is reported as censored); "
    "teren counts 100 even for a curve cut short at its target",
    "MS-step ties go to the first index; teren takes np.argsort(np.nan_to_num(slopes))[::-1][0], the last "
    "tied index under a stable sort (its default sort is not stable), so a curve rising most at its first "
    "step (s_0 = s_1) reports step 1 there",
]
# What reference="teren" still does its own way.
TEREN_DEPARTURES = [
    "ties in teren's unstable sorts are broken deterministically: density and cosine neighbours by latent "
    "index, the MS step to the last tied index (a stable reading of its argsort(...)[::-1][0])",
]


# ---------------------------------------------------------------------------------------------- model runs
class LastPositionRunner:
    """The final block's residual (TransformerLens blocks.{n-1}.hook_resid_post) and the next-token logits at
    the last position of one prompt, for many replacements of the last position's activation at ``hook``.

    ``prepare(tokens_1L)`` runs positions 0..L-2 once (keys and values cached) and the last token up to the hook
    (``host.prefix_last``); ``run(acts_VD)`` then costs one single-position pass per variant through the later
    blocks (``host.final_residual_last_VD``). ``fast=False`` (or a hook inside a block): full forwards."""

    def __init__(self, host, hook: str, fast: bool = True):
        self.host = host
        self.hook = hook
        self.read_hook = f"blocks.{host.n_layers - 1}.hook_resid_post"
        self.fast = fast and host.hook(hook).kind in ("hook_resid_pre", "hook_resid_post")
        self.state = None

    def prepare(self, tokens_1L: Tensor) -> None:
        self.state = self.host.prefix_last(tokens_1L, self.hook, cached=self.fast)

    def prepare_shared(self, tokens_1L: Tensor, states: dict[int, object], i: int, keep: bool) -> None:
        """``prepare`` for prompt ``i``, taking its state from ``states`` (a run's memo: the states depend only
        on the model, hook and prompt; ``run`` copies the cache it extends) or, when ``keep``, adding it."""
        if i in states:
            self.state = states[i]  # type: ignore[assignment]
            return
        self.prepare(tokens_1L)
        if keep:
            states[i] = self.state

    def run(self, acts_VD: Tensor, logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """Final residual [V, D] and, when ``logits``, last-position logits [V, vocab] (the unembedding is a
        third of a single-position pass in a small model: L2-only curves skip it)."""
        assert self.state is not None, "prepare() first"
        resid_VD = self.host.final_residual_last_VD(self.state, acts_VD)
        logits_VV = self.host.logits_from_residual(resid_VD[:, None])[:, 0].float() if logits else None
        return resid_VD.float(), logits_VV


SAE_FREE = ("real", "random", "final_norm")  # per-sample curves that do not depend on the SAE


def sample_curves(runner: LastPositionRunner, base_D: Tensor, targets: dict[str, Tensor],
                  plateau_ends: dict[str, Tensor], kinds: tuple[str, ...], step: float, n_steps: int,
                  batch_rows: int) -> dict:
    """One prepared prompt: {type: {"abs"/"rel": (l2, kl), "plateau": l2}} for the given targets, and the
    final residual norm of the unperturbed base under "final_norm"."""
    keys = [(t, kind) for t in targets for kind in kinds]
    curves = [(0, (absolute_steps(base_D, targets[t], step, n_steps) if kind == "abs"
                   else relative_steps(base_D, targets[t], n_steps))[1:]) for t, kind in keys]
    l2s, kls, ref_final = curve_values(runner, base_D[None], curves, batch_rows)
    out: dict = {t: {} for t in targets}
    out["final_norm"] = float(ref_final[0].norm())
    for (t, kind), l2, kl in zip(keys, l2s, kls, strict=True):
        out[t][kind] = (l2, kl)
    if plateau_ends:  # start at the target, move towards a fresh Gaussian sample; L2 only (no unembedding)
        names = list(plateau_ends)
        starts = torch.stack([targets[t] for t in names])
        curves = [(j, absolute_steps(targets[t], plateau_ends[t], step, n_steps)[1:]) for j, t in enumerate(names)]
        l2s, _, _ = curve_values(runner, starts, curves, batch_rows, kl_too=False)
        for t, l2 in zip(names, l2s, strict=True):
            out[t]["plateau"] = l2
    return out


def curve_values(runner: LastPositionRunner, starts_SD: Tensor, curves: list[tuple[int, Tensor]],
                 batch_rows: int, kl_too: bool = True) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """L2 of the final residual and KL(start || perturbed) of the next-token distribution along each curve.

    ``curves`` are (index into ``starts``, acts_SD of steps 1..S-1); each curve's step 0 is its start, run
    once. Returns per-curve L2 and KL (step 0 included, = 0; KL all zero unless ``kl_too``) and the starts'
    final residuals."""
    ref_final, ref_logits = runner.run(starts_SD, logits=kl_too)
    ref_logp = F.log_softmax(ref_logits, dim=-1) if ref_logits is not None else None
    rows = torch.cat([acts for _, acts in curves]) if curves else torch.zeros(0, starts_SD.shape[1])
    owner = torch.cat([torch.full((len(acts),), i, dtype=torch.long) for i, acts in curves]) if curves \
        else None
    l2, kl = torch.zeros(len(rows)), torch.zeros(len(rows))
    for lo in range(0, len(rows), batch_rows):
        hi = min(lo + batch_rows, len(rows))
        final, logits = runner.run(rows[lo:hi], logits=kl_too)
        who = owner[lo:hi].to(final.device)  # type: ignore[index]
        l2[lo:hi] = (final - ref_final[who]).norm(dim=-1).cpu()
        if logits is not None and ref_logp is not None:
            ref = ref_logp[who]
            kl[lo:hi] = (ref.exp() * (ref - F.log_softmax(logits, dim=-1))).sum(-1).clamp_min(0).cpu()
    out_l2, out_kl, at = [], [], 0
    for _, acts in curves:
        out_l2.append(torch.cat([torch.zeros(1), l2[at : at + len(acts)]]))
        out_kl.append(torch.cat([torch.zeros(1), kl[at : at + len(acts)]]))
        at += len(acts)
    return out_l2, out_kl, ref_final.cpu()


# ---------------------------------------------------------------------------------------------- curves
def absolute_steps(start_D: Tensor, target_D: Tensor, step_size: float, n_steps: int) -> Tensor:
    """start + dir * step_size * t, t = linspace(0, 100, n_steps), kept while short of the target: the first
    floor(||T - A|| / step_size) points of the 100-point grid (scaled to n_steps)."""
    diff = target_D - start_D
    dist = float(diff.norm())
    t = torch.linspace(0, T_MAX, n_steps)
    n_keep = min(n_steps, int(math.floor(dist / step_size)) * n_steps // int(T_MAX)) if dist > 0 else 0
    return start_D + (diff / max(dist, 1e-12)) * step_size * t[:n_keep, None]


def relative_steps(start_D: Tensor, target_D: Tensor, n_steps: int) -> Tensor:
    """A (1 - t) + T t, t = linspace(0, 1, n_steps)."""
    t = torch.linspace(0, 1, n_steps)[:, None]
    return start_D * (1 - t) + target_D * t


def max_slope_step(curve: np.ndarray | Tensor, slope_floor: float = 0.02, no_blowup: int = GRID_MAX,
                   ties: str = "first") -> int:
    """Index of the steepest rise: slopes s_i = d_i - d_{i-1}, s_0 = s_1; ``no_blowup`` when no slope
    exceeds ``slope_floor`` (or the curve has fewer than two points). ``ties="last"``: teren's
    argsort(nan_to_num(slopes))[::-1][0], read with a stable sort (NaN slopes count 0)."""
    d = np.asarray(curve, dtype=np.float64)
    if len(d) < 2:
        return no_blowup
    slopes = np.diff(d)
    slopes = np.concatenate([slopes[:1], slopes])
    if not (slopes > slope_floor).any():
        return no_blowup
    if ties == "last":
        slopes = np.nan_to_num(slopes)
        return int(len(slopes) - 1 - np.argmax(slopes[::-1]))
    return int(np.argmax(slopes))


def plateau_length(curve: np.ndarray | Tensor, threshold: float) -> tuple[int, bool]:
    """First step whose L2 reaches ``threshold``; (curve length, True) when it never does (censored)."""
    d = np.asarray(curve, dtype=np.float64)
    above = np.flatnonzero(d >= threshold)
    return (int(above[0]), False) if len(above) else (len(d), True)


def plateau_on_grid(curve: np.ndarray | Tensor, threshold: float, n_steps: int, reference: str) -> tuple[float, bool]:
    """The plateau length on the paper's 100-point grid, and whether it is censored; teren counts a censored
    plateau as 100 whatever the curve's length."""
    length, censored = plateau_length(curve, threshold)
    if censored and reference == "teren":
        return TEREN_CENSORED_PLATEAU, True
    return _grid(length, n_steps), censored


def summarize(per_sample: dict[str, list[float]]) -> CurveStats:
    real = per_sample.get("real")
    ks = {k: float(ks_2samp(v, real).statistic) for k, v in per_sample.items() if k != "real" and real}
    return CurveStats(
        per_sample=per_sample,
        mean={k: float(np.mean(v)) for k, v in per_sample.items()},
        std={k: float(np.std(v)) for k, v in per_sample.items()},
        ks_vs_real=ks,
    )


# ---------------------------------------------------------------------------------------------- the eval
def resolve_hook(ctx: EvalContext, sae, config: SyntheticConfig) -> str:
    sae_hook = getattr(sae.cfg, "hook_name", None)
    if config.hook and sae_hook and config.hook != sae_hook:
        raise SaevalError(f"synthetic hook {config.hook} differs from SAE {sae.name}'s hook {sae_hook}: "
                          "the perturbation hook must be where the SAE reads; drop the hook setting or pick "
                          "that SAE")
    hook = config.hook or sae_hook or ctx.hook
    n_layers = ctx.host.n_layers
    parts = hook.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) >= n_layers:
        raise SaevalError(f"hook {hook} is past the depth of {ctx.host.name} ({n_layers} layers, blocks.0 to "
                          f"blocks.{n_layers - 1}): use an SAE trained on this model")
    ctx.host.hook(hook)  # validates the name
    return hook


@torch.inference_mode()
def prompt_activations(ctx: EvalContext, hook: str, config: SyntheticConfig) -> tuple[Tensor, Tensor]:
    """Prompts (bases, real targets, Gaussian fit set) and their last-position activations at ``hook``;
    shared across SAEs at the same hook through the run's memo."""
    host = ctx.host
    n_prompts = 2 * config.n_samples + config.n_fit
    key = ("synthetic-prompts", host.name, hook, ctx.corpus, config.prompt_len, n_prompts, ctx.seed)
    if key not in ctx.memo:
        contexts = load_contexts(host, ctx.corpus, n_prompts * config.prompt_len, config.prompt_len, ctx.seed)
        chunks = []
        starts = range(0, n_prompts, 64)
        for lo in track(starts, f"synthetic: prompt activations at {hook}", len(starts)):
            chunks.append(host.capture(contexts[lo : lo + 64], [hook])[hook][:, -1].float().cpu())
        acts = torch.cat(chunks)
        check_finite(acts, f"{host.name} {hook}")
        ctx.memo[key] = (contexts, acts)
    return ctx.memo[key]


def distinct_targets(base_ND: Tensor, target_ND: Tensor) -> Tensor:
    """Each base gets another prompt's activation; one identical to its base (a repeated text) is swapped."""
    out = target_ND.clone()
    for i in torch.nonzero((out - base_ND).norm(dim=-1) < 1e-3).flatten().tolist():
        for shift in range(1, len(out)):
            candidate = target_ND[(i + shift) % len(out)]
            if float((candidate - base_ND[i]).norm()) >= 1e-3:
                out[i] = candidate
                break
    return out


@torch.inference_mode()
def build_targets(
    sae, base_ND: Tensor, real_ND: Tensor, gauss, density, config: SyntheticConfig, rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[dict[str, Tensor], list[str]]:
    device = sae.W_dec.device
    f_NF = sae.encode(base_ND.to(device)).float().cpu().numpy()
    n_active = (f_NF > 0).sum(1)
    teren = config.reference == "teren"
    if not teren:  # teren draws among all latents, dead ones included
        check_live(density, sae.name, max(config.structured_pool, config.baseline_pool) + 2 * int(n_active.max()))
    log10, linear = density.reference_log10(), density.linear()
    W_unit = unit_decoder(sae)
    structured, baseline = np.zeros_like(f_NF), np.zeros_like(f_NF)
    warnings = []
    for i in range(len(f_NF)):
        if n_active[i] == 0:
            continue  # nothing to rebuild: the synthetic target is the decoder bias alone
        if teren:
            baseline[i] = teren_baseline_latents(f_NF[i], linear, config.baseline_pool, rng)
            structured[i], _ = teren_structured_latents(f_NF[i], linear, W_unit, config.structured_pool,
                                                        config.anchor_cos)
            continue
        baseline[i] = baseline_latents(f_NF[i], log10, density.live_F, config.baseline_pool, rng)
        structured[i], _ = structured_latents(f_NF[i], log10, density.live_F, W_unit, config.structured_pool,
                                              config.anchor_cos)
    if (n_active == 0).any():
        warnings.append(f"{int((n_active == 0).sum())} base activations have no active latent: their "
                        "synthetic targets are the decoder bias")

    def decode(f: np.ndarray) -> Tensor:
        return sae.decode(torch.from_numpy(f).to(device, sae.W_dec.dtype)).float().cpu()

    targets = {
        "real": real_ND,
        "sae_recon": sae.decode(sae.encode(real_ND.to(device))).float().cpu(),
        "synthetic_structured": decode(structured),
        "synthetic_baseline": decode(baseline),
        "random": gauss.sample(len(base_ND), generator),
    }
    return targets, warnings


def _grid(index: int, n_steps: int) -> float:
    """An index on an n_steps grid, expressed on the paper's 100-point grid."""
    return round(index * GRID_MAX / (n_steps - 1), 3)


def _short(values: Tensor) -> list[float]:
    return [float(f"{v:.4g}") for v in values.tolist()]


@torch.inference_mode()
def run(ctx: EvalContext, sae, config: SyntheticConfig) -> SyntheticResult:
    host = ctx.host
    hook = resolve_hook(ctx, sae, config)
    sae = sae.to(host.device)
    n, n_steps = config.n_samples, config.n_steps
    contexts, acts = prompt_activations(ctx, hook, config)
    sae.check_input(acts)
    base, fit_set = acts[:n], acts[2 * n :]
    real = distinct_targets(base, acts[n : 2 * n])
    rng, generator = np.random.default_rng(ctx.seed), torch.Generator().manual_seed(ctx.seed)
    density = latent_density(ctx, sae, hook, config.n_density_tokens, config.density_ctx_len, 8,
                             config.dead_log10_density)
    gauss = fit_gaussian(fit_set, config.cov_eps)
    warnings = [gauss.warning] if gauss.warning else []
    targets, target_warnings = build_targets(sae, base, real, gauss, density, config, rng, generator)
    warnings += target_warnings
    plateau_types = list(TARGET_TYPES) if config.plateau else []
    ends = {t: gauss.sample(n, generator) for t in plateau_types}  # a fresh Gaussian sample per perturbation

    median_dist = float((real - base).norm(dim=-1).median())
    step = median_dist / T_MAX if config.step_size == "auto" else float(config.step_size)
    runner = LastPositionRunner(host, hook, config.fast_path)
    prompts_key = ("synthetic-prompts-prepared", host.name, hook, ctx.corpus, config.prompt_len,
                   2 * n + config.n_fit, ctx.seed, config.fast_path)
    if prompts_key not in ctx.memo:  # the fast-path check and the prepared prompts need no SAE: once per run
        checked = _check_fast_path(runner, contexts[0:1], base[0]) if runner.fast else []
        ctx.memo[prompts_key] = (checked, runner.fast, {})
    fast_warnings, runner.fast, states = ctx.memo[prompts_key]
    warnings += fast_warnings
    # KV caches of every layer for each prompt: kept for the next SAE while they stay small.
    keep_states = n * config.prompt_len * host.n_layers * 2 * host.d_model <= MEMO_MAX_FLOATS

    kinds = ("abs", "rel") if config.relative else ("abs",)
    ties = "last" if config.reference == "teren" else "first"
    # MS steps: L2 and KL along absolute steps, and along the relative interpolation (suffix r).
    ms: dict[str, dict[str, list[float]]] = {
        s: {t: [] for t in TARGET_TYPES} for s in ("l2", "kl", "l2r", "klr")[: 2 * len(kinds)]}
    no_blowup = {t: 0 for t in TARGET_TYPES}
    plateau_curves: dict[str, list[Tensor]] = {t: [] for t in plateau_types}
    examples: dict[str, dict[str, list[list[float]]]] = {t: {"l2": [], "kl": [], "plateau_l2": []}
                                                         for t in TARGET_TYPES}
    # Real and random targets do not depend on the SAE: the next SAE at this hook reuses their curves (the random
    # targets and plateau ends are drawn from the Gaussian fit, so cov_eps is in the key; fast_path, which passes
    # compute them).
    shared_key = ("synthetic-curves", host.name, hook, ctx.corpus, ctx.seed, config.prompt_len, n, config.n_fit,
                  n_steps, step, config.relative, config.plateau, config.cov_eps, config.fast_path)
    shared: dict[int, dict] = ctx.memo.setdefault(shared_key, {})
    final_norms, at_end = [], 0
    for i in track(range(n), f"synthetic {sae.name}: perturbations", n):
        cached = shared.get(i, {})
        runner.prepare_shared(contexts[i : i + 1], states, i, keep_states)
        fresh = sample_curves(runner, base[i], {t: targets[t][i] for t in TARGET_TYPES if t not in cached},
                              {t: ends[t][i] for t in plateau_types if t not in cached}, kinds, step, n_steps,
                              config.batch_rows)
        shared[i] = {t: fresh[t] for t in SAE_FREE if t in fresh} | cached
        curves = cached | fresh
        final_norms.append(curves["final_norm"])
        for t in TARGET_TYPES:
            for kind in kinds:
                l2, kl = curves[t][kind]
                for stat, curve in (("l2", l2), ("kl", kl)):
                    idx = max_slope_step(curve, config.slope_floor, no_blowup=-1, ties=ties)
                    if kind == "abs" and stat == "l2":
                        no_blowup[t] += idx < 0
                        at_end += t == "real" and len(curve) == n_steps and idx == n_steps - 1
                    ms[stat + ("" if kind == "abs" else "r")][t].append(
                        float(GRID_MAX) if idx < 0 else _grid(idx, n_steps))
            if i < config.n_examples:
                examples[t]["l2"].append(_short(curves[t]["abs"][0]))
                examples[t]["kl"].append(_short(curves[t]["abs"][1]))
            if t in plateau_types:
                plateau_curves[t].append(curves[t]["plateau"])
                if i < config.n_examples:
                    examples[t]["plateau_l2"].append(_short(curves[t]["plateau"]))

    if at_end > n / 2:  # a convex curve rises fastest at its end: the blow-up lies beyond the span
        warnings.append(f"{at_end} of {n} real-target L2 curves rise fastest at their last step: "
                        f"{n_steps} steps of {step:.3g} end before the blow-up (real targets lie "
                        f"{median_dist:.3g} away at {hook}); use step_size='auto'")
    resid_median = float(np.median(final_norms))
    plateau_stats, censored, threshold, derivation = None, {}, None, None
    if config.plateau:
        if config.plateau_threshold is not None:
            threshold = float(config.plateau_threshold)
            derivation = "set in the config (plateau_threshold)"
        elif config.reference == "teren":
            threshold = TEREN_PLATEAU_THRESHOLD
            derivation = "teren's and the paper's 20 (GPT-2 small units), reference='teren'"
        else:
            threshold = config.plateau_threshold_frac * resid_median
            derivation = (f"{config.plateau_threshold_frac:g} x the median L2 norm ({resid_median:.4g}) of "
                          f"the final residual ({runner.read_hook}, last position) of the {n} real base "
                          "prompts; the source's 20 is in GPT-2 small units")
        lengths: dict[str, list[float]] = {}
        for t, curves_t in plateau_curves.items():
            found = [plateau_on_grid(c, threshold, n_steps, config.reference) for c in curves_t]
            lengths[t] = [length for length, _ in found]
            censored[t] = float(np.mean([c for _, c in found]))
        plateau_stats = summarize(lengths)

    stats = {key: summarize(values) for key, values in ms.items()}
    means = stats["l2"].mean
    ordering = sorted(TARGET_TYPES, key=lambda t: means[t])
    holds = (means["real"] < means["sae_recon"] < means["synthetic_structured"] <= means["synthetic_baseline"]
             < means["random"])
    ks = stats["l2"].ks_vs_real
    metrics = SyntheticMetrics(
        **{f"ms_{t}": means[t] for t in TARGET_TYPES},
        **{f"ks_{t}": ks[t] for t in TARGET_TYPES if t != "real"},
        **{f"kl_ms_{t}": stats["kl"].mean[t] for t in ("real", "synthetic_structured", "synthetic_baseline",
                                                         "random")},
        **({f"plateau_{t}": plateau_stats.mean[t] for t in PAPER_PLATEAU} if plateau_stats else {}),
        paper_ordering_holds=holds,
        structured_closer_than_baseline=ks["synthetic_structured"] < ks["synthetic_baseline"],
    )
    details = SyntheticDetails(
        hook=hook, read_hook=runner.read_hook, n_samples=n, n_steps=n_steps, step_size=step,
        step_size_source="auto: median real distance / 100" if config.step_size == "auto" else "config",
        median_real_distance=median_dist,
        target_distance_median={t: float((targets[t] - base).norm(dim=-1).median()) for t in TARGET_TYPES},
        density_source=density.source, density_tokens=density.n_tokens, n_live_latents=density.n_live,
        gaussian_fit_n=len(fit_set),
        ms_step_l2=stats["l2"], ms_step_kl=stats["kl"], ms_step_l2_relative=stats.get("l2r"),
        ms_step_kl_relative=stats.get("klr"), no_blowup_fraction={t: no_blowup[t] / n for t in TARGET_TYPES},
        plateau=plateau_stats, plateau_censored_fraction=censored, plateau_threshold=threshold,
        plateau_threshold_derivation=derivation, final_resid_norm_median=resid_median, ordering=ordering,
        paper_ms_step=PAPER_MS_STEP, paper_plateau=PAPER_PLATEAU, examples=examples, warnings=warnings,
        reference=config.reference, departures=TEREN_DEPARTURES if config.reference == "teren" else DEPARTURES,
    )
    return SyntheticResult(**ctx.envelope("synthetic", sae), config=config, metrics=metrics, details=details)


@torch.inference_mode()
def _check_fast_path(runner: LastPositionRunner, tokens_1L: Tensor, base_D: Tensor) -> list[str]:
    """The cached single-position pass must agree with a plain forward; otherwise fall back to full passes."""
    runner.prepare(tokens_1L)
    final, logits = runner.run(base_D[None])
    captures: dict[str, list[Tensor]] = {runner.read_hook: []}
    ref_logits = runner.host.forward(tokens_1L, captures=captures)[:, -1].float()
    ref_final = captures[runner.read_hook][0][:, -1].float()
    err = float((final - ref_final).norm() / ref_final.norm().clamp_min(1e-6))
    err_logits = float((logits - ref_logits).abs().max())
    if err < 1e-3 and err_logits < 1e-2 * max(1.0, float(ref_logits.abs().max())):
        return []
    runner.fast = False
    return [f"cached single-position passes disagree with a plain forward on {runner.host.name} (relative "
            f"error {err:.2g}); used full forward passes instead (slower)"]
