"""The SAE-independent part of the core eval, computed once per run and reused for every SAE.

Per (model, hooks, contexts, position options) the run's memo keeps, for each batch of eval contexts: the
activation at the splice hook (and, for transcoders, the encoder's input at its own hook), the state to continue
the model from there (``host.prefix``), and what KL needs of the clean next-token distribution
(:class:`~saeval.analysis.reconstruction.CleanDistribution`, d_model + 3 numbers per position instead of V
log-probs); plus the summed clean and zero-ablated CE and KL. An SAE then costs its encode/decode and one run of
the blocks after the hook with its reconstruction spliced in; the density pass, one encode of memoised
activations. Models whose logits are not affine in the final normed residual (Gemma-2's soft-capping), and
models in bf16/fp16, keep no clean distribution: each SAE reruns the clean model from the stored activation
beside its own splice (still no prefix and no zero-ablated run).

Beyond ``shared_memory_mb`` nothing is kept: every SAE recomputes the batches as it goes (the former cost).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeval.analysis.reconstruction import (
    CleanDistribution,
    clean_beside_spliced,
    next_token_ce,
    next_token_stats,
    splice,
    uniform_run_stats,
    with_reconstruction,
)
from saeval.data.activations import (
    ActivationBatch,
    SharedCapture,
    check_finite,
    run_activations,
    stream_activations,
    tokens_key,
)
from saeval.errors import SaevalError
from saeval.progress import track

KLMethod = Literal["projected", "recomputed"]


def tensor_bytes(*values: Any) -> int:
    """Bytes held by the tensors inside ``values`` (nested tuples, lists, dicts, dataclasses), each storage once."""
    seen: set[int] = set()
    total = 0

    def visit(value: Any) -> None:
        nonlocal total
        if isinstance(value, Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, tuple | list):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                visit(getattr(value, name))

    for v in values:
        visit(v)
    return total


def contexts_digest(contexts_NL: Tensor) -> str:
    return hashlib.blake2b(contexts_NL.detach().cpu().contiguous().numpy().tobytes(), digest_size=8).hexdigest()


def linear_unembedding(host) -> Tensor | None:
    """W_VD when the host's logits are ``final_norm(resid) @ W.T + b`` (what CleanDistribution needs) and the
    model runs in float32 or float64; None otherwise. Soft-capping or another head breaks the identity; in
    bf16/fp16 the logits' own rounding (an ulp of 20 is 0.125 in bf16) would separate the projection from the
    elementwise KL of those rounded logits, which the clean rerun reproduces exactly."""
    head = host.model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or getattr(host.config, "final_logit_softcapping", None):
        return None
    if head.weight.dtype not in (torch.float32, torch.float64):
        return None
    return head.weight


@dataclass
class BaselineBatch:
    """One batch of eval contexts, as every SAE sees it."""

    tokens_BL: Tensor
    mask_BL: Tensor  # ordinary (non-special) tokens
    acts_BLD: Tensor  # at the splice hook (hook_out), in the model's dtype
    x_in_ND: Tensor | None  # transcoders: the encoder's input (hook_in) at ordinary tokens, float32
    state: Any = None  # PrefixState at hook_out (None without CE)
    clean: Tensor | CleanDistribution | None = None  # clean log-probs (transient) or their CleanDistribution

    def encoder_input(self) -> Tensor:
        return self.x_in_ND if self.x_in_ND is not None else self.acts_BLD[self.mask_BL].float()

    def target(self) -> Tensor:
        return self.acts_BLD[self.mask_BL].float()


@dataclass
class CoreBaseline:
    """The SAE-independent passes over the eval contexts; iterate :meth:`batches` once per SAE."""

    hook_in: str
    hook_out: str
    contexts_NL: Tensor
    batch_size: int
    compute_ce: bool
    zero_ablation_positions: str
    kl_last: bool
    budget_bytes: int
    kept: list[BaselineBatch] = field(default_factory=list)
    complete: bool = False
    store: bool = True  # False once the stored batches would exceed the budget
    kl_method: KLMethod | None = None
    # A complete baseline of the same model and contexts at another hook: its clean distributions are this one's
    # (the clean model does not depend on the hook), so only the zero-ablated run is new.
    clean_from: CoreBaseline | None = None
    # Summed over all batches (complete after the first full iteration): clean CE, zero CE, zero KL, counts.
    ce_clean: float = 0.0
    ce_zero: float = 0.0
    kl_zero: float = 0.0
    n_ce: int = 0
    n_kl: int = 0
    # The run's activations at hook_out (run_activations): each kept batch's go there, for the windows passes.
    share_into: dict[str, Tensor] | None = None
    # The zero-ablated run's (logits_V, normed_D) when it is one vector at every position (uniform_zero_run,
    # looked for once per baseline); None: each batch runs it in full.
    zero_uniform: tuple[Tensor, Tensor] | None = None

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.kept)

    def batches(self, host, description: str) -> Iterator[BaselineBatch]:
        if self.complete:
            yield from track(self.kept, description)
            return
        self.kept = []
        self.ce_clean = self.ce_zero = self.kl_zero = 0.0
        self.n_ce = self.n_kl = 0
        starts = range(0, len(self.contexts_NL), self.batch_size)
        head = linear_unembedding(host) if self.compute_ce else None
        self.kl_method = None if not self.compute_ce else "projected" if head is not None else "recomputed"
        self.store = self.store and self.budget_bytes > 0
        source = self.clean_from
        if source is None or not (source.complete and source.kl_method == "projected" == self.kl_method
                                  and len(source.kept) == len(starts)):
            source = None
        for i, start in enumerate(track(starts, description)):
            shared = source.kept[i].clean if source is not None else None
            batch, pending = self._build(host, self.contexts_NL[start : start + self.batch_size], head, shared)
            if self.store and i == 0:
                size = self._stored_bytes(batch, head)
                self.store = size * len(starts) <= self.budget_bytes  # else every SAE recomputes the batches
            if self.store:
                # Every SAE, the first included, meets the same clean reference, so a result does not depend on
                # the order the SAEs ran in: the projection, or (no affine head) a rerun of the clean model.
                if isinstance(batch.clean, Tensor):
                    batch.clean = pending
                self.kept.append(batch)
                if self.share_into is not None:
                    self.share_into[tokens_key(batch.tokens_BL)] = batch.acts_BLD
            yield batch
            if isinstance(batch.clean, Tensor):  # clean log-probs (V per position) serve one iteration only
                batch.clean = None
        if source is not None:
            self.ce_clean = source.ce_clean
        self.complete = self.store
        if not self.store:
            self.kept = []

    def _stored_bytes(self, batch: BaselineBatch, head: Tensor | None) -> int:
        """What keeping ``batch`` costs, its clean distribution's projection included."""
        size = tensor_bytes(batch.tokens_BL, batch.mask_BL, batch.acts_BLD, batch.x_in_ND, batch.state)
        if head is not None and batch.clean is not None:
            positions = batch.tokens_BL.numel()
            size += positions * head.shape[1] * (head.element_size() + batch.acts_BLD.element_size()) + 16 * positions
        return size

    def _add_zero(self, ce_zero: float, kl_zero: float, n_ce: int, n_kl: int) -> None:
        self.ce_zero += ce_zero
        self.kl_zero += kl_zero
        self.n_ce += n_ce
        self.n_kl += n_kl

    @torch.inference_mode()
    def _build(self, host, tokens_BL: Tensor, head: Tensor | None, shared_clean: CleanDistribution | None = None,
               ) -> tuple[BaselineBatch, CleanDistribution | None]:
        """Run up to hook_out (capturing hook_in on the way), then the clean continuation (none, given the batch's
        ``shared_clean`` from another hook) and the zero-ablated one (none when it is ``zero_uniform``).
        With the batch, its clean distribution when the unembedding ``head`` is affine.

        The zero-ablated KL goes through that CleanDistribution whenever there is one, so it is the same number
        whether this baseline ran its own clean continuation, borrowed another hook's, or keeps nothing."""
        mask = host.ordinary_mask(tokens_BL).to(host.device)
        captured: list[Tensor] = []
        transcoder = self.hook_in != self.hook_out
        with host.hooks(captures={self.hook_in: captured} if transcoder else None):
            if self.compute_ce:
                acts, state = host.prefix(tokens_BL, self.hook_out)
            else:
                acts, state = host.capture(tokens_BL, [self.hook_out])[self.hook_out], None
        check_finite(acts, f"{host.name} {self.hook_out}")
        x_in = None
        if transcoder:
            if not captured:
                raise SaevalError(f"transcoder input {self.hook_in} was not reached before {self.hook_out}")
            x_in = captured[0][mask].float()
            check_finite(x_in, f"{host.name} {self.hook_in}")
        batch = BaselineBatch(tokens_BL, mask, acts, x_in, state)
        if not self.compute_ce:
            return batch, None
        if shared_clean is not None:
            batch.clean = shared_clean
            self._add_zero(*self._zero_sums(host, batch, shared_clean))
            return batch, None
        resid = host.residual_from(state, acts)
        logits = host.logits_from_residual(resid).float()
        clean_logp = F.log_softmax(logits, dim=-1)
        self.ce_clean += next_token_ce(clean_logp, tokens_BL, mask, self.kl_last)[0]
        clean = None if head is None else CleanDistribution.of(logits, host.final_norm(resid), head, clean_logp)
        self._add_zero(*self._zero_sums(host, batch, clean if clean is not None else clean_logp))
        batch.clean = clean_logp
        return batch, clean

    def _zero_sums(self, host, batch: BaselineBatch, reference: Tensor | CleanDistribution,
                   ) -> tuple[float, float, int, int]:
        """The zero-ablated run's summed CE and KL(reference || it), with their position counts."""
        if self.zero_uniform is not None:
            return uniform_run_stats(*self.zero_uniform, reference, batch.tokens_BL, batch.mask_BL, self.kl_last)
        zero = torch.zeros_like(batch.acts_BLD)
        if self.zero_ablation_positions != "all":
            zero = splice(batch.acts_BLD, zero, batch.mask_BL)
        resid = host.residual_from(batch.state, zero)
        normed = host.final_norm(resid) if isinstance(reference, CleanDistribution) else None
        return next_token_stats(host.logits_from_residual(resid), reference, batch.tokens_BL, batch.mask_BL,
                                self.kl_last, normed_BLD=normed)


@torch.inference_mode()
def uniform_zero_run(host, tokens_BL: Tensor, hook: str, positions: int = 4) -> tuple[Tensor, Tensor] | None:
    """The run from ``hook`` with the residual stream zeroed at every position, as one (logits_V, normed_D).

    When every position of the residual stream holds the same vector, every later position does too: each
    attention head averages identical values, however its weights fall (causal mask, rotary, ALiBi), and the
    rest acts per position. So the zero-ablated run of every context is one vector, and a few positions of one
    context give it. The first ``positions`` positions are run and must agree; they would not for a model that
    adds position-dependent terms after the hook, and then (or for a hook inside a block, where zeroing leaves
    the residual stream alone) this returns None and the caller runs the full zero-ablated batch."""
    if host.hook(hook).kind not in ("hook_resid_pre", "hook_resid_post") or tokens_BL.shape[1] < 2:
        return None
    acts, state = host.prefix(tokens_BL[:1, :positions], hook)
    resid_PD = host.residual_from(state, torch.zeros_like(acts))[0]
    if not torch.allclose(resid_PD, resid_PD[:1].expand_as(resid_PD), rtol=1e-4, atol=1e-5):
        return None
    return host.logits_from_residual(resid_PD[0]).float(), host.final_norm(resid_PD[0])


def core_baseline(ctx, hook_in: str, hook_out: str, contexts_NL: Tensor, config) -> CoreBaseline:
    """The run's CoreBaseline for these hooks, contexts and position options (built lazily by the first SAE)."""
    # What the clean continuation depends on; the baseline adds its hooks and the options of its own passes.
    clean_key = ("core-clean", ctx.host.name, id(ctx.host), contexts_digest(contexts_NL), tuple(contexts_NL.shape),
                 config.batch_size, config.compute_ce, config.kl_positions)
    key = ("core-baseline", *clean_key[1:], hook_in, hook_out, config.zero_ablation_positions,
           config.shared_memory_mb)
    if key not in ctx.memo:
        ctx.memo[key] = CoreBaseline(hook_in, hook_out, contexts_NL, config.batch_size, config.compute_ce,
                                     config.zero_ablation_positions, config.kl_positions == "ordinary",
                                     int(config.shared_memory_mb * 2**20),
                                     share_into=run_activations(ctx.memo, ctx.host, hook_out),
                                     zero_uniform=uniform_zero_run(ctx.host, contexts_NL, hook_out)
                                     if config.compute_ce and config.zero_ablation_positions == "all" else None)
    baseline = ctx.memo[key]
    # The first baseline over these contexts lends its clean distributions to those at other hooks of the run.
    source = ctx.run_memo.setdefault(clean_key, baseline)
    if source is not baseline and source.complete and not baseline.complete:
        baseline.clean_from = source
    return baseline


def spliced_sums(host, baseline: CoreBaseline, batch: BaselineBatch, xhat_ND: Tensor) -> tuple[float, float]:
    """Summed CE and KL(clean || run) of one batch with ``xhat`` spliced in at ordinary tokens of hook_out."""
    recon = with_reconstruction(batch.acts_BLD, batch.mask_BL, xhat_ND)
    if isinstance(batch.clean, CleanDistribution):
        resid = host.residual_from(batch.state, recon)
        logits = host.logits_from_residual(resid)
        ce, kl, _, _ = next_token_stats(logits, batch.clean, batch.tokens_BL, batch.mask_BL, baseline.kl_last,
                                        normed_BLD=host.final_norm(resid))
        return ce, kl
    if batch.clean is not None:  # this iteration's clean log-probs, at hand
        clean_logp, logits = batch.clean, host.run_from(batch.state, recon).float()
    else:  # no clean distribution kept: rerun the clean model from the stored activation beside the splice
        _, clean_logp, logits = clean_beside_spliced(host, batch.state, batch.acts_BLD, recon)
    ce, kl, _, _ = next_token_stats(logits, clean_logp, batch.tokens_BL, batch.mask_BL, baseline.kl_last)
    return ce, kl


@dataclass
class DensityActivations:
    """The density-only contexts' activation batches at the encoder's hook, kept when within budget."""

    chunks: list[ActivationBatch] | None
    nbytes: int = 0


def density_activations(ctx, hook_in: str, contexts_NL: Tensor, batch_size: int, budget_bytes: int,
                        description: str) -> Iterator[Tensor]:
    """Encoder inputs (ordinary tokens, float32) of the density contexts in batches: captured once per run when
    they fit in ``budget_bytes``, else captured again for each SAE (capture stops after hook_in's block). Within
    budget the captures go through the run's activations at hook_in (SharedCapture), so a windows pass over the
    same contexts, before or after, runs no forward for them."""
    host = ctx.host
    key = ("core-density", host.name, id(host), hook_in, contexts_digest(contexts_NL), tuple(contexts_NL.shape))
    kept: DensityActivations | None = ctx.memo.get(key)
    if kept is not None and kept.chunks is not None:
        for batch in track(kept.chunks, description):
            yield batch.flat()
        return
    fits = contexts_NL.numel() * host.d_model * host.dtype.itemsize <= budget_bytes if kept is None else False
    source = SharedCapture(host, hook_in, run_activations(ctx.memo, host, hook_in)) if fits else host
    chunks: list[ActivationBatch] = []
    total = math.ceil(len(contexts_NL) / batch_size)
    for batch in track(stream_activations(source, hook_in, contexts_NL, batch_size), description, total=total):
        if fits:
            chunks.append(batch)
        yield batch.flat()
    ctx.memo[key] = DensityActivations(chunks if fits else None, tensor_bytes(chunks) if fits else 0)


def density_bytes(ctx, hook_in: str, contexts_NL: Tensor) -> int:
    kept = ctx.memo.get(("core-density", ctx.host.name, id(ctx.host), hook_in, contexts_digest(contexts_NL),
                         tuple(contexts_NL.shape)))
    return 0 if kept is None else kept.nbytes
