"""Self-explanation of SAE latents (Kharlapenko, neverix, Nanda, Conmy 2024; methods.md C1).

Every placeholder "X" token of a chat prompt ("Repeat "X" four times exactly as it is written." or "What is
the meaning of the word "X"?") is REPLACED by scale * unit(W_dec[f]) at an early layer's input (the paper's
REP_LAYER = 2, whatever layer the SAE reads), and the model completes the prompt: the completion is the
latent's explanation. The quality depends on the scale, so a sweep over scales measures, at the last prompt
position:

- self-similarity: cos(residual at a late probe layer, W_dec[f]) minus its value at scale 0;
- entropy of the next-token distribution minus its value at scale 0;
- cross-entropy against a baseline run where X holds the unit-norm mean token embedding.

The chosen scale maximises self-similarity; a latent whose self-similarity never exceeds the threshold is
flagged as a failure. Generations (one per scale of a coarser grid, temperature 1) are ranked by
0.4 * minmax(self-similarity) - 0.6 * minmax(cross-entropy) at their scale; the best three are the
explanations.

Departures from the reference code (neverix/micrlhf-progress, sprint/scale_tuning_gemma.py and
sprint/self_explanation/rate_new.py), on purpose; ``selfsim="reference"`` reproduces the first three:

- its self-similarity divides each residual's dot product with W_dec[f] by the norm of the whole batch of
  64 sweep residuals, not by the row's own norm, so its values are about sqrt(64) = 8 times smaller than a
  cosine and its 0.01 filter is about 0.08 in cosine units: saeval uses per-row cosines and 0.08;
- it picks the scale at ``argmax(selfsim[1:]) - 1``, two grid points below the maximum (the last scale when
  the maximum is at index 1): saeval takes the argmax;
- it scores text i of the 32 generations at sweep index ``int(i / len(texts) * len(metric))``, which is not
  the search scale nearest the text's scale for half of them: saeval scores each text at its nearest scale;
- decoder rows are unit-normalised before injection (the reference injects scale * the raw row), because
  saeval SAEs may fold an input scale into W_dec, which would rescale the sweep.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.errors import SaevalError
from saeval.evals.base import EvalContext
from saeval.evals.self_explanation.config import (
    PLACEHOLDER,
    TEMPLATES,
    Generation,
    ScaleSweep,
    SelfExplanation,
    SelfExplanationConfig,
)
from saeval.hosts.lm import pad_rows
from saeval.progress import track


def probe_hook_for(host, config: SelfExplanationConfig) -> str:
    return config.probe_hook or f"blocks.{min(host.n_layers - 1, round(16 / 18 * host.n_layers))}.hook_resid_pre"


def build_prompt(host, template: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt and the positions of its placeholder tokens."""
    if template not in TEMPLATES:
        raise SaevalError(f"unknown self-explanation template {template!r}; use one of {', '.join(TEMPLATES)}")
    user, reply = TEMPLATES[template]
    tok = host.tokenizer
    if tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        ids = tok(text + reply, add_special_tokens=False)["input_ids"]
    else:  # base models: plain text after BOS
        ids = [host.bos_id] + tok(f"{user}\n{reply}", add_special_tokens=False)["input_ids"]
    positions = [i for i, t in enumerate(ids) if tok.decode([t]).strip() == PLACEHOLDER]
    if not positions:
        raise SaevalError(
            f"the tokenizer of {host.name} merges the placeholder X with its neighbours in template "
            f"{template!r}: pick another template"
        )
    return ids, positions


def _check_hooks(host, config: SelfExplanationConfig) -> tuple[str, str]:
    rep, probe = host.hook(config.rep_hook), host.hook(probe_hook_for(host, config))
    if rep.kind not in ("hook_resid_pre", "hook_resid_post"):
        raise SaevalError(f"rep_hook {config.rep_hook} must be a residual hook (hook_resid_pre/post)")

    def order(p) -> tuple[int, int]:
        return p.layer, int(p.kind != "hook_resid_pre")

    if order(probe) <= order(rep):
        raise SaevalError(f"probe hook {probe.name} must come after rep_hook {rep.name}")
    return rep.name, probe.name


def unit_decoder_rows(sae, latents: Sequence[int]) -> Tensor:
    bad = [f for f in latents if not 0 <= int(f) < sae.d_sae]
    if bad:
        raise SaevalError(f"latent index {bad[0]} is out of range for SAE {sae.name} with d_sae={sae.d_sae}")
    return F.normalize(sae.W_dec.detach().float()[torch.tensor([int(f) for f in latents], dtype=torch.long)], dim=-1)


DEPARTURES = {
    "selfsim": "self-similarity is the per-row cosine of the probe residual with the decoder row; the reference "
    "divides by the norm of the whole batch of 64 sweep residuals (about 8 times a row's norm), which makes a "
    "latent's value depend on the residual norms at the other scales",
    "threshold": "the failure threshold defaults to 0.08 = 0.01 x sqrt(64), the reference's 0.01 filter in "
    "cosine units (with residual rows of about equal norm)",
    "argmax": "the chosen scale is the argmax of self-similarity; the reference takes argmax(selfsim[1:]) - 1, "
    "two grid points below the maximum (the last scale when the maximum is at index 1)",
    "text_metric": "each text is scored at the search scale nearest its generation scale; the reference scores "
    "text i at sweep index int(i / len(texts) * len(metric)), a different index for half of 32 texts on 64 "
    "scales",
    "unit_rows": "decoder rows are unit-normalised before injection (the reference injects scale x the raw "
    "row): saeval SAEs may fold an input scale into W_dec",
}


def departures(config: SelfExplanationConfig) -> list[str]:
    """Where this config departs from the reference code, and why (reference mode keeps only the last)."""
    keys = ["unit_rows"] if config.selfsim == "reference" else list(DEPARTURES)
    if config.selfsim == "cosine" and config.selfsim_threshold is not None:
        keys.remove("threshold")
    return [DEPARTURES[k] for k in keys]


def reference_selfsim(resid_SD: Tensor, d_D: Tensor) -> np.ndarray:
    """The reference's self-similarity of one latent's sweep: resid @ d / ||resid|| / ||d||, where ||resid|| is
    the norm of the whole [scales, d_model] batch, minus its value at the sweep's first scale."""
    sim = (resid_SD.double() @ d_D.double()) / resid_SD.double().norm() / d_D.double().norm()
    return (sim - sim[0]).numpy()


def chosen_index(selfsim: np.ndarray, mode: str) -> int:
    """Index of the chosen scale: the argmax; in reference mode argmax(selfsim[1:]) - 1 as the reference
    computes it, a Python index (-1, the last scale, when the maximum is at index 1)."""
    if mode == "reference":
        return (int(np.argmax(selfsim[1:])) - 1) % len(selfsim)
    return int(np.argmax(selfsim))


def text_metric_indices(gen_scales: Sequence[float], search_scales: Sequence[float], mode: str) -> list[int]:
    """For each of a latent's texts (in generation order), the sweep index its metric is read at: the search
    scale nearest its scale; in reference mode int(i / len(texts) * len(metric)), its position in the list."""
    n, scales = len(gen_scales), np.asarray(search_scales)
    if mode == "reference":
        return [int(i / n * len(scales)) for i in range(n)]
    return [int(np.abs(scales - s).argmin()) for s in gen_scales]


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 1e-12 else np.zeros_like(x)


def _cache_kwarg(model) -> str:
    """The name the model's forward takes its KV cache under (``cache`` in recent transformers)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefix_cache(host, tokens_1L: Tensor):
    """The KV cache of the prompt's positions before its first placeholder, or None when the model's cache
    cannot be tiled over a batch (then every row runs in full)."""
    out = host.model(input_ids=tokens_1L.to(host.device), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return cache if hasattr(cache, "batch_repeat_interleave") else None


@torch.inference_mode()
def last_position_rows(
    host, ids: list[int], positions: list[int], vectors_RD: Tensor, rep: str, probe: str, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Next-token log-probabilities [R, V] and the probe residual [R, D] at the prompt's last position, with the
    placeholder positions of row r replaced by vectors_RD[r] at ``rep``.

    The positions before the first placeholder are the same in every row (causal attention): they run once, and
    each batch continues from their KV cache, so a row costs its suffix (for SmolLM2's "meaning" prompt 18 of
    50 positions, all layers) instead of the whole prompt from ``rep`` on."""
    tokens = torch.tensor([ids])
    p0 = min(positions)
    cache = _prefix_cache(host, tokens[:, :p0]) if p0 > 0 else None
    base = state = None
    if cache is None:
        base, state = host.prefix(tokens, rep)
    logp_rows, resid_rows = [], []
    for s in range(0, len(vectors_RD), batch_size):
        vec = vectors_RD[s : s + batch_size]
        store: list[Tensor] = []
        if cache is not None:
            rows = copy.deepcopy(cache)
            rows.batch_repeat_interleave(len(vec))
            at = [p - p0 for p in positions]

            def replace(acts_BLD: Tensor, vec=vec, at=at) -> Tensor:
                acts_BLD = acts_BLD.clone()
                acts_BLD[:, at] = vec[:, None, :].to(acts_BLD)
                return acts_BLD

            params = inspect.signature(host.model.forward).parameters
            keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
            with host.hooks(interventions={rep: replace}, captures={probe: store}):
                out = host.model(input_ids=tokens[:, p0:].repeat(len(vec), 1).to(host.device), use_cache=True,
                                 **{_cache_kwarg(host.model): rows}, **keep)
            logits = out.logits
        else:
            acts = base.repeat(len(vec), 1, 1)
            acts[:, positions] = vec[:, None, :].to(acts)
            with host.hooks(captures={probe: store}):
                resid_BLD = host.residual_from(state, acts)
            # Only the last position is unembedded: the full [batch, positions, vocab] logits would cost more
            # memory and time than a third of the blocks.
            logits = host.logits_from_residual(resid_BLD[:, -1:])
        logp_rows.append(F.log_softmax(logits[:, -1].float(), dim=-1).cpu())
        resid_rows.append(store[0][:, -1].float().cpu())
    return torch.cat(logp_rows), torch.cat(resid_rows)


@torch.inference_mode()
def scale_sweep(host, dirs_FD: Tensor, config: SelfExplanationConfig) -> list[ScaleSweep]:
    """Self-similarity, entropy and cross-entropy over the scale grid, for each direction (unit rows)."""
    rep, probe = _check_hooks(host, config)
    ids, positions = build_prompt(host, config.template)
    scales = torch.linspace(config.min_scale, config.max_scale, config.n_search_scales)
    emb = host.model.get_input_embeddings().weight.detach().float()
    mean_emb = F.normalize(emb.mean(0), dim=0)
    # Shared reference variants: X = 0 (the scale-0 reference) and X = unit mean embedding (cross-entropy).
    vectors = torch.stack([torch.zeros(host.d_model), mean_emb] + [s * d for d in dirs_FD for s in scales])
    logp, resid = last_position_rows(host, ids, positions, vectors.to(host.dtype), rep, probe, config.batch_size)
    entropy = -(logp.exp() * logp).sum(-1)
    S = len(scales)
    threshold, _ = config.threshold()
    out = []
    for i, d in enumerate(dirs_FD):
        rows = slice(2 + i * S, 2 + (i + 1) * S)
        if config.selfsim == "reference":  # one latent's sweep is one batch there (PICK_BATCH = 64 scales)
            selfsim = reference_selfsim(resid[rows], d)
        else:
            cos = F.cosine_similarity(resid[rows], d[None], dim=-1)
            cos0 = F.cosine_similarity(resid[:1], d[None], dim=-1)
            selfsim = (cos - cos0).numpy()
        ent = (entropy[rows] - entropy[0]).numpy()
        crossent = -(logp[rows].exp() * logp[1:2]).sum(-1).numpy()
        best = chosen_index(selfsim, config.selfsim)
        out.append(
            ScaleSweep(
                scales=scales.tolist(),
                selfsim=selfsim.tolist(),
                entropy=ent.tolist(),
                crossent=crossent.tolist(),
                chosen_scale=float(scales[best]),
                max_selfsim=float(selfsim[best]),
                entropy_at_chosen=float(ent[best]),
                # The reference filters on the sweep's maximum, whatever scale it then picks.
                failed=bool(selfsim.max() <= threshold),
            )
        )
    return out


def extract_explanation(text: str, template: str = "repeat") -> str:
    """The explanation in a completion of the template's reply, which ends in an opened quote.

    repeat: the fourth repetition, up to its closing quote or the line end (what follows continues the list).
    meaning: the first line. The model often closes the quote on a word and explains after it ('forest" or
    "enclosed" in the context of horticulture'): cutting at the quote, as for repeat, would keep one word, so
    the line is kept with the prompt's opening quote restored. An empty quote is no explanation."""
    line = text.split("\n", 1)[0]
    quoted, closed, rest = line.partition('"')
    quoted = quoted.strip()
    if template == "repeat" or not closed or not quoted or not rest.strip():
        return quoted
    return f'"{quoted}"{rest.rstrip()}'


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor, list[int]]:
    """Left-padded ids, attention mask, and each row's offset (number of pad tokens)."""
    tokens, mask = pad_rows(rows, pad_id, left=True)
    return tokens, mask, [tokens.shape[1] - len(row) for row in rows]


def placeholder_intervention(positions_B: Sequence[Sequence[int]], vectors_BD: Tensor, prompt_len: int):
    """Replace each row's placeholder positions by its vector, during the prompt's prefill only (later
    generation steps see one new position at a time and pass through unchanged)."""

    def fn(acts_BLD: Tensor) -> Tensor:
        if acts_BLD.shape[1] != prompt_len:
            return acts_BLD
        acts_BLD = acts_BLD.clone()
        for b, pos in enumerate(positions_B):
            acts_BLD[b, list(pos)] = vectors_BD[b].to(acts_BLD)
        return acts_BLD

    return fn


def generate_with_vectors(
    host,
    prompts: Sequence[tuple[list[int], list[int]]],
    vectors_BD: Tensor,
    hook: str,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int = 0,
) -> list[str]:
    """Batched sampling of prompts (ids, placeholder positions) with their vector at the placeholders."""
    texts: list[str] = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        tokens, mask, offsets = left_pad([ids for ids, _ in chunk], host.pad_id)
        positions = [[p + off for p in pos] for (_, pos), off in zip(chunk, offsets, strict=True)]
        fn = placeholder_intervention(positions, vectors_BD[s : s + batch_size], tokens.shape[1])
        new = host.generate(
            tokens,
            mask,
            interventions={hook: fn},
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed + s,
        )
        texts += host.tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts


def ranking_metric(sweep: ScaleSweep, alpha: float) -> np.ndarray:
    """alpha * minmax(self-similarity) - (1 - alpha) * minmax(cross-entropy), per search scale."""
    return alpha * _minmax(np.array(sweep.selfsim)) - (1 - alpha) * _minmax(np.array(sweep.crossent))


def generation_scales(sweep: ScaleSweep, metric: np.ndarray, config: SelfExplanationConfig) -> list[float]:
    """ "grid": the paper's fixed grid; "best": the chosen scale, then the best-ranked other search scales
    (scale 0, no injection, excluded) -- a small generation budget is then spent where explanations are."""
    n = config.n_generation_scales
    if config.generation_scales == "grid":
        return [float(s) for s in np.linspace(config.min_scale, config.max_scale, n)]
    scales = np.array(sweep.scales)
    order = [int(j) for j in np.argsort(-metric, kind="stable") if scales[j] > 0]
    chosen = [sweep.chosen_scale] if sweep.chosen_scale > 0 else []
    rest = [float(scales[j]) for j in order if float(scales[j]) not in chosen]
    return (chosen + rest)[:n]


def self_explain(
    host, sae, latents: Sequence[int], config: SelfExplanationConfig, seed: int = 0, progress: str | None = None
) -> list[SelfExplanation]:
    """Scale sweep, then batched generation for every latent, then ranking of the generations."""
    latents = [int(f) for f in latents]
    dirs = unit_decoder_rows(sae, latents)
    if dirs.shape[1] != host.d_model:
        raise SaevalError(f"SAE {sae.name} has d_in={dirs.shape[1]} but {host.name} has d_model={host.d_model}")
    # Sweep in groups of latents so the progress bar moves and memory stays bounded.
    group = max(1, config.batch_size * 4 // max(config.n_search_scales, 1))
    sweeps: list[ScaleSweep] = []
    groups = range(0, len(latents), group)
    for g in track(groups, progress or f"self-explanation sweep {sae.name}", total=len(groups)):
        sweeps += scale_sweep(host, dirs[g : g + group], config)
    ids, positions = build_prompt(host, config.template)
    metrics = [ranking_metric(sw, config.alpha) for sw in sweeps]
    jobs = [
        (i, s)
        for i in range(len(latents))
        for s in generation_scales(sweeps[i], metrics[i], config)
        for _ in range(config.generations_per_scale)
    ]
    vectors = torch.stack([s * dirs[i] for i, s in jobs]) if jobs else torch.zeros(0, host.d_model)
    rep, _ = _check_hooks(host, config)
    texts = (
        generate_with_vectors(
            host,
            [(ids, positions)] * len(jobs),
            vectors,
            rep,
            config.max_new_tokens,
            config.temperature,
            config.batch_size,
            seed,
        )
        if jobs
        else []
    )
    results = []
    for i, f in enumerate(latents):
        mine = [(s, text) for (j, s), text in zip(jobs, texts, strict=True) if j == i]
        at = text_metric_indices([s for s, _ in mine], sweeps[i].scales, config.selfsim)
        gens = [Generation(scale=s, text=text, explanation=extract_explanation(text, config.template),
                           metric=float(metrics[i][k]))
                for (s, text), k in zip(mine, at, strict=True)]
        ranked = sorted(gens, key=lambda g: -g.metric)
        best: list[str] = []
        for gen in ranked:
            if gen.explanation and gen.explanation not in best:
                best.append(gen.explanation)
            if len(best) == config.n_best:
                break
        results.append(SelfExplanation(latent=f, sweep=sweeps[i], generations=gens, best=best))
    return results


def memo_self_explain(
    ctx: EvalContext, sae, latents: Sequence[int], config: SelfExplanationConfig
) -> list[SelfExplanation]:
    """self_explain through the run's memo: the embedding_score and self_explanation evals of one run share
    the explanations of the latents they both study (same config apart from the latent choice)."""
    key = f"self_explain|{id(sae)}|{ctx.seed}|{config.model_dump_json(exclude={'latents', 'n_latents'})}"
    memo: dict[int, SelfExplanation] = ctx.memo.setdefault(key, {})
    missing = [int(f) for f in latents if int(f) not in memo]
    if missing:
        memo.update({e.latent: e for e in self_explain(ctx.host, sae, missing, config, seed=ctx.seed)})
    return [memo[int(f)] for f in latents]
