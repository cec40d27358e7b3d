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

Speed: only the last position is perturbed and causal attention never lets it change earlier positions, so
every prompt's earlier positions are run once (their keys and values cached) and each perturbed activation
costs one single-token pass through the blocks after the hook.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from scipy.stats import ks_2samp
from torch import Tensor

from saeval.data.activations import check_finite
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.base import EvalConfig, EvalContext, EvalSpec, register_eval
from saeval.evals.synthetic_targets import (
    baseline_latents,
    check_live,
    fit_gaussian,
    latent_density,
    structured_latents,
    unit_decoder,
)
from saeval.progress import track
from saeval.results import EvalResult

TARGET_TYPES = ("real", "sae_recon", "synthetic_structured", "synthetic_baseline", "random")
# The paper's finding on GPT-2 (mean L2 MS step): real 51.60 < SAE recon 53.34 < structured 55.69
# <= baseline 56.87 < random 65.01.
PAPER_MS_STEP = {"real": 51.60, "sae_recon": 53.34, "synthetic_structured": 55.69,
                 "synthetic_baseline": 56.87, "random": 65.01}
PAPER_PLATEAU = {"real": 15.12, "random": 8.33, "synthetic_structured": 7.76, "synthetic_baseline": 6.18}
T_MAX = 100.0  # absolute steps run t = linspace(0, 100, n_steps) in units of step_size
GRID_MAX = 99  # MS steps are reported on the paper's 100-point grid (index 0..99)


class SyntheticConfig(EvalConfig):
    # Perturbation hook: must be the SAE's hook (None = the SAE's hook, else the run's hook).
    hook: str | None = None
    prompt_len: int = 10  # BOS + 9 corpus tokens (the paper: first 10 tokens of openwebtext rows)
    n_samples: int = 1000  # base activations, i.e. perturbations per target type
    n_fit: int = 1000  # real activations the Gaussian is fitted to
    n_steps: int = 100
    # Absolute step length; "auto": the median distance between real activations / 100, so the 100 steps
    # span a typical real-to-real distance (0.5 is the paper's value at GPT-2's blocks.1.hook_resid_pre).
    step_size: float | Literal["auto"] = 0.5
    slope_floor: float = 0.02  # no slope above this: no blow-up, MS step = 99
    baseline_pool: int = 10  # synthetic baseline: draw among the 10 unused latents closest in log-density
    structured_pool: int = 100  # structured: anchor among the 100 latents nearest the top one in density
    anchor_cos: float = 0.42  # ... whose decoder cosine to the top latent is closest to 0.42
    dead_log10_density: float = -10.0
    n_density_tokens: int = 4_096_000  # when the core eval's densities are absent (core's default pass size)
    density_ctx_len: int = 128
    relative: bool = True  # also the relative interpolation A (1 - t) + T t
    plateau: bool = True
    # Plateau threshold on the final-layer L2: None = plateau_threshold_frac x the median final residual norm
    # at the last position of the real prompts (the source's 20 is in GPT-2 small units).
    plateau_threshold: float | None = None
    plateau_threshold_frac: float = 0.1
    cov_eps: float = 1e-6  # eigenvalue floor (x mean eigenvalue) for a singular covariance
    batch_rows: int = 256  # perturbed activations per forward
    n_examples: int = 4  # example curves kept per target type
    fast_path: bool = True  # cached single-position passes; False = full forward per perturbed activation


class SyntheticMetrics(BaseModel):
    ms_real: float
    ms_sae_recon: float
    ms_synthetic_structured: float
    ms_synthetic_baseline: float
    ms_random: float
    ks_sae_recon: float
    ks_synthetic_structured: float
    ks_synthetic_baseline: float
    ks_random: float
    kl_ms_real: float
    kl_ms_synthetic_structured: float
    kl_ms_synthetic_baseline: float
    kl_ms_random: float
    plateau_real: float | None = None
    plateau_synthetic_structured: float | None = None
    plateau_synthetic_baseline: float | None = None
    plateau_random: float | None = None
    paper_ordering_holds: bool
    structured_closer_than_baseline: bool


class CurveStats(BaseModel):
    """One statistic per sample for each target type, and its summary."""

    per_sample: dict[str, list[float]]
    mean: dict[str, float]
    std: dict[str, float]
    ks_vs_real: dict[str, float]


class SyntheticDetails(BaseModel):
    hook: str
    read_hook: str
    n_samples: int
    n_steps: int
    step_size: float
    step_size_source: str
    median_real_distance: float
    target_distance_median: dict[str, float]
    density_source: str
    density_tokens: int
    n_live_latents: int
    gaussian_fit_n: int
    ms_step_l2: CurveStats
    ms_step_kl: CurveStats
    ms_step_l2_relative: CurveStats | None = None
    ms_step_kl_relative: CurveStats | None = None
    no_blowup_fraction: dict[str, float]
    plateau: CurveStats | None = None
    plateau_censored_fraction: dict[str, float] = {}
    plateau_threshold: float | None = None
    plateau_threshold_derivation: str | None = None
    final_resid_norm_median: float
    ordering: list[str]
    paper_ms_step: dict[str, float]
    paper_plateau: dict[str, float]
    examples: dict[str, dict[str, list[list[float]]]]
    warnings: list[str]


class SyntheticResult(EvalResult[SyntheticConfig, SyntheticMetrics, SyntheticDetails]):
    pass


# ---------------------------------------------------------------------------------------------- model runs
class LastPositionRunner:
    """Runs the model from ``hook`` onward with the last position's activation replaced, for many variants.

    ``prepare(tokens_1L)`` runs positions 0..L-2 once (keeping their keys and values) and the last token up to
    the hook; ``run(acts_VD)`` then costs one single-position pass per variant through the later blocks.
    Returns the final block's residual (TransformerLens blocks.{n-1}.hook_resid_post) and the logits."""

    def __init__(self, host, hook: str, fast: bool = True):
        self.host = host
        self.hook = hook
        point = host.hook(hook)
        self.start = point.layer if point.kind == "hook_resid_pre" else point.layer + 1
        self.read_hook = f"blocks.{host.n_layers - 1}.hook_resid_post"
        self.fast = fast and point.kind in ("hook_resid_pre", "hook_resid_post")
        params = inspect.signature(host.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.tokens_1L: Tensor | None = None
        self.grabbed: dict = {}

    @torch.inference_mode()
    def prepare(self, tokens_1L: Tensor) -> None:
        from saeval.hosts.lm import _StopForward

        self.tokens_1L = tokens_1L.to(self.host.device)
        if not self.fast or self.start >= self.host.n_layers:
            return
        model = self.host.model
        out = model(input_ids=self.tokens_1L[:, :-1], use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise SaevalError(f"{self.host.name} returned no KV cache: run the synthetic eval with "
                              "fast_path=false")
        grabbed: dict = {}

        def grab(_m, args, kwargs):
            grabbed["args"] = tuple(args[1:])
            grabbed["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _StopForward

        handle = self.host.blocks[self.start].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            model(input_ids=self.tokens_1L[:, -1:], use_cache=True, **{self.cache_kw: cache})
        except _StopForward:
            pass
        finally:
            handle.remove()
        self.grabbed = grabbed

    @torch.inference_mode()
    def run(self, acts_VD: Tensor, logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """Final residual [V, D] and, when ``logits``, last-position logits [V, vocab] (the unembedding is a
        third of a single-position pass in a small model: L2-only curves skip it)."""
        acts_VD = acts_VD.to(self.host.device, self.host.model.dtype)
        if self.start >= self.host.n_layers:  # the hook is the final residual itself
            return acts_VD.float(), self._logits(acts_VD[:, None], logits)
        if not self.fast:
            return self._run_full(acts_VD)
        from transformers.cache_utils import Cache

        from saeval.hosts.lm import _hidden

        V = acts_VD.shape[0]

        def tile(value):
            if isinstance(value, Cache):  # a private copy: each block appends the new position to it
                cache = copy.deepcopy(value)
                cache.batch_repeat_interleave(V)
                return cache
            if isinstance(value, tuple):
                return tuple(tile(v) for v in value)
            return value  # tensors here have batch 1 and broadcast over the variants

        args = tuple(tile(a) for a in self.grabbed["args"])
        kwargs = {k: tile(v) for k, v in self.grabbed["kwargs"].items()}
        hidden = acts_VD[:, None, :]
        for block in self.host.blocks[self.start:]:
            hidden = _hidden(block(hidden, *args, **kwargs))
        return hidden[:, 0].float(), self._logits(hidden, logits)

    def _logits(self, hidden_V1D: Tensor, wanted: bool) -> Tensor | None:
        return self.host.logits_from_residual(hidden_V1D)[:, 0].float() if wanted else None

    def _run_full(self, acts_VD: Tensor) -> tuple[Tensor, Tensor]:
        assert self.tokens_1L is not None

        def replace(acts_BLD: Tensor) -> Tensor:
            acts_BLD = acts_BLD.clone()
            acts_BLD[:, -1] = acts_VD.to(acts_BLD.dtype)
            return acts_BLD

        captures: dict[str, list[Tensor]] = {self.read_hook: []}
        logits = self.host.forward(self.tokens_1L.repeat(len(acts_VD), 1), interventions={self.hook: replace},
                                   captures=captures)
        return captures[self.read_hook][0][:, -1].float(), logits[:, -1].float()


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


def max_slope_step(curve: np.ndarray | Tensor, slope_floor: float = 0.02, no_blowup: int = GRID_MAX) -> int:
    """Index of the steepest rise: slopes s_i = d_i - d_{i-1}, s_0 = s_1; ``no_blowup`` when no slope
    exceeds ``slope_floor`` (or the curve has fewer than two points)."""
    d = np.asarray(curve, dtype=np.float64)
    if len(d) < 2:
        return no_blowup
    slopes = np.diff(d)
    slopes = np.concatenate([slopes[:1], slopes])
    if not (slopes > slope_floor).any():
        return no_blowup
    return int(np.argmax(slopes))


def plateau_length(curve: np.ndarray | Tensor, threshold: float) -> tuple[int, bool]:
    """First step whose L2 reaches ``threshold``; (curve length, True) when it never does (censored)."""
    d = np.asarray(curve, dtype=np.float64)
    above = np.flatnonzero(d >= threshold)
    return (int(above[0]), False) if len(above) else (len(d), True)


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


def check_config(config: SyntheticConfig) -> None:
    problems = [
        (config.n_samples < 2, "n_samples must be at least 2"),
        (config.n_steps < 2, "n_steps must be at least 2"),
        (config.prompt_len < 2, "prompt_len must be at least 2 (BOS and one token)"),
        (config.n_fit < 2, "n_fit must be at least 2"),
        (config.step_size != "auto" and float(config.step_size) <= 0, "step_size must be positive or 'auto'"),
        (config.batch_rows < 1, "batch_rows must be at least 1"),
    ]
    for bad, message in problems:
        if bad:
            raise SaevalError(f"synthetic config: {message}")


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
    check_live(density, sae.name, max(config.structured_pool, config.baseline_pool) + 2 * int(n_active.max()))
    log10 = density.reference_log10()
    W_unit = unit_decoder(sae)
    structured, baseline = np.zeros_like(f_NF), np.zeros_like(f_NF)
    warnings = []
    for i in range(len(f_NF)):
        if n_active[i] == 0:
            continue  # nothing to rebuild: the synthetic target is the decoder bias alone
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
    check_config(config)
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
    if runner.fast:
        warnings += _check_fast_path(runner, contexts[0:1], base[0])

    kinds = ("abs", "rel") if config.relative else ("abs",)
    # MS steps: L2 and KL along absolute steps, and along the relative interpolation (suffix r).
    ms: dict[str, dict[str, list[float]]] = {
        s: {t: [] for t in TARGET_TYPES} for s in ("l2", "kl", "l2r", "klr")[: 2 * len(kinds)]}
    no_blowup = {t: 0 for t in TARGET_TYPES}
    plateau_curves: dict[str, list[Tensor]] = {t: [] for t in plateau_types}
    examples: dict[str, dict[str, list[list[float]]]] = {t: {"l2": [], "kl": [], "plateau_l2": []}
                                                         for t in TARGET_TYPES}
    # Real and random targets do not depend on the SAE: the next SAE at this hook reuses their curves.
    shared_key = ("synthetic-curves", host.name, hook, ctx.corpus, ctx.seed, config.prompt_len, n, config.n_fit,
                  n_steps, step, config.relative, config.plateau)
    shared: dict[int, dict] = ctx.memo.setdefault(shared_key, {})
    final_norms, at_end = [], 0
    for i in track(range(n), f"synthetic {sae.name}: perturbations", n):
        cached = shared.get(i, {})
        runner.prepare(contexts[i : i + 1])
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
                    idx = max_slope_step(curve, config.slope_floor, no_blowup=-1)
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
        else:
            threshold = config.plateau_threshold_frac * resid_median
            derivation = (f"{config.plateau_threshold_frac:g} x the median L2 norm ({resid_median:.4g}) of "
                          f"the final residual ({runner.read_hook}, last position) of the {n} real base "
                          "prompts; the source's 20 is in GPT-2 small units")
        lengths: dict[str, list[float]] = {}
        for t, curves_t in plateau_curves.items():
            found = [plateau_length(c, threshold) for c in curves_t]
            lengths[t] = [_grid(length, n_steps) for length, _ in found]
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


# ---------------------------------------------------------------------------------------------- report
COLORS = {"real": "#e67e22", "sae_recon": "#7f8c8d", "synthetic_structured": "#27ae60",
          "synthetic_baseline": "#8e44ad", "random": "#2980b9"}


def report_section(records: list[dict]) -> str:
    """Per SAE: summary table against the paper, MS-step histograms and CDFs, example curves, plateaus."""
    import html

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from saeval.report.html import figure_html, table_html

    parts = []
    for rec in records:
        d, m = rec["details"], rec["metrics"]
        name = html.escape(rec["sae"]["name"])
        l2, kl, rel = d["ms_step_l2"], d["ms_step_kl"], d.get("ms_step_l2_relative") or {"mean": {}}
        plateau = d.get("plateau") or {"mean": {}, "std": {}}
        rows = [{
            "target": t,
            "MS step (L2) mean ± std": f"{l2['mean'][t]:.2f} ± {l2['std'][t]:.2f}",
            "paper (GPT-2)": d["paper_ms_step"].get(t, ""),
            "KS vs real": l2["ks_vs_real"].get(t, ""),
            "MS step (KL)": kl["mean"][t],
            "MS step (relative, L2)": rel["mean"].get(t, ""),
            "no blow-up": d["no_blowup_fraction"][t],
            "plateau mean ± std": (f"{plateau['mean'][t]:.2f} ± {plateau['std'][t]:.2f}"
                                   if t in plateau["mean"] else ""),
            "paper plateau": d["paper_plateau"].get(t, ""),
        } for t in TARGET_TYPES]
        verdict = "holds" if m["paper_ordering_holds"] else "does not hold"
        threshold = d.get("plateau_threshold") or 0.0
        derivation = html.escape(d.get("plateau_threshold_derivation") or "")
        note = (f"<p class='note'><b>{name}</b> at {html.escape(d['hook'])}, {d['n_samples']} samples, "
                f"{d['n_steps']} steps of {d['step_size']:.4g} ({html.escape(d['step_size_source'])}); "
                f"L2 read at {html.escape(d['read_hook'])}. Paper ordering real &lt; SAE recon &lt; "
                f"structured &le; baseline &lt; random: <b>{verdict}</b> (measured: "
                f"{' &lt; '.join(d['ordering'])}). Plateau threshold {threshold:.4g}: {derivation}. "
                f"Densities: {html.escape(d['density_source'])} ({d['density_tokens']} tokens, "
                f"{d['n_live_latents']} live latents).</p>")
        warn = "".join(f"<p class='note'>warning: {html.escape(w)}</p>" for w in d["warnings"])
        parts += [note, warn, table_html(rows, list(rows[0]))]

        fig = make_subplots(rows=1, cols=2, subplot_titles=("MS step (L2) histogram", "MS step (L2) CDF"))
        for t in TARGET_TYPES:
            values = np.sort(np.asarray(l2["per_sample"][t]))
            cdf = np.arange(1, len(values) + 1) / len(values)
            fig.add_trace(go.Histogram(x=values, name=t, marker_color=COLORS[t], opacity=0.55,
                                       xbins=dict(size=4), legendgroup=t), row=1, col=1)
            fig.add_trace(go.Scatter(x=values, y=cdf, mode="lines", line=dict(color=COLORS[t]), legendgroup=t,
                                     showlegend=False), row=1, col=2)
        fig.update_layout(barmode="overlay", title=f"{name}: where perturbations blow up")
        parts.append(figure_html(fig))

        fig = make_subplots(rows=1, cols=3, subplot_titles=("final-layer L2 vs step", "next-token KL vs step",
                                                            "plateau: L2 from target towards noise"))
        grid = GRID_MAX / (d["n_steps"] - 1)
        for t in TARGET_TYPES:
            for col, key in ((1, "l2"), (2, "kl"), (3, "plateau_l2")):
                for j, curve in enumerate(d["examples"][t][key]):
                    fig.add_trace(go.Scatter(x=[k * grid for k in range(len(curve))], y=curve, mode="lines",
                                             line=dict(color=COLORS[t], width=1), name=t, legendgroup=t,
                                             showlegend=(col == 1 and j == 0)), row=1, col=col)
        if d.get("plateau_threshold"):
            fig.add_hline(y=d["plateau_threshold"], line_dash="dot", row=1, col=3)
        fig.update_layout(title=f"{name}: example curves (x: step on the 100-point grid)")
        parts.append(figure_html(fig))

        if d.get("plateau"):
            fig = go.Figure()
            for t, values in d["plateau"]["per_sample"].items():
                fig.add_trace(go.Box(y=values, name=t, marker_color=COLORS[t], boxmean=True))
            fig.update_layout(title=f"{name}: plateau length (steps before L2 reaches the threshold)",
                              yaxis_title="steps")
            parts.append(figure_html(fig))
    return "\n".join(parts)


SPEC = register_eval(EvalSpec(
    name="synthetic",
    config_cls=SyntheticConfig,
    run=run,
    description="synthetic activations (Giglemiani et al. 2024): does the model treat activations built from "
                "SAE latents like real ones? MS step of perturbations towards real, SAE-reconstructed, "
                "synthetic and random targets; activation plateaus",
    presets={
        # ~60-90 s per SAE on two CPU cores: fewer samples and steps, no relative interpolation.
        "demo": {"n_samples": 48, "n_fit": 750, "n_steps": 40, "step_size": "auto", "relative": False,
                 "n_density_tokens": 16384, "n_examples": 3},
        "tiny": {"n_samples": 6, "n_fit": 80, "n_steps": 8, "step_size": "auto", "n_density_tokens": 2048,
                 "density_ctx_len": 32, "structured_pool": 20, "n_examples": 2},
    },
    report=report_section,
))
