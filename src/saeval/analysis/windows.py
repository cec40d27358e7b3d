"""Top activated windows of many latents in ONE streaming pass over a corpus (FaithfulSAE case study).

Each context (BOS + ctx_len - 1 tokens) is cut into non-overlapping windows of ``window`` tokens after BOS.
A window is scored per latent three ways: ``mean`` activation, ``density`` (fraction of its tokens where the
latent is nonzero; ties broken by the mean) and ``max`` activation; the top ``k`` windows per criterion are
kept in running buffers, so memory is O(latents x k x window) however long the corpus is. Special tokens never
count (their activation is zeroed). Latents that never fire are reported in ``never_fired``, not dropped.

For scoring explanations the same pass can also keep, per latent, a uniform reservoir sample of its activating
windows (bottom-R random priorities, so it is deterministic for a seed) and the latents' max activation on a
fixed random pool of windows (the non-activating candidates), both O(latents x R).

Every latent's count of activating windows comes out of the pass (``WindowsResult.active_windows``), so a pass
over all latents can pick the ones worth explaining: ``pick_active_latents`` draws, seeded, among the latents
with at least a minimum of activating windows (the embedding score and the case study use it). The forward to
the hook depends on no SAE: ``shared_host`` keeps it in the run's memo so the next SAE's pass only encodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from saeval.analysis.window_records import CRITERIA, ActExample, LatentWindows
from saeval.data.activations import SharedCapture, check_finite, run_activations
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.progress import track


@dataclass
class WindowsResult:
    features: list[int]
    window: int
    k: int
    contexts_NL: Tensor
    n_tokens: int  # ordinary tokens seen
    n_windows: int
    latents: Mapping[int, LatentWindows]
    never_fired: list[int]
    # window id = context * windows_per_context + index; start position = 1 + index * window
    windows_per_context: int = 0
    # latent -> [(window id, max act)]: a uniform sample of its activating windows
    reservoir: Mapping[int, list[tuple[int, float]]] = field(default_factory=dict)
    pool_ids: list[int] = field(default_factory=list)
    pool_max: Mapping[int, list[float]] = field(default_factory=dict)  # latent -> max act on each pool window
    # latent -> number of windows where it fired: read for every latent (selection) without building its records
    active_windows: Mapping[int, int] = field(default_factory=dict)

    def window_tokens(self, window_id: int) -> list[int]:
        ctx, idx = divmod(window_id, self.windows_per_context)
        start = 1 + idx * self.window
        return self.contexts_NL[ctx, start : start + self.window].tolist()

    def window_id(self, example: ActExample) -> int:
        return example.context * self.windows_per_context + (example.start - 1) // self.window

    def explained_ids(self, latent: int) -> set[int]:
        """Windows shown as top windows of ``latent`` (under any criterion)."""
        lw = self.latents[latent]
        return {self.window_id(ex) for c in CRITERIA for ex in lw.criterion(c)}

    def as_json(self) -> dict:
        return {str(f): lw.model_dump(mode="json") for f, lw in self.latents.items()}


class WindowCollector:
    """Running top-k buffers (and optional reservoir / pool records) for the chosen latents of one SAE."""

    def __init__(
        self,
        sae,
        features: Sequence[int],
        window: int,
        k: int,
        windows_per_context: int,
        reservoir: int = 0,
        pool_ids: Sequence[int] = (),
        seed: int = 0,
    ):
        n = int(sae.d_sae)
        feats = [int(f) for f in features]
        bad = [f for f in feats if not 0 <= f < n]
        if bad:
            raise SaevalError(f"latent index {bad[0]} is out of range for SAE {sae.name} with d_sae={n}")
        if not feats:
            raise SaevalError("no latents given: pass at least one latent index")
        self.sae, self.window, self.k, self.wpc = sae, window, k, windows_per_context
        self.feats = torch.tensor(feats, dtype=torch.long)
        # Selecting columns is skipped only for exactly 0..d_sae-1 in order: any other list (a permutation too)
        # must be read through index_select.
        self.select = feats != list(range(n))
        F = len(feats)
        self.keys = {c: torch.full((F, k), -torch.inf, dtype=torch.float64) for c in CRITERIA}
        self.ids = {c: torch.full((F, k), -1, dtype=torch.long) for c in CRITERIA}
        self.acts = {c: torch.zeros(F, k, window) for c in CRITERIA}
        self.active_tokens = torch.zeros(F, dtype=torch.long)
        self.active_windows = torch.zeros(F, dtype=torch.long)
        self.max_act = torch.zeros(F)
        self.R = reservoir
        self.res_key = torch.full((F, reservoir), torch.inf, dtype=torch.float64)
        self.res_ids = torch.full((F, reservoir), -1, dtype=torch.long)
        self.res_max = torch.zeros(F, reservoir)
        self.gen = torch.Generator().manual_seed(seed)
        self.pool_pos = {int(w): i for i, w in enumerate(sorted(pool_ids))}
        self.pool_max = torch.zeros(len(self.pool_pos), F)
        self.n_tokens = 0

    @torch.inference_mode()
    def update(self, acts_BLD: Tensor, mask_BL: Tensor, first_context: int) -> None:
        B = acts_BLD.shape[0]
        W, n_w, k = self.window, self.wpc, self.k
        device = self.sae.W_enc.device
        f_BLF = self.sae.encode(acts_BLD.to(device))
        if self.select:
            f_BLF = f_BLF.index_select(-1, self.feats.to(device))  # much faster than f[..., idx] on CPU
        f_BLF = f_BLF.float().cpu()
        # Special tokens never count. Position 0 (BOS) is outside every window and the tail, so only specials
        # further in (EOS inside generated text, padding) need zeroing; skipping the common case saves a pass.
        if not bool(mask_BL[:, 1:].all()):
            f_BLF.mul_(mask_BL[..., None])
        self.n_tokens += int(mask_BL.sum())
        f_NWF = f_BLF[:, 1 : 1 + n_w * W].reshape(B * n_w, W, -1)
        max_NF = f_NWF.amax(1)
        mean64 = f_NWF.sum(1).double() / W
        active_FN = (max_NF > 0).T
        self.active_windows += active_FN.sum(1)
        self.max_act = torch.maximum(self.max_act, max_NF.amax(0))
        ids_N = torch.arange(B * n_w) + first_context * n_w
        # density: nonzero count, ties broken by the mean (the added term stays in [0, 0.5)).
        # (|sign| summed in float is exact for these small counts and ~8x faster than count_nonzero on CPU.)
        nonzero_NF = f_NWF.sign().abs_().sum(1)
        # Active tokens: those inside the windows plus the few after the last window (BOS is outside both).
        tail_F = f_BLF[:, 1 + n_w * W :].sign().abs_().sum((0, 1))
        self.active_tokens += (nonzero_NF.sum(0) + tail_F).long()
        density = nonzero_NF.double() + 0.5 * mean64 / (1 + mean64)
        keys = {"mean": mean64, "max": max_NF.double(), "density": density}
        # Only latents for which some new window beats their current k-th best are touched: once the buffers
        # have filled, that is a small fraction of them per batch.
        ids_FN = ids_N.expand(len(active_FN), -1)
        for c in CRITERIA:
            key_FN = keys[c].T.masked_fill(~active_FN, -torch.inf)
            rows = (key_FN.amax(1) > self.keys[c][:, -1]).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            top, pos = torch.cat([self.keys[c][rows], key_FN[rows]], 1).topk(k, dim=1)
            self.keys[c][rows] = top
            self.ids[c][rows] = _pick(pos, k, self.ids[c][rows], ids_FN[rows])
            # Only the rows x k kept windows are read from the batch: f_NWF[window, :, latent] per slot.
            fresh = f_NWF[(pos - k).clamp(min=0), :, rows[:, None]]
            old = self.acts[c][rows].gather(1, pos.clamp(max=k - 1)[..., None].expand(-1, -1, W))
            self.acts[c][rows] = torch.where((pos < k)[..., None], old, fresh)
        if self.R:
            # Reservoir: each activating window gets a uniform random priority; the R lowest are kept.
            u = torch.rand(active_FN.shape, generator=self.gen, dtype=torch.float64)
            u = u.masked_fill(~active_FN, torch.inf)
            rows = (u.amin(1) < self.res_key[:, -1]).nonzero()[:, 0]
            if len(rows):
                low, pos = torch.cat([self.res_key[rows], u[rows]], 1).topk(self.R, dim=1, largest=False)
                self.res_key[rows] = low
                self.res_ids[rows] = _pick(pos, self.R, self.res_ids[rows], ids_FN[rows])
                self.res_max[rows] = _pick(pos, self.R, self.res_max[rows], max_NF.T[rows])
        if self.pool_pos:
            for n, wid in enumerate(ids_N.tolist()):
                if wid in self.pool_pos:
                    self.pool_max[self.pool_pos[wid]] = max_NF[n]

    def result(self, tokenizer, contexts_NL: Tensor) -> WindowsResult:
        """The pass's records. Per-latent lists are built on first access (a pass over thousands of latents is
        usually read for a few of them), so finishing a pass costs O(latents), not O(latents x k x window)."""
        feats = self.feats.tolist()
        active = self.active_tokens.tolist()
        rows = contexts_NL.tolist()
        pieces: dict[int, str] = {}

        def text(token: int) -> str:
            if token not in pieces:
                pieces[token] = tokenizer.decode([token])
            return pieces[token]

        def latent_windows(i: int) -> LatentWindows:
            lists = {c: self._examples(c, i, rows, text) for c in CRITERIA}
            return LatentWindows.model_construct(
                latent=feats[i],
                fired=active[i] > 0,
                n_active_tokens=active[i],
                n_active_windows=int(self.active_windows[i]),
                max_act=float(self.max_act[i]),
                **lists,
            )

        def reservoir(i: int) -> list[tuple[int, float]]:
            keep = int(torch.isfinite(self.res_key[i]).sum())
            return list(zip(self.res_ids[i, :keep].tolist(), self.res_max[i, :keep].tolist(), strict=True))

        return WindowsResult(
            features=feats,
            window=self.window,
            k=self.k,
            contexts_NL=contexts_NL,
            n_tokens=self.n_tokens,
            n_windows=len(contexts_NL) * self.wpc,
            latents=LazyRecords(feats, latent_windows),
            never_fired=[f for f, n in zip(feats, active, strict=True) if n == 0],
            windows_per_context=self.wpc,
            reservoir=LazyRecords(feats, reservoir) if self.R else {},
            pool_ids=sorted(self.pool_pos),
            pool_max=LazyRecords(feats, lambda i: self.pool_max[:, i].tolist()),
            active_windows=dict(zip(feats, self.active_windows.tolist(), strict=True)),
        )

    def _examples(self, criterion: str, i: int, rows: list[list[int]], text) -> list[ActExample]:
        """Latent row ``i``'s kept windows under ``criterion``, best first."""
        W = self.window
        acts = self.acts[criterion][i]
        score = {"mean": acts.mean(-1), "max": acts.amax(-1), "density": (acts > 0).float().mean(-1)}[criterion]
        n_kept = int(torch.isfinite(self.keys[criterion][i]).sum())
        acts_l = (acts * 1e5).round().div(1e5).tolist()
        examples = []
        for slot, (wid, sc) in enumerate(zip(self.ids[criterion][i, :n_kept].tolist(), score.tolist(), strict=False)):
            ctx, idx = divmod(wid, self.wpc)
            start = 1 + idx * W
            tokens = rows[ctx][start : start + W]
            # model_construct: the fields are built here, typed already (no per-example validation).
            examples.append(
                ActExample.model_construct(
                    tokens=tokens, texts=[text(t) for t in tokens], acts=acts_l[slot], context=ctx, start=start,
                    score=sc,
                )
            )
        return examples


V = TypeVar("V")


class LazyRecords(Mapping[int, V]):
    """latent -> record, each built on first access from the latent's row in the collector's buffers."""

    def __init__(self, latents: list[int], build: Callable[[int], V]):
        self._row = {f: i for i, f in enumerate(latents)}
        self._build = build
        self._done: dict[int, V] = {}

    def __getitem__(self, latent: int) -> V:
        if latent not in self._done:
            self._done[latent] = self._build(self._row[latent])  # KeyError for a latent not in the pass
        return self._done[latent]

    def __iter__(self) -> Iterator[int]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)


def _pick(pos: Tensor, n_old: int, old: Tensor, new: Tensor) -> Tensor:
    """Entries of cat([old, new], 1) at ``pos`` without building the concatenation."""
    return torch.where(pos < n_old, old.gather(1, pos.clamp(max=n_old - 1)), new.gather(1, (pos - n_old).clamp(min=0)))


def windows_per_context(ctx_len: int, window: int) -> int:
    if window < 1:
        raise SaevalError(f"window must be at least 1 token, got {window}")
    if window > ctx_len - 1:
        raise SaevalError(
            f"window of {window} tokens is longer than the contexts ({ctx_len - 1} tokens "
            "after BOS): use a shorter window or a longer ctx_len"
        )
    return (ctx_len - 1) // window


def collect_windows(
    host,
    jobs: Sequence[tuple[object, Sequence[int]]],
    contexts_NL: Tensor,
    hook: str,
    window: int = 30,
    k: int = 10,
    batch_size: int = 8,
    reservoir: int = 0,
    n_pool: int = 0,
    seed: int = 0,
    description: str = "top windows",
) -> list[WindowsResult]:
    """One activation pass over ``contexts_NL`` feeding every (sae, latents) job (SAEs at the same hook)."""
    n_w = windows_per_context(contexts_NL.shape[1], window)
    total = len(contexts_NL) * n_w
    # The non-activating candidates: a fixed random pool of windows, the same for every latent.
    rng = np.random.default_rng(seed)
    pool: list[int] = rng.choice(total, size=min(n_pool, total), replace=False).tolist() if n_pool else []
    collectors = [
        WindowCollector(sae, feats, window, k, n_w, reservoir, pool, seed + 7919 * j)
        for j, (sae, feats) in enumerate(jobs)
    ]
    for c in collectors:
        if c.sae.d_in != host.d_model:
            raise SaevalError(
                f"SAE {c.sae.name} has d_in={c.sae.d_in} but {host.name} has d_model="
                f"{host.d_model}: pick an SAE trained on this model"
            )
    starts = range(0, len(contexts_NL), batch_size)
    for s in track(starts, description, total=len(starts)):
        tokens = contexts_NL[s : s + batch_size]
        acts = host.capture(tokens, [hook])[hook].float()
        check_finite(acts, f"{host.name} {hook}")
        mask = host.ordinary_mask(tokens)
        for c in collectors:
            c.update(acts, mask, s)
    return [c.result(host.tokenizer, contexts_NL) for c in collectors]


def pick_active_latents(
    windows: WindowsResult, n: int, min_windows: int, seed: int, prefer: Sequence[int] = ()
) -> list[int]:
    """``n`` latents drawn at random (seeded) among those of the pass with at least ``min_windows`` activating
    windows, those in ``prefer`` (e.g. latents another eval of the run already explained) first; sorted.

    A latent with few activating windows cannot fill a test set, so its score would rest on a handful of windows
    (or none): choosing among the eligible ones keeps every scored latent's AUROC on full samples. The draw
    never looks at explanations or scores, so the chosen latents are a uniform sample of the eligible ones."""
    eligible = [f for f in windows.features if windows.active_windows[f] >= min_windows]
    ok = set(eligible)
    rng = random.Random(seed)
    first = sorted({int(f) for f in prefer if int(f) in ok})
    if len(first) > n:
        first = rng.sample(first, n)
    taken = set(first)
    rest = [f for f in eligible if f not in taken]
    return sorted(first + rng.sample(rest, min(n - len(first), len(rest))))


# The forward to a hook over a run's contexts depends only on (model, hook, tokens), not on the SAE: it is kept in
# the run's memo for the next SAE and the next eval when small (the demo's 32k tokens at d_model 576: 75 MB).
MEMO_MAX_FLOATS = 64_000_000


def shared_host(host, hook: str, contexts_NL: Tensor, memo: dict | None):
    """``host`` wrapped so that its activations at ``hook`` over ``contexts_NL`` are shared through ``memo``
    (a run's ``ctx.memo``) when they fit MEMO_MAX_FLOATS; the plain host otherwise or without a memo."""
    if memo is None or contexts_NL.numel() * host.d_model > MEMO_MAX_FLOATS:
        return host
    return SharedCapture(host, hook, run_activations(memo, host, hook))


def top_activated_windows(
    host,
    sae,
    features: Sequence[int],
    window: int = 30,
    *,
    corpus: str = "sotu",
    n_tokens: int = 65_536,
    ctx_len: int = 128,
    contexts_NL: Tensor | None = None,
    k: int = 10,
    hook: str | None = None,
    batch_size: int = 8,
    reservoir: int = 0,
    n_pool: int = 0,
    seed: int = 0,
) -> WindowsResult:
    """Top ``k`` windows of each latent in ``features`` under mean, density and max, in one pass."""
    hook = hook or sae.cfg.hook_name
    if not hook:
        raise SaevalError(f"SAE {sae.name} names no hook: pass hook='blocks.L.hook_resid_post' (or similar)")
    if contexts_NL is None:
        windows_per_context(ctx_len, window)  # fail before tokenising a corpus
        contexts_NL = load_contexts(host, corpus, n_tokens, ctx_len, seed)
    jobs = [(sae, features)]
    return collect_windows(host, jobs, contexts_NL, hook, window, k, batch_size, reservoir, n_pool, seed)[0]
