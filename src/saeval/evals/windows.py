"""Top activated windows of many latents in ONE streaming pass over a corpus (FaithfulSAE case study).

Each context (BOS + ctx_len - 1 tokens) is cut into non-overlapping windows of ``window`` tokens after BOS.
A window is scored per latent three ways: ``mean`` activation, ``density`` (fraction of its tokens where the
latent is nonzero; ties broken by the mean) and ``max`` activation; the top ``k`` windows per criterion are
kept in running buffers, so memory is O(latents x k x window) however long the corpus is. Special tokens never
count (their activation is zeroed). Latents that never fire are reported in ``never_fired``, not dropped.

For scoring explanations the same pass can also keep, per latent, a uniform reservoir sample of its activating
windows (bottom-R random priorities, so it is deterministic for a seed) and the latents' max activation on a
fixed random pool of windows (the non-activating candidates), both O(latents x R).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel
from torch import Tensor

from saeval.data.activations import check_finite
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.progress import track

CRITERIA = ("mean", "density", "max")


class ActExample(BaseModel):
    """One window: its token ids, each token's text, and the latent's activation on each token."""

    tokens: list[int]
    texts: list[str]
    acts: list[float]
    context: int = -1  # row of the contexts tensor of the pass
    start: int = -1  # position of the window's first token in that row
    score: float = 0.0  # the criterion's value for this window


class LatentWindows(BaseModel):
    latent: int
    fired: bool
    n_active_tokens: int
    n_active_windows: int
    max_act: float
    mean: list[ActExample] = []
    density: list[ActExample] = []
    max: list[ActExample] = []

    def criterion(self, name: str) -> list[ActExample]:
        return getattr(self, name)


@dataclass
class WindowsResult:
    features: list[int]
    window: int
    k: int
    contexts_NL: Tensor
    n_tokens: int  # ordinary tokens seen
    n_windows: int
    latents: dict[int, LatentWindows]
    never_fired: list[int]
    # window id = context * windows_per_context + index; start position = 1 + index * window
    windows_per_context: int = 0
    # latent -> [(window id, max act)]: a uniform sample of its activating windows
    reservoir: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    pool_ids: list[int] = field(default_factory=list)
    pool_max: dict[int, list[float]] = field(default_factory=dict)  # latent -> max act on each pool window

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

    def __init__(self, sae, features: Sequence[int], window: int, k: int, windows_per_context: int,
                 reservoir: int = 0, pool_ids: Sequence[int] = (), seed: int = 0):
        n = int(sae.d_sae)
        feats = [int(f) for f in features]
        bad = [f for f in feats if not 0 <= f < n]
        if bad:
            raise SaevalError(f"latent index {bad[0]} is out of range for SAE {sae.name} with d_sae={n}")
        if not feats:
            raise SaevalError("no latents given: pass at least one latent index")
        self.sae, self.window, self.k, self.wpc = sae, window, k, windows_per_context
        self.feats = torch.tensor(feats, dtype=torch.long)
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
        W, n_w = self.window, self.wpc
        f_BLF = self.sae.encode(acts_BLD.to(self.sae.W_enc.device))[..., self.feats.to(self.sae.W_enc.device)]
        f_BLF = (f_BLF.float().cpu() * mask_BL[..., None]).clamp_min(0)
        self.n_tokens += int(mask_BL.sum())
        self.active_tokens += (f_BLF > 0).sum((0, 1))
        f_NWF = f_BLF[:, 1 : 1 + n_w * W].reshape(B * n_w, W, -1)
        mean_NF, max_NF = f_NWF.mean(1), f_NWF.amax(1)
        nz_NF = (f_NWF > 0).sum(1)
        active_FN = (max_NF > 0).T
        self.active_windows += active_FN.sum(1)
        self.max_act = torch.maximum(self.max_act, max_NF.amax(0))
        ids_N = torch.arange(B * n_w) + first_context * n_w
        mean64 = mean_NF.double()
        # density: nonzero count, ties broken by the mean (the added term stays in [0, 0.5)).
        density = nz_NF.double() + 0.5 * mean64 / (1 + mean64)
        keys = {"mean": mean64, "max": max_NF.double(), "density": density}
        acts_FNW = f_NWF.permute(2, 0, 1)
        for c in CRITERIA:
            key_FN = keys[c].T.masked_fill(~active_FN, -torch.inf)
            merged = torch.cat([self.keys[c], key_FN], 1)
            top, pos = merged.topk(self.k, dim=1)
            self.keys[c] = top
            self.ids[c] = torch.cat([self.ids[c], ids_N.expand(len(key_FN), -1)], 1).gather(1, pos)
            all_acts = torch.cat([self.acts[c], acts_FNW], 1)
            self.acts[c] = all_acts.gather(1, pos[..., None].expand(-1, -1, W))
        if self.R:
            u = torch.rand(active_FN.shape, generator=self.gen, dtype=torch.float64)
            u = u.masked_fill(~active_FN, torch.inf)
            low, pos = torch.cat([self.res_key, u], 1).topk(self.R, dim=1, largest=False)
            self.res_key = low
            self.res_ids = torch.cat([self.res_ids, ids_N.expand(len(u), -1)], 1).gather(1, pos)
            self.res_max = torch.cat([self.res_max, max_NF.T], 1).gather(1, pos)
        if self.pool_pos:
            for n, wid in enumerate(ids_N.tolist()):
                if wid in self.pool_pos:
                    self.pool_max[self.pool_pos[wid]] = max_NF[n]

    def result(self, tokenizer, contexts_NL: Tensor) -> WindowsResult:
        piece_cache: dict[int, str] = {}

        def pieces(tokens: list[int]) -> list[str]:
            for t in tokens:
                if t not in piece_cache:
                    piece_cache[t] = tokenizer.decode([t])
            return [piece_cache[t] for t in tokens]

        W, n_w = self.window, self.wpc
        latents: dict[int, LatentWindows] = {}
        for i, f in enumerate(self.feats.tolist()):
            lists: dict[str, list[ActExample]] = {}
            for c in CRITERIA:
                lists[c] = []
                for slot in range(self.k):
                    if not torch.isfinite(self.keys[c][i, slot]):
                        break
                    ctx, idx = divmod(int(self.ids[c][i, slot]), n_w)
                    start = 1 + idx * W
                    tokens = contexts_NL[ctx, start : start + W].tolist()
                    acts = self.acts[c][i, slot]
                    score = {"mean": acts.mean(), "max": acts.max(), "density": (acts > 0).float().mean()}[c]
                    lists[c].append(ActExample(
                        tokens=tokens, texts=pieces(tokens), acts=[round(float(a), 5) for a in acts],
                        context=ctx, start=start, score=float(score)))
            latents[f] = LatentWindows(
                latent=f, fired=bool(self.active_tokens[i] > 0), n_active_tokens=int(self.active_tokens[i]),
                n_active_windows=int(self.active_windows[i]), max_act=float(self.max_act[i]), **lists)
        reservoir = {}
        for i, f in enumerate(self.feats.tolist()):
            keep = torch.isfinite(self.res_key[i])
            pairs = zip(self.res_ids[i][keep], self.res_max[i][keep], strict=True)
            reservoir[f] = [(int(w), float(m)) for w, m in pairs]
        pool_ids = sorted(self.pool_pos)
        return WindowsResult(
            features=self.feats.tolist(), window=W, k=self.k, contexts_NL=contexts_NL, n_tokens=self.n_tokens,
            n_windows=len(contexts_NL) * n_w, latents=latents,
            never_fired=[f for f, lw in latents.items() if not lw.fired], windows_per_context=n_w,
            reservoir=reservoir if self.R else {}, pool_ids=pool_ids,
            pool_max={f: self.pool_max[:, i].tolist() for i, f in enumerate(self.feats.tolist())},
        )


def windows_per_context(ctx_len: int, window: int) -> int:
    if window < 1:
        raise SaevalError(f"window must be at least 1 token, got {window}")
    if window > ctx_len - 1:
        raise SaevalError(f"window of {window} tokens is longer than the contexts ({ctx_len - 1} tokens "
                          "after BOS): use a shorter window or a longer ctx_len")
    return (ctx_len - 1) // window


def collect_windows(
    host, jobs: Sequence[tuple[object, Sequence[int]]], contexts_NL: Tensor, hook: str, window: int = 30,
    k: int = 10, batch_size: int = 8, reservoir: int = 0, n_pool: int = 0, seed: int = 0,
    description: str = "top windows",
) -> list[WindowsResult]:
    """One activation pass over ``contexts_NL`` feeding every (sae, latents) job (SAEs at the same hook)."""
    n_w = windows_per_context(contexts_NL.shape[1], window)
    total = len(contexts_NL) * n_w
    pool = np.random.default_rng(seed).choice(total, size=min(n_pool, total), replace=False) if n_pool else []
    collectors = [WindowCollector(sae, feats, window, k, n_w, reservoir, pool, seed + 7919 * j)
                  for j, (sae, feats) in enumerate(jobs)]
    for c in collectors:
        if c.sae.d_in != host.d_model:
            raise SaevalError(f"SAE {c.sae.name} has d_in={c.sae.d_in} but {host.name} has d_model="
                              f"{host.d_model}: pick an SAE trained on this model")
    starts = range(0, len(contexts_NL), batch_size)
    for s in track(starts, description, total=len(starts)):
        tokens = contexts_NL[s : s + batch_size]
        acts = host.capture(tokens, [hook])[hook].float()
        check_finite(acts, f"{host.name} {hook}")
        mask = host.ordinary_mask(tokens)
        for c in collectors:
            c.update(acts, mask, s)
    return [c.result(host.tokenizer, contexts_NL) for c in collectors]


def top_activated_windows(
    host, sae, features: Sequence[int], window: int = 30, *, corpus: str = "sotu", n_tokens: int = 65_536,
    ctx_len: int = 128, contexts_NL: Tensor | None = None, k: int = 10, hook: str | None = None,
    batch_size: int = 8, reservoir: int = 0, n_pool: int = 0, seed: int = 0,
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
