"""A small SAE trainer: TopK, or ReLU + L1, on cached activations, with an AuxK loss that revives dead latents.

It exists so the embedded default (and the FaithfulSAE study) has SAEs to evaluate; it follows sparsify's
recipe (unit-norm decoder rows, encoder initialised as the decoder's transpose, b_dec at the data mean,
Adam with lr ~ 1/sqrt(d_sae), AuxK over latents dead for ``dead_tokens``) rather than trying to rival it.

``train_saes`` trains several SAEs from one pass over the activations: each shard is read once per epoch (or once,
held in memory, when they step in threads) and every SAE takes its own steps on it, with its own initialisation,
batch order and optimiser, so each result is the one ``train_sae`` gives for that config alone (with the same
intra-op threads: on a CPU of several cores the SAEs step in threads of their own, see _step_in_threads). TopK steps
compute their gradients by hand, as sparsify's kernels do: only the encoder's pre-activations are a dense
[batch, d_sae] product; decoding and every gradient touch just the k selected latents per token (sparse products and
index_add), which on a CPU is about three times faster than autograd through a dense [batch, d_sae] code (with
Adam's fused kernel). ``_loss`` is the autograd form of the same loss (ReLU training uses it, and tests check the
TopK gradients against it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saeval.errors import SaevalError
from saeval.progress import progress_bar
from saeval.saes.base import SAE, SAEConfig, create_sae
from saeval.saes.train_config import TrainConfig

__all__ = ["TrainConfig", "train_sae", "train_saes", "fold_act_scale", "threads_per_sae", "intra_op_threads"]

LOG_EVERY = 50
SHARED_SHARDS_BYTES = 2**31  # training activations held once in memory for SAEs stepping in threads


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


@dataclass
class _Run:
    """One SAE in training: its config, random stream (initialisation, then batch order), optimiser and log."""

    cfg: TrainConfig
    sae: SAE
    gen: torch.Generator
    opt: torch.optim.Optimizer
    tokens_since_fired: Tensor
    aux_k: int
    log: list[dict[str, float]] = field(default_factory=list)
    step: int = 0


def _start(cfg: TrainConfig, d_in: int, first: Tensor, scale: float, hook_name: str | None,
           model_name: str | None, name: str | None) -> _Run:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    sae = create_sae(SAEConfig(
        architecture=cfg.architecture, d_in=d_in, d_sae=cfg.d_sae, k=cfg.k if cfg.architecture == "topk" else None,
        hook_name=hook_name, model_name=model_name, act_scale=scale, name=name,
    ))
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(cfg.d_sae, d_in, generator=gen))
        _normalise_rows_(sae.W_dec.data)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_((first * scale).mean(0))
    if cfg.architecture == "topk":
        # The encoder is trained as [d_sae, d_in], the layout of the sparse backward's per-latent sums (f^T xc);
        # it is put back as W_enc [d_in, d_sae] when training ends.
        sae.W_enc = torch.nn.Parameter(sae.W_enc.data.T.contiguous())
    lr = cfg.lr or 2e-4 / math.sqrt(cfg.d_sae / 16384)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)  # fused: ~7x faster on CPU
    return _Run(cfg, sae, gen, opt, torch.zeros(cfg.d_sae, dtype=torch.long), cfg.aux_k or d_in // 2)


def _finish(run: _Run, copy_: bool = False) -> SAE:
    """The trained SAE in its stored form (W_enc [d_in, d_sae], input scale folded in); a copy, if asked, so
    training can go on."""
    sae = copy.deepcopy(run.sae) if copy_ else run.sae
    if run.cfg.architecture == "topk":
        sae.W_enc = torch.nn.Parameter(sae.W_enc.data.T.contiguous())
    sae.requires_grad_(False)
    return fold_act_scale(sae)


def train_saes(
    batches: Iterable[Tensor], n_tokens: int, d_in: int, configs: list[TrainConfig], hook_name: str | None = None,
    model_name: str | None = None, names: list[str | None] | None = None,
    on_epoch: Callable[[int, list[SAE | None]], None] | None = None,
) -> list[tuple[SAE, list[dict[str, float]]]]:
    """Train one SAE per config from one pass over ``batches`` per epoch (re-iterable, e.g. an ActivationCache;
    each item [n, d_in]). Each SAE equals what ``train_sae`` gives for its config alone with the same intra-op
    threads (``threads_per_sae``: on a multi-core CPU the SAEs step in threads of their own).

    Returns per config the SAE (input scale folded into its weights) and a log of (step, loss, fvu, dead
    fraction, L0). ``on_epoch(epoch, saes)``, when given, sees a finished copy of each SAE after every epoch
    (None for SAEs whose training ended earlier): the learning rate is constant, so the copy after epoch e is
    the SAE an e-epoch config trains (benchmarks sweep epochs with one run)."""
    names = list(names) if names is not None else [None] * len(configs)
    if len(names) != len(configs):
        raise SaevalError(f"train_saes got {len(configs)} configs but {len(names)} names")
    first = next(iter(batches)).float()
    if first.shape[-1] != d_in:
        raise SaevalError(f"training activations have width {first.shape[-1]} but d_in={d_in}")
    # Scale inputs to E||x|| = sqrt(d_in) so one learning rate and L1 coefficient suit any layer.
    scale = math.sqrt(d_in) / float(first.norm(dim=-1).mean())
    runs = [_start(cfg, d_in, first, scale, hook_name, model_name, name)
            for cfg, name in zip(configs, names, strict=True)]
    total_steps = sum(cfg.epochs * max(1, n_tokens // cfg.batch_size) for cfg in configs)
    label = names[0] if len(runs) == 1 else f"{len(runs)} SAEs"
    with progress_bar() as bar:
        task = bar.add_task(f"train {label or configs[0].architecture}", total=total_steps)

        def shown(run: _Run) -> None:
            fvu = f" fvu {run.log[-1]['fvu']:.3f}" if run.log else ""
            bar.update(task, completed=sum(r.step for r in runs), description=f"train {label or ''}{fvu}")

        if len(runs) > 1 and on_epoch is None and torch.get_num_threads() > 1:
            # The threads share the shards in memory when they fit; otherwise each reads them itself.
            fits = n_tokens * d_in * 4 <= SHARED_SHARDS_BYTES
            _step_in_threads(runs, [s.float() for s in batches] if fits else batches, scale, shown)
        else:
            for epoch in range(max(cfg.epochs for cfg in configs)):
                for shard in batches:
                    shard = shard.float()
                    for run in runs:
                        if epoch < run.cfg.epochs:
                            _train_on_shard(run, shard, scale)
                            shown(run)
                if on_epoch is not None:
                    on_epoch(epoch + 1, [_finish(r, copy_=True) if epoch < r.cfg.epochs else None for r in runs])
    return [(_finish(run), run.log) for run in runs]


def threads_per_sae(n_saes: int) -> int:
    """Intra-op threads each SAE steps with when ``n_saes`` train together on this machine's cores."""
    return max(1, torch.get_num_threads() // n_saes) if n_saes > 1 else torch.get_num_threads()


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (a process-wide setting), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _step_in_threads(runs: list[_Run], batches: Iterable[Tensor], scale: float,
                     shown: Callable[[_Run], None]) -> None:
    """Every SAE through all its epochs in a thread of its own, the cores divided among them (threads_per_sae).

    A training step multiplies [batch, d_in] by [d_in, d_sae] and then works on [batch, k]: too little to keep two
    cores busy, so on 2 cores two SAEs stepping side by side on one core each take 0.80x the time of the two
    stepping in turn on both (the demo's 576-latent pairs, 4 epochs: 2.9 s against 3.6 s). torch releases the GIL
    inside its operators. Each SAE still sees only its own initialisation, batch order and optimiser: its numbers
    are train_sae's for its config run with the same intra-op threads."""

    def work(run: _Run) -> None:
        for _ in range(run.cfg.epochs):
            for shard in batches:
                _train_on_shard(run, shard.float(), scale)  # float() returns an in-memory float shard itself
                shown(run)

    with intra_op_threads(threads_per_sae(len(runs))), ThreadPoolExecutor(len(runs)) as pool:
        for done in [pool.submit(work, run) for run in runs]:
            done.result()  # re-raises a worker's error here


def train_sae(
    batches: Iterable[Tensor], n_tokens: int, d_in: int, cfg: TrainConfig, hook_name: str | None = None,
    model_name: str | None = None, name: str | None = None,
) -> tuple[SAE, list[dict[str, float]]]:
    """Train on ``batches`` (re-iterable, e.g. an ActivationCache; each item [n, d_in]) for cfg.epochs.

    Returns the SAE (input scale folded into its weights) and a log of (step, loss, fvu, dead fraction, L0)."""
    return train_saes(batches, n_tokens, d_in, [cfg], hook_name, model_name, [name])[0]


def _train_on_shard(run: _Run, shard: Tensor, scale: float) -> None:
    cfg, sae = run.cfg, run.sae
    order = torch.randperm(len(shard), generator=run.gen)
    for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
        x = shard[order[start : start + cfg.batch_size]] * scale
        run.opt.zero_grad(set_to_none=True)
        if cfg.architecture == "topk":
            stats = _topk_grads(sae, x, cfg, run.tokens_since_fired, run.aux_k)
        else:
            loss, stats = _loss(sae, x, cfg, run.tokens_since_fired, run.aux_k)
            loss.backward()
        _drop_parallel_grad_(sae.W_dec)
        run.opt.step()
        with torch.no_grad():
            _normalise_rows_(sae.W_dec.data)
        run.step += 1
        if run.step % LOG_EVERY == 0 or run.step == 1:
            run.log.append({"step": run.step, **stats})


def _code(v_BK: Tensor, idx_BK: Tensor, d_sae: int) -> Tensor:
    """The sparse code f [B, d_sae] holding v[b, k] at latent idx[b, k] (the latents of a row are distinct, so
    with each row's latents sorted the COO indices are already coalesced)."""
    B, K = v_BK.shape
    idx_sorted, order = idx_BK.sort(dim=-1)
    where = torch.stack([torch.arange(B).repeat_interleave(K), idx_sorted.reshape(-1)])
    return torch.sparse_coo_tensor(where, v_BK.gather(-1, order).reshape(-1), (B, d_sae), is_coalesced=True,
                                   check_invariants=False)


def _latent_sums(w_BK: Tensor, idx_BK: Tensor, y_BD: Tensor, d_sae: int) -> Tensor:
    """[d_sae, D]: row f is the sum of w[b, k] y[b] over the (b, k) with idx[b, k] = f, i.e. f^T y for the
    sparse code f (a weight gradient that touches only the selected latents)."""
    B, K = w_BK.shape
    where = torch.stack([idx_BK.reshape(-1), torch.arange(B).repeat_interleave(K)])
    f_T = torch.sparse_coo_tensor(where, w_BK.reshape(-1), (d_sae, B), check_invariants=False)
    return torch.sparse.mm(f_T, y_BD)


@torch.no_grad()
def _topk_grads(sae: SAE, x: Tensor, cfg: TrainConfig, tokens_since_fired: Tensor, aux_k: int) -> dict[str, float]:
    """``_loss`` for TopK with gradients by hand, written into the parameters' .grad (W_enc as [d_sae, d_in]).

    Each decode is a sparse product; for dL/dxhat = g, dL/dW_dec = f^T g, dL/dv = (g W_dec^T) at the selected
    latents, and the encoder's gradients are sums over the selected latents of dL/dv times the input."""
    W_enc_FD, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    F = cfg.d_sae
    xc = x - b_dec
    pre_BF = torch.addmm(b_enc, xc, W_enc_FD.T).relu_()
    v_BK, idx_BK = pre_BF.topk(cfg.k, dim=-1)
    err = x - (torch.sparse.mm(_code(v_BK, idx_BK, F), W_dec) + b_dec)
    total_var = (x - x.mean(0)).pow(2).sum()
    fvu = err.pow(2).sum() / total_var
    g_xhat = err * (-2 / total_var)
    grad_W_dec = _latent_sums(v_BK, idx_BK, g_xhat, F)
    g_pre = (g_xhat @ W_dec.T).gather(1, idx_BK) * (v_BK > 0)
    grad_W_enc = _latent_sums(g_pre, idx_BK, xc, F)
    grad_b_enc = torch.zeros(F).index_add_(0, idx_BK.reshape(-1), g_pre.reshape(-1))
    fired = torch.zeros(F, dtype=torch.bool)
    fired[idx_BK[v_BK > 0]] = True
    tokens_since_fired += len(x)
    tokens_since_fired[fired] = 0
    dead = tokens_since_fired > cfg.dead_tokens
    n_dead = int(dead.sum())
    aux = 0.0
    if n_dead:
        # AuxK: the dead latents' top pre-activations try to explain what the live ones missed.
        va_BK, ia_BK = pre_BF.masked_fill_(~dead, 0).topk(min(aux_k, n_dead), dim=-1)
        miss = torch.sparse.mm(_code(va_BK, ia_BK, F), W_dec) - err
        miss_var = (err - err.mean(0)).pow(2).sum()
        aux = float(miss.pow(2).sum() / miss_var)
        g_miss = miss * (2 * cfg.aux_coeff / miss_var)
        grad_W_dec += _latent_sums(va_BK, ia_BK, g_miss, F)
        ga_pre = (g_miss @ W_dec.T).gather(1, ia_BK) * (va_BK > 0)
        grad_W_enc += _latent_sums(ga_pre, ia_BK, xc, F)
        grad_b_enc.index_add_(0, ia_BK.reshape(-1), ga_pre.reshape(-1))
    # xc = x - b_dec: b_dec's encoder-side gradient is -sum_(b,k) dL/dpre[b,k] W_enc[idx[b,k]] = -grad_b_enc W_enc.
    W_enc_FD.grad, b_enc.grad, W_dec.grad = grad_W_enc, grad_b_enc, grad_W_dec
    b_dec.grad = g_xhat.sum(0) - grad_b_enc @ W_enc_FD
    fvu_ = float(fvu)
    return {"loss": fvu_ + cfg.aux_coeff * aux, "fvu": fvu_, "aux": aux, "dead_frac": n_dead / len(dead),
            "l0": float((v_BK > 0).sum(-1).float().mean())}


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
