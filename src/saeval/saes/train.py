"""A small SAE trainer: TopK, or ReLU + L1, on cached activations, with an AuxK loss that revives dead latents.

It exists so the embedded default (and the FaithfulSAE study) has SAEs to evaluate; it follows sparsify's
recipe (unit-norm decoder rows, encoder initialised as the decoder's transpose, b_dec at the data mean,
Adam with lr ~ 1/sqrt(d_sae), AuxK over latents dead for ``dead_tokens``) rather than trying to rival it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from saeval.errors import SaevalError
from saeval.progress import progress_bar
from saeval.saes.base import SAE, SAEConfig, create_sae
from saeval.saes.train_config import TrainConfig

__all__ = ["TrainConfig", "train_sae", "fold_act_scale"]


def _normalise_rows_(W_dec: Tensor) -> None:
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))


def _drop_parallel_grad_(W_dec: torch.nn.Parameter) -> None:
    # Keeps decoder rows on the unit sphere: only the gradient tangent to each row is applied.
    if W_dec.grad is not None:
        parallel = (W_dec.grad * W_dec.data).sum(-1, keepdim=True)
        W_dec.grad.sub_(parallel * W_dec.data)


def fold_act_scale(sae: SAE) -> SAE:
    """Fold the input scaling into the weights so the SAE reads raw activations with act_scale 1 (the form
    other tools' formats can store): (s x - b) W = (x - b/s)(s W); (f W_dec + b)/s = f (W_dec/s) + b/s."""
    s = sae.cfg.act_scale
    with torch.no_grad():
        sae.W_enc.mul_(s)
        sae.W_dec.div_(s)
        sae.b_dec.div_(s)
        if not sae.cfg.apply_b_dec_to_input:
            raise SaevalError("fold_act_scale needs apply_b_dec_to_input")
    sae.cfg = sae.cfg.model_copy(update={"act_scale": 1.0})
    return sae


def train_sae(
    batches: Iterable[Tensor], n_tokens: int, d_in: int, cfg: TrainConfig, hook_name: str | None = None,
    model_name: str | None = None, name: str | None = None,
) -> tuple[SAE, list[dict[str, float]]]:
    """Train on ``batches`` (re-iterable, e.g. an ActivationCache; each item [n, d_in]) for cfg.epochs.

    Returns the SAE (input scale folded into its weights) and a log of (step, loss, fvu, dead fraction)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    first = next(iter(batches)).float()
    if first.shape[-1] != d_in:
        raise SaevalError(f"training activations have width {first.shape[-1]} but d_in={d_in}")
    # Scale inputs to E||x|| = sqrt(d_in) so one learning rate and L1 coefficient suit any layer.
    scale = math.sqrt(d_in) / float(first.norm(dim=-1).mean())
    sae = create_sae(SAEConfig(
        architecture=cfg.architecture, d_in=d_in, d_sae=cfg.d_sae, k=cfg.k if cfg.architecture == "topk" else None,
        hook_name=hook_name, model_name=model_name, act_scale=scale, name=name,
    ))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(cfg.d_sae, d_in, generator=gen))
        _normalise_rows_(sae.W_dec.data)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_((first * scale).mean(0))
    lr = cfg.lr or 2e-4 / math.sqrt(cfg.d_sae / 16384)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    aux_k = cfg.aux_k or d_in // 2
    tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    log: list[dict[str, float]] = []
    total_steps = cfg.epochs * max(1, n_tokens // cfg.batch_size)
    step = 0
    with progress_bar() as bar:
        task = bar.add_task(f"train {name or cfg.architecture}", total=total_steps)
        for _ in range(cfg.epochs):
            for shard in batches:
                shard = shard.float()
                order = torch.randperm(len(shard), generator=gen)
                for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
                    x = shard[order[start : start + cfg.batch_size]] * scale
                    loss, stats = _loss(sae, x, cfg, tokens_since_fired, aux_k)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    _drop_parallel_grad_(sae.W_dec)
                    opt.step()
                    with torch.no_grad():
                        _normalise_rows_(sae.W_dec.data)
                    step += 1
                    if step % 50 == 0 or step == 1:
                        log.append({"step": step, **stats})
                    bar.update(task, advance=1, description=f"train {name or ''} fvu {stats['fvu']:.3f}")
    sae.requires_grad_(False)
    return fold_act_scale(sae), log


def _loss(sae: SAE, x: Tensor, cfg: TrainConfig, tokens_since_fired: Tensor, aux_k: int) -> tuple[Tensor, dict]:
    # x is already scaled: run the SAE's maths with act_scale 1 here.
    xc = x - sae.b_dec
    pre = torch.relu(xc @ sae.W_enc + sae.b_enc)
    if cfg.architecture == "topk":
        values, idx = pre.topk(cfg.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, values)
    else:
        f = pre
    xhat = f @ sae.W_dec + sae.b_dec
    err = x - xhat
    total_var = (x - x.mean(0)).pow(2).sum()
    fvu = err.pow(2).sum() / total_var
    loss = fvu
    if cfg.architecture == "relu":
        loss = loss + cfg.l1_coeff * (f * sae.W_dec.norm(dim=-1)).sum(-1).mean() / x.shape[-1]
    with torch.no_grad():
        fired = (f > 0).any(0)
        tokens_since_fired += len(x)
        tokens_since_fired[fired] = 0
        dead = tokens_since_fired > cfg.dead_tokens
    aux = torch.zeros(())
    n_dead = int(dead.sum())
    if n_dead:
        # AuxK: the dead latents' top pre-activations try to explain what the live ones missed.
        dead_pre = torch.where(dead, pre, torch.zeros_like(pre))
        values, idx = dead_pre.topk(min(aux_k, n_dead), dim=-1)
        e_hat = torch.zeros_like(pre).scatter(-1, idx, values) @ sae.W_dec
        aux = (e_hat - err.detach()).pow(2).sum() / (err.detach() - err.detach().mean(0)).pow(2).sum()
        loss = loss + cfg.aux_coeff * aux
    stats = {"loss": float(loss.detach()), "fvu": float(fvu.detach()), "aux": float(aux.detach()),
             "dead_frac": n_dead / len(dead), "l0": float((f > 0).sum(-1).float().mean())}
    return loss, stats
