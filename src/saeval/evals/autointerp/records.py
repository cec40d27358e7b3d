"""Each latent's explaining and scoring windows, from one windows pass, split as SAEBench does.

Per latent (SAEBench ``gather_data``): its ``n_top_explain + n_top_score`` top windows (by max activation) are
split at random into explaining and scoring ones; ``n_iw_explain + n_iw_score`` importance-weighted windows
are drawn among the other activating windows with probability proportional to their summed activation on
tokens below the weakest top window's maximum (SAEBench draws tokens with probability proportional to their
activation below that threshold, then takes the window around each) and split the same way; ``n_random``
scoring windows are random windows where the latent is zero throughout (delphi's non-activating examples;
SAEBench takes any random window and calls it non-firing). So the explaining and scoring windows never share
a window. Windows are the windows pass's fixed grid (``window`` tokens after BOS, so 21 = SAEBench's +-10; the
activation may sit anywhere in a window, not at its centre).

The pass is :func:`saeval.analysis.windows.collect_windows`, which keeps per-token activations only for the top
windows; :class:`RecordingSAE` keeps the candidates' nonzero activations during that same pass, so every
window's activations are known without a second pass (memory: one entry per nonzero activation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from saeval.analysis.windows import WindowsResult, collect_windows
from saeval.errors import SaevalError
from saeval.evals.autointerp.config import AutointerpConfig
from saeval.evals.autointerp.scorers import Example, LatentRecord


class RecordingSAE:
    """An SAE for collect_windows that also keeps the nonzero activations of ``latents``; every other attribute
    is the wrapped SAE's. collect_windows encodes each batch of contexts once, in order."""

    def __init__(self, sae, latents: Sequence[int]):
        self._sae = sae
        self._rows = torch.tensor([int(f) for f in latents], dtype=torch.long)
        self._parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.n_contexts = 0

    def __getattr__(self, name: str):
        return getattr(self._sae, name)

    def encode(self, acts_BLD: Tensor) -> Tensor:
        f_BLF = self._sae.encode(acts_BLD)
        sel_BLK = f_BLF.index_select(-1, self._rows.to(f_BLF.device)).float().cpu()
        nz = sel_BLK.nonzero()
        # int32 indices: 16 bytes per nonzero activation kept, the pass's only memory that grows with the corpus.
        idx = nz.to(torch.int32)
        self._parts.append((idx[:, 0] + self.n_contexts, idx[:, 1], idx[:, 2], sel_BLK[nz[:, 0], nz[:, 1], nz[:, 2]]))
        self.n_contexts += sel_BLK.shape[0]
        return f_BLF

    def entries(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(context, position, latent row, activation) of every nonzero activation recorded."""
        if not self._parts:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty, empty, torch.zeros(0)
        ctx, pos, row, val = (torch.cat(p) for p in zip(*self._parts, strict=True))
        return ctx.long(), pos.long(), row.long(), val


class WindowActs:
    """Per latent, the nonzero activations of each window: window id -> activations of its tokens."""

    def __init__(self, recorder: RecordingSAE, latents: Sequence[int], ordinary_NL: Tensor, window: int, wpc: int):
        if recorder.n_contexts != len(ordinary_NL):
            raise SaevalError(f"internal: the windows pass encoded {recorder.n_contexts} contexts, not "
                              f"{len(ordinary_NL)}")
        ctx, pos, row, val = recorder.entries()
        # Special tokens never count, and only positions inside the grid of windows belong to a window.
        keep = ordinary_NL[ctx, pos] & (pos >= 1) & (pos < 1 + wpc * window)
        ctx, pos, row, val = ctx[keep], pos[keep], row[keep], val[keep]
        wid = (ctx * wpc + (pos - 1) // window).numpy()
        off = ((pos - 1) % window).numpy()
        row, val = row.numpy(), val.numpy()
        order = np.lexsort((off, wid, row))
        self.window = window
        self._data: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        bounds = np.searchsorted(row[order], np.arange(len(latents) + 1))
        for i, f in enumerate(latents):
            sl = order[bounds[i] : bounds[i + 1]]
            self._data[int(f)] = (wid[sl], off[sl], val[sl])

    def acts(self, latent: int, window_id: int) -> list[float]:
        wid, off, val = self._data[latent]
        lo, hi = np.searchsorted(wid, [window_id, window_id + 1])
        out = np.zeros(self.window, dtype=np.float32)
        out[off[lo:hi]] = val[lo:hi]
        return out.tolist()

    def iw_weights(self, latent: int, below: float, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Windows (not in ``exclude``) and their summed activation over tokens under ``below``."""
        wid, _, val = self._data[latent]
        low = np.where(val < below, val, 0.0)
        ids, start = np.unique(wid, return_index=True)
        sums = np.add.reduceat(low, start) if len(low) else np.zeros(0)
        keep = np.array([w not in exclude for w in ids.tolist()], dtype=bool) & (sums > 0)
        return ids[keep], sums[keep]


def split(items: list[int], n_score: int, n_explain: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """A random split into (explaining, scoring) windows, keeping one for the explainer when it wants any."""
    perm = [items[j] for j in rng.permutation(len(items))]
    n_s = min(n_score, max(len(perm) - (1 if n_explain else 0), 0))
    return perm[n_s : n_s + n_explain], perm[:n_s]


def plan_latent(lw_top: list[int], acts: WindowActs, latent: int, zero_pool: list[int], config: AutointerpConfig,
                rng: np.random.Generator) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(explaining, scoring) windows of a latent as (window id, kind), from its top windows (best first)."""
    top_explain, top_score = split(lw_top, config.n_top_score, config.n_top_explain, rng)
    n_iw = config.n_iw_explain + config.n_iw_score
    iw_explain: list[int] = []
    iw_score: list[int] = []
    if n_iw:
        # SAEBench: only activations under the weakest top window's maximum weigh (none are top when k = 0).
        below = min(max(acts.acts(latent, w)) for w in lw_top) if lw_top else float("inf")
        ids, weights = acts.iw_weights(latent, below, set(lw_top))
        if len(ids):
            drawn = rng.choice(len(ids), size=min(n_iw, len(ids)), replace=False, p=weights / weights.sum())
            drawn = rng.permutation(drawn)  # a draw without replacement comes heaviest first: split at random
            # The explainer gets the rest when there are few: at most half go to scoring.
            n_s = min(config.n_iw_score, len(drawn) // 2 if config.n_iw_explain else len(drawn))
            iw_score = [int(ids[j]) for j in drawn[:n_s]]
            iw_explain = [int(ids[j]) for j in drawn[n_s : n_s + config.n_iw_explain]]
    random_ids = [zero_pool[j] for j in rng.choice(len(zero_pool), size=min(config.n_random, len(zero_pool)),
                                                    replace=False)] if zero_pool else []
    explaining = [(w, "top") for w in top_explain] + [(w, "iw") for w in iw_explain]
    scoring = [(w, "top") for w in top_score] + [(w, "iw") for w in iw_score] + [(w, "random") for w in random_ids]
    return explaining, scoring


def candidate_order(pool: Sequence[int], n_latents: int, seed: int) -> list[int]:
    """A seeded random order of enough of ``pool`` to find n_latents that fire more than min_count: the first
    that do are the chosen ones, a uniform draw among them as SAEBench's random.sample of its alive latents."""
    n = min(len(pool), max(2 * n_latents, n_latents + 64))
    return random.Random(seed).sample(list(pool), n)


def build_records(host, sae, contexts_NL: Tensor, hook: str, candidates: Sequence[int], config: AutointerpConfig,
                  seed: int = 0, n_wanted: int | None = None, filter_count: bool = True,
                  description: str = "autointerp: windows") -> tuple[list[LatentRecord], WindowsResult, list[str]]:
    """One windows pass over ``candidates``; the first ``n_wanted`` that fire more than ``config.min_count``
    times (all of them when ``filter_count`` is off) get a record (explanation still empty). Also returns
    warnings."""
    candidates = [int(f) for f in candidates]
    # Scanned in index order: collect_windows skips its latent selection when given as many latents as the SAE
    # has, so a permutation of all of them would be read in the wrong order.
    scanned = sorted(set(candidates))
    recorder = RecordingSAE(sae, scanned)
    k = config.n_top_explain + config.n_top_score
    windows = collect_windows(host, [(recorder, scanned)], contexts_NL, hook, config.window, max(k, 1),
                              config.batch_size, 0, config.n_pool, seed, description)[0]
    acts = WindowActs(recorder, scanned, host.ordinary_mask(contexts_NL).cpu(), config.window,
                      windows.windows_per_context)
    n_wanted = len(candidates) if n_wanted is None else n_wanted
    chosen = [f for f in candidates if not filter_count or windows.latents[f].n_active_tokens > config.min_count]
    chosen = chosen[:n_wanted]
    warnings = []
    if filter_count and len(chosen) < n_wanted:
        warnings.append(f"only {len(chosen)} of {len(candidates)} latents scanned fired more than min_count="
                        f"{config.min_count} times on {windows.n_tokens} tokens; {n_wanted} were asked for")
    pieces: dict[int, str] = {}

    def texts(tokens: list[int]) -> list[str]:
        for t in tokens:
            if t not in pieces:
                pieces[t] = host.tokenizer.decode([t])
        return [pieces[t] for t in tokens]

    records = []
    for f in chosen:
        lw = windows.latents[f]
        top = [windows.window_id(ex) for ex in lw.max[:k]] if k else []
        zero_pool = [w for w, m in zip(windows.pool_ids, windows.pool_max[f], strict=True) if m == 0]
        rng = np.random.default_rng([seed, f])
        explaining, scoring = plan_latent(top, acts, f, zero_pool, config, rng) if lw.fired else ([], [])
        threshold = config.act_threshold_frac * lw.max_act

        def example(wid: int, kind: str, f=f, threshold=threshold) -> Example:
            return Example(window=wid, kind=kind, texts=texts(windows.window_tokens(wid)), acts=acts.acts(f, wid),
                           threshold=threshold)

        ex_explain = sorted((example(w, kind) for w, kind in explaining), key=lambda e: -e.max_act)
        ex_score = [example(w, kind) for w, kind in scoring]
        note = ("latent never fired on the scanned tokens" if not lw.fired
                else "no window left to explain with" if not ex_explain
                else "no activating window held out for scoring" if not any(e.active for e in ex_score)
                else "no non-activating window in the random pool" if all(e.active for e in ex_score) else "")
        records.append(LatentRecord(latent=f, explanation="", explaining=ex_explain, scoring=ex_score,
                                    n_active_tokens=lw.n_active_tokens, note=note))
    return records, windows, warnings
