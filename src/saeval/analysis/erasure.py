"""Shared machinery of the concept-erasure evals (TPP, SCR, SHIFT), following SAEBench scr_and_tpp.

* Activations: each example is ``[BOS] + its tokens`` truncated to ``ctx_len``; the activations of its
  ordinary (non-special) tokens at the SAE hook are stored flat on disk with offsets, once per (model
  content fingerprint, hook, texts, ctx_len, sink_ratio). Probe inputs are their means (SAEBench zeroes
  BOS/PAD/EOS and averages the rest).
* Probes: trained once per (activations, probe config, seed, example sets) and cached on disk. Mode "saebench"
  draws the example sets, negatives, probe inits and minibatch orders from SAEBench's own random stream
  (``SAEBenchStream``: torch.manual_seed(seed), then its calls in its order), so a seed gives SAEBench's numbers;
  a spec then records its training order and the stream's state where SAEBench trains it.
* An SAE only encodes the cached tokens: pass 1 over the training examples gives per-set mean latent
  activations (attribution) and each latent's top examples (SHIFT evidence); pass 2 over the test examples
  keeps the mean activations of the latents any ablation will touch.
* Attribution (train split): effect_f = (mean_pos f - mean_neg f) * (w_probe . W_dec[f]); TPP clamps the mean
  difference at 0, SCR takes |effect|; the top-N non-zero effects are ablated.
* Selection in mode "saebench" is SAEBench's torch.topk per N (which of tied effects it takes is torch's
  choice); mode "validation" ranks once, ties to the lower latent index, and takes prefixes.
* Ablation keeps the SAE error: x' = decode(f with S zeroed) + (x - decode(f)) = x - sum_{s in S} f_s W_dec[s],
  so the mean-pooled probe input is xbar - fbar[S] @ W_dec[S] and probe logits shift by fbar[S] @ (W_dec[S] w).
  SAEBench also sums x' over the zeroed (masked) positions of its 128-token padded inputs, where x = 0 but
  encode(0) need not be 0; each adds -f(0)[S] @ W_dec[S] before dividing by the ordinary-token count. Mode
  "saebench" reproduces that (``padding_quirk``), mode "validation" pools ordinary tokens only.
* ``sink_ratio`` (off by default, as in SAEBench): tokens whose norm exceeds that multiple of their example's
  median are dropped like special tokens; SmolLM2 makes ~1-2% of first tokens after BOS 20-50x sinks.

Both caches go through saeval.data.cache: activations are folder entries (kind ``erasure-acts``, verified on
each open), probes small records (kind ``erasure-probes``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import Tensor

from saeval.analysis.probes import (
    LinearProbe,
    ProbeConfig,
    ProbeFit,
    SAEBenchDraw,
    SAEBenchStream,
    accuracy,
    can_stop_early,
    derive_seed,
    generator_from,
    train_probe,
)
from saeval.data.activations import check_finite
from saeval.data.cache import MANIFEST, CacheKey, get_or_build, read_record, write_record
from saeval.errors import SaevalError
from saeval.hashing import json_digest, tensors_fingerprint
from saeval.hosts.lm import pad_rows
from saeval.io import strict_json
from saeval.progress import track

CACHE_VERSION = 3
ACTS_KIND, PROBES_KIND = "erasure-acts", "erasure-probes"


# ------------------------------------------------------------------------------------------ activations

def tokenize_examples(host, texts: list[str], ctx_len: int) -> list[list[int]]:
    ids = host.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[host.bos_id, *row[: ctx_len - 1]] for row in ids]


class ExampleActivations:
    """Ordinary-token activations of each example at one hook, on disk: flat [T, D] shards over contiguous
    example ranges, plus offsets, token ids, masked-position counts and mean-pooled activations."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        index = load_file(str(folder / "index.safetensors"))
        self.key: str = meta["key"]
        self.ctx_len: int = meta["ctx_len"]
        self.d_model: int = meta["d_model"]
        self.meta = meta
        self.offsets = index["offsets"]  # [E + 1] into the flat token axis
        self.tokens_T = index["tokens"]  # ordinary token ids, aligned with the activations
        self.n_masked_E = index["n_masked"]  # ctx_len - ordinary tokens: SAEBench's zeroed positions
        self.xbar_ED = index["xbar"]
        self.shards: list[tuple[Path, int, int]] = [(folder / s[0], s[1], s[2]) for s in meta["shards"]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_ord_E(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def build(cls, host, hook: str, texts: list[str], ctx_len: int, batch_size: int = 16,
              shard_tokens: int = 65536, label: str = "", sink_ratio: float | None = None) -> ExampleActivations:
        """Run the model once over the texts (cached on disk by the model's content fingerprint, hook,
        ctx_len, sink_ratio and texts)."""
        if ctx_len < 2:
            raise SaevalError(f"ctx_len {ctx_len} leaves no room after BOS; use at least 2")
        host.hook(hook)
        key = activations_key(host, hook, texts, ctx_len, sink_ratio)

        def write(tmp: Path) -> None:
            ids = tokenize_examples(host, texts, ctx_len)
            meta = {"key": key.digest, "model": host.name, "model_fingerprint": host.fingerprint()}
            _write_activations(_Writer(tmp, ctx_len, label or "the dataset"), host, hook, ids, batch_size,
                               shard_tokens, label, sink_ratio, meta)

        return cls(get_or_build(key, write))

    @classmethod
    def from_examples(cls, folder: Path, examples: list[tuple[Tensor, Tensor]], ctx_len: int,
                      shard_examples: int = 1 << 30, key: str | None = None) -> ExampleActivations:
        """From given per-example (acts_LD, tokens_L) of ordinary tokens (tests, precomputed activations), in
        ``folder`` (reused when it already holds a sound entry); the key, which the probe cache goes by,
        defaults to a digest of their content."""
        folder = Path(folder)
        if folder.is_dir() and not (folder / MANIFEST).exists() and any(folder.iterdir()):
            # The cache would remove a folder without a manifest as damaged: never someone else's files.
            raise SaevalError(f"{folder}: exists and holds other files; pass a new or empty folder")
        if key is None:
            key = tensors_fingerprint([(f"{i}.{part}", t) for i, pair in enumerate(examples)
                                       for part, t in zip(("acts", "tokens"), pair, strict=True)])
            key = f"examples-{ctx_len}-{key}"

        def write(tmp: Path) -> None:
            writer = _Writer(tmp, ctx_len, key)
            for start in range(0, len(examples), shard_examples):
                writer.shard(examples[start : start + shard_examples])
            writer.finish({"key": key, "d_model": int(examples[0][0].shape[1])})

        return cls(get_or_build(folder, write))

    def iter_examples(self, ids: np.ndarray, max_tokens: int) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
        """Chunks of the given examples: (chunk_ids, acts_TD of their ordinary tokens, seg_T = position of
        each token's example in chunk_ids), at most ``max_tokens`` tokens each (or one example)."""
        wanted = np.zeros(len(self), dtype=bool)
        wanted[np.asarray(ids, dtype=np.int64)] = True
        for path, lo, hi in self.shards:
            members = np.flatnonzero(wanted[lo:hi]) + lo
            if len(members) == 0:
                continue
            try:
                acts = load_file(str(path))["acts"]
            except Exception as err:  # safetensors raises several types on a damaged file
                raise SaevalError(f"activation cache {path} is corrupt: rerun to rebuild it") from err
            base = int(self.offsets[lo])
            chunk: list[int] = []
            n_tok = 0
            for e in [*members.tolist(), None]:
                n = 0 if e is None else int(self.offsets[e + 1] - self.offsets[e])
                if chunk and (e is None or n_tok + n > max_tokens):
                    pieces = [acts[int(self.offsets[c]) - base : int(self.offsets[c + 1]) - base] for c in chunk]
                    seg = torch.repeat_interleave(torch.arange(len(chunk)), torch.tensor([len(p) for p in pieces]))
                    yield np.asarray(chunk), torch.cat(pieces), seg
                    chunk, n_tok = [], 0
                if e is not None:
                    chunk.append(e)
                    n_tok += n

    def tokens_of(self, e: int) -> Tensor:
        return self.tokens_T[int(self.offsets[e]) : int(self.offsets[e + 1])]

    def acts_of(self, e: int) -> Tensor:
        return next(self.iter_examples(np.array([e]), 1 << 62))[1]


def activations_key(host, hook: str, texts: list[str], ctx_len: int, sink_ratio: float | None) -> CacheKey:
    """What an example-activation entry depends on: the model's content, the hook, the texts and how they are cut."""
    return CacheKey(ACTS_KIND, {"format": CACHE_VERSION, "model": host.fingerprint(), "hook": hook,
                                "ctx_len": ctx_len, "texts": json_digest(texts), "sink_ratio": sink_ratio})


def _write_activations(writer: _Writer, host, hook: str, ids: list[list[int]], batch_size: int, shard_tokens: int,
                       label: str, sink_ratio: float | None, meta: dict[str, Any]) -> None:
    ranges, start, n_tok = [], 0, 0
    for e, row in enumerate(ids):
        n_tok += len(row)
        if n_tok >= shard_tokens or e == len(ids) - 1:
            ranges.append((start, e + 1))
            start, n_tok = e + 1, 0
    # Within a shard, batch examples of similar length so that little compute goes to padding.
    batches = []
    for lo, hi in ranges:
        order = sorted(range(lo, hi), key=lambda i: len(ids[i]))
        batches += [(hi, order[b : b + batch_size]) for b in range(0, hi - lo, batch_size)]
    done: dict[int, tuple[Tensor, Tensor]] = {}
    for hi, chunk in track(batches, f"activations {label or 'examples'} at {hook}"):
        for e, acts_LD, tok_L in _forward(host, hook, [ids[i] for i in chunk], chunk, sink_ratio):
            done[e] = (acts_LD, tok_L)
        if all(e in done for e in range(writer.n_written, hi)):
            writer.shard([done.pop(e) for e in range(writer.n_written, hi)])
    writer.finish({**meta, "hook": hook, "d_model": host.d_model, "sink_ratio": sink_ratio,
                   "n_dropped_sink_tokens": sum(len(r) - 1 for r in ids) - writer.offsets[-1]})


class _Writer:
    """Writes shards of consecutive examples, then the index and meta.json, into a folder (the cache's private
    temp folder: it publishes the entry, readers never see a partial one)."""

    def __init__(self, folder: Path, ctx_len: int, label: str):
        self.folder, self.ctx_len, self.label = folder, ctx_len, label
        self.shards: list[tuple[str, int, int]] = []
        self.offsets: list[int] = [0]
        self.tokens: list[Tensor] = []
        self.n_masked: list[int] = []
        self.xbars: list[Tensor] = []

    @property
    def n_written(self) -> int:
        return len(self.offsets) - 1

    def shard(self, parts: list[tuple[Tensor, Tensor]]) -> None:
        lo = self.n_written
        for acts_LD, tok_L in parts:
            if len(tok_L) == 0:
                raise SaevalError(f"an example of {self.label} has no ordinary token; drop empty texts")
            if len(tok_L) != len(acts_LD) or len(tok_L) >= self.ctx_len:
                raise SaevalError(f"an example of {self.label} has {len(tok_L)} tokens for ctx_len {self.ctx_len}")
            self.offsets.append(self.offsets[-1] + len(tok_L))
            self.tokens.append(tok_L.int())
            self.n_masked.append(self.ctx_len - len(tok_L))
            self.xbars.append(acts_LD.double().mean(0).float())
        name = f"shard_{len(self.shards):04d}.safetensors"
        save_file({"acts": torch.cat([p[0].float() for p in parts]).contiguous()}, str(self.folder / name))
        self.shards.append((name, lo, self.n_written))

    def finish(self, meta: dict) -> None:
        save_file({"offsets": torch.tensor(self.offsets, dtype=torch.long), "tokens": torch.cat(self.tokens),
                   "n_masked": torch.tensor(self.n_masked, dtype=torch.long), "xbar": torch.stack(self.xbars)},
                  str(self.folder / "index.safetensors"))
        meta = {**meta, "ctx_len": self.ctx_len, "n_examples": self.n_written, "n_tokens": self.offsets[-1],
                "label": self.label, "shards": self.shards}
        (self.folder / "meta.json").write_text(json.dumps(strict_json(meta), indent=1, allow_nan=False))


def _forward(host, hook: str, rows: list[list[int]], ids: list[int], sink_ratio: float | None = None):
    tokens, attn = pad_rows(rows, host.pad_id)
    # Right padding: causal attention keeps pads from touching the real tokens before them.
    acts = host.capture(tokens, [hook], attention_mask_BL=attn)[hook].float().cpu()
    check_finite(acts, f"{host.name} {hook}")
    mask = host.ordinary_mask(tokens, attn)
    for i, e in enumerate(ids):
        keep = mask[i].clone()
        if sink_ratio is not None:
            # Attention sinks besides BOS (e.g. SmolLM2's first token after BOS, at times 50x the usual norm)
            # would dominate the means and latent maxima: treat them like special tokens.
            norms = acts[i].norm(dim=-1)
            keep &= norms <= sink_ratio * norms[mask[i]].median()
        yield e, acts[i][keep], tokens[i][keep]


# ------------------------------------------------------------------------------------------------ probes
class ProbeSpec(BaseModel):
    """One binary probe: positives are label 1. ``sel_*`` is the epoch-selection set. SAEBench's stream (mode
    "saebench"): ``train_order`` is the row order of [train_pos, train_neg] it trains on and ``stream_state``
    its generator's state where training starts."""

    name: str
    train_pos: list[int]
    train_neg: list[int]
    sel_pos: list[int]
    sel_neg: list[int]
    train_order: list[int] | None = None
    stream_state: str | None = None


def xy(acts: ExampleActivations, pos: list[int] | np.ndarray, neg: list[int] | np.ndarray) -> tuple[Tensor, Tensor]:
    idx = torch.as_tensor(np.concatenate([np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)]))
    y = torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])
    return acts.xbar_ED[idx], y


def probes_key(acts: ExampleActivations, specs: list[ProbeSpec], config: ProbeConfig, seed: int) -> CacheKey:
    """What trained probes depend on: the activations' (content) key, the probe config, the seed, the sets."""
    # Unset stream fields stay out, so the keys of validation-mode probes are what they were.
    return CacheKey(PROBES_KIND, {"format": CACHE_VERSION, "acts": acts.key, "probe": config.model_dump(),
                                  "seed": seed, "specs": [s.model_dump(exclude_none=True) for s in specs]})


def fit_probes(acts: ExampleActivations, specs: list[ProbeSpec], config: ProbeConfig, seed: int,
               ) -> dict[str, tuple[LinearProbe, ProbeFit]]:
    """Train (or load from the disk cache, one record per call's specs) one probe per spec."""
    key = probes_key(acts, specs, config, seed)
    stored = read_record(key)
    if stored is not None:
        return {s.name: (LinearProbe(torch.tensor(stored[s.name]["w"], dtype=torch.float32), stored[s.name]["b"]),
                         ProbeFit(**stored[s.name]["fit"])) for s in specs}
    out = {}
    for spec in specs:
        x, y = xy(acts, spec.train_pos, spec.train_neg)
        if spec.train_order is not None:
            order = torch.as_tensor(spec.train_order, dtype=torch.long)
            x, y = x[order], y[order]
        x_sel, y_sel = xy(acts, spec.sel_pos, spec.sel_neg)
        gen = generator_from(spec.stream_state) if spec.stream_state is not None else None
        out[spec.name] = train_probe(x, y, x_sel, y_sel, config, seed=derive_seed(seed, spec.name), gen=gen)
    # float32 weights survive JSON exactly; a probe that diverged (NaN) is not kept, JSON would make it null.
    if all(torch.isfinite(p.w_D).all() and np.isfinite(p.b) for p, _ in out.values()):
        write_record(key, {n: {"w": p.w_D.float().tolist(), "b": float(p.b), "fit": fit.model_dump()}
                           for n, (p, fit) in out.items()})
    return out


def stream_spec(stream: SAEBenchStream, name: str, train: SAEBenchDraw, sel: SAEBenchDraw) -> ProbeSpec:
    """The probe SAEBench trains at this point of its stream on the draws ``train`` and ``sel``."""
    return ProbeSpec(name=name, train_pos=train.pos.tolist(), train_neg=train.neg.tolist(), sel_pos=sel.pos.tolist(),
                     sel_neg=sel.neg.tolist(), train_order=train.order.tolist(), stream_state=stream.state())


def stream_train(stream: SAEBenchStream, spec: ProbeSpec, d_model: int, config: ProbeConfig, fit=None,
                 needed: bool = True) -> tuple[LinearProbe, ProbeFit] | None:
    """Advance ``stream`` past SAEBench's training of ``spec``: ``fit(spec)`` trains it (or loads it) when it is
    ``needed`` or when early stopping makes the epochs drawn depend on the run; else its draws are replayed."""
    result = fit(spec) if fit is not None and (needed or can_stop_early(config)) else None
    if result is None and can_stop_early(config):
        raise SaevalError(f"probe {spec.name}: with early_stopping_patience {config.early_stopping_patience} < "
                          f"epochs {config.epochs} SAEBench's stream depends on the training; pass fit")
    stream.skip_training(d_model, len(spec.train_pos) + len(spec.train_neg),
                         result[1].epochs_run if result is not None else config.epochs)
    return result


# ------------------------------------------------------------------------------------------------ SAE
def decoder_rows(sae) -> Tensor:
    """Rows r_f with decode(f) - decode(f') = (f - f') @ r: W_dec / act_scale for saeval SAEs. Checked on a
    random sparse code, because ablating latents by this shortcut is only right for a linear decoder."""
    rows = (sae.W_dec.detach().float() / float(getattr(sae.cfg, "act_scale", 1.0) or 1.0))
    gen = torch.Generator().manual_seed(0)
    f = torch.rand(2, sae.d_sae, generator=gen) * (torch.rand(2, sae.d_sae, generator=gen) < 0.01)
    f = f.to(rows.device)
    with torch.no_grad():
        got = (sae.decode(f[:1]) - sae.decode(f[1:])).float()
    want = (f[:1] - f[1:]) @ rows
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max().clamp_min(1))):
        raise SaevalError(f"SAE {sae.name} has a decoder that is not f @ W_dec / act_scale + b; "
                          "latent ablation needs a linear decoder")
    return rows


@dataclass
class SAEPass:
    means_SF: Tensor | None  # per example set: the mean over its examples of mean-pooled latent activations
    fbar_EK: Tensor | None  # mean-pooled activations of the kept latents, rows in the order of ``ids``
    top_vals_MF: Tensor | None  # per latent: the M largest per-example max activations
    top_ids_MF: Tensor | None  # ... and which examples


@torch.inference_mode()
def sae_pass(sae, acts: ExampleActivations, ids: np.ndarray, sets: list[np.ndarray] | None = None,
             keep: Tensor | None = None, top_m: int = 0, max_tokens: int | None = None) -> SAEPass:
    """Encode the ordinary tokens of ``ids`` once and reduce them as asked (see SAEPass)."""
    ids = np.asarray(ids, dtype=np.int64)
    F_ = sae.d_sae
    device = sae.W_dec.device
    pos = np.full(len(acts), -1, dtype=np.int64)
    pos[ids] = np.arange(len(ids))
    weights_SE = None
    if sets:
        weights_SE = torch.zeros(len(sets), len(ids), dtype=torch.float64)
        for s, members in enumerate(sets):
            if len(members) == 0:
                raise SaevalError("an attribution example set is empty; use more examples")
            rows = pos[np.asarray(members, dtype=np.int64)]
            if (rows < 0).any():
                raise SaevalError("attribution sets must be drawn from the encoded examples")
            weights_SE[s].index_add_(0, torch.as_tensor(rows), torch.full((len(rows),), 1.0 / len(rows),
                                                                           dtype=torch.float64))
    means = torch.zeros(len(sets), F_, dtype=torch.float64) if sets else None
    fbar = torch.zeros(len(ids), len(keep)) if keep is not None else None
    top_vals = torch.zeros(0, F_) if top_m else None
    top_ids = torch.zeros(0, F_, dtype=torch.long) if top_m else None
    budget = max_tokens or max(64, (1 << 24) // F_)
    n_ord = acts.n_ord_E
    for chunk, acts_TD, seg_T in acts.iter_examples(ids, budget):
        f_TF = sae.encode(acts_TD.to(device)).float().cpu()
        fbar_CF = torch.zeros(len(chunk), F_).index_add_(0, seg_T, f_TF) / n_ord[chunk][:, None]
        rows = torch.as_tensor(pos[chunk])
        if means is not None and weights_SE is not None:
            means += weights_SE[:, rows] @ fbar_CF.double()
        if fbar is not None and keep is not None:
            fbar[rows] = fbar_CF[:, keep]
        if top_vals is not None and top_ids is not None:
            fmax_CF = torch.zeros(len(chunk), F_).scatter_reduce_(0, seg_T[:, None].expand_as(f_TF), f_TF, "amax")
            vals = torch.cat([top_vals, fmax_CF])
            which = torch.cat([top_ids, torch.as_tensor(chunk)[:, None].expand(-1, F_)])
            k = min(top_m, len(vals))
            top_vals, order = vals.topk(k, dim=0)
            top_ids = which.gather(0, order)
    return SAEPass(means.float() if means is not None else None, fbar, top_vals, top_ids)


def zero_code(sae) -> Tensor:
    """encode(0): the latents SAEBench's zeroed (masked) positions still carry."""
    with torch.no_grad():
        return sae.encode(torch.zeros(1, sae.d_in, device=sae.W_dec.device)).float().cpu()[0]


# ----------------------------------------------------------------------------------------- attribution
def attribution(mean_pos_F: Tensor, mean_neg_F: Tensor, dot_F: Tensor, kind: str) -> Tensor:
    """SAEBench node effects: TPP clamps the mean difference at 0 (latents of the positive class only) and
    keeps the sign of the product; SCR takes the absolute value."""
    diff = (mean_pos_F - mean_neg_F).float()
    if kind == "tpp":
        diff = diff.clamp(min=0.0)
    effects = diff * dot_F.float()
    return effects.abs() if kind == "scr" else effects


def top_n(effects_F: Tensor, n: int) -> Tensor:
    """The n largest effects among the non-zero ones (fewer when fewer are non-zero), largest first; ties
    broken by the lower latent index."""
    if n > len(effects_F):
        raise SaevalError(f"N={n} is larger than the SAE's {len(effects_F)} latents; lower n_values")
    k = min(n, int((effects_F != 0).sum()))
    order = np.argsort(-effects_F.double().numpy(), kind="stable")
    return torch.as_tensor(order[:k].copy(), dtype=torch.long)


def saebench_top_n(effects_F: Tensor, n: int) -> Tensor:
    """SAEBench select_top_n_features: torch.topk(effects, min(n, non-zero count)) as a set (sorted ids). Among
    tied effects (zeros, when fewer than n are non-zero) torch picks by its own rule, not the lowest index."""
    if n > len(effects_F):
        raise SaevalError(f"N={n} is larger than the SAE's {len(effects_F)} latents; lower n_values")
    k = min(n, int((effects_F != 0).sum()))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.topk(effects_F.float().cpu(), k).indices).values


@dataclass
class AblationView:
    """What ablating any subset of ``keep`` latents needs, for the examples of pass 2."""

    ids: np.ndarray  # example ids (rows of fbar_EK)
    keep: Tensor  # latent ids (columns of fbar_EK)
    fbar_EK: Tensor
    quirk_E: Tensor | None  # n_masked / n_ord per row when SAEBench's padding quirk is on
    f0_K: Tensor  # encode(0) on the kept latents
    rows_KD: Tensor  # decoder rows of the kept latents

    def column(self, latents: Tensor) -> Tensor:
        lookup = {int(f): i for i, f in enumerate(self.keep)}
        return torch.tensor([lookup[int(f)] for f in latents], dtype=torch.long)

    def logits(self, probe: LinearProbe, xbar_ED: Tensor, rows: np.ndarray, latents: Tensor) -> Tensor:
        """Probe logits on mean-pooled activations after zero-ablating ``latents`` (SAE error kept)."""
        where = np.searchsorted(self.ids, rows)
        if len(rows) and (where.max() >= len(self.ids) or (self.ids[where] != rows).any()):
            raise SaevalError("probe rows outside the encoded test examples (internal error)")
        clean = xbar_ED[torch.as_tensor(rows)].double() @ probe.w_D.double() + probe.b
        if len(latents) == 0:
            return clean
        cols = self.column(latents)
        dot_S = self.rows_KD[cols].double() @ probe.w_D.double()
        shift = self.fbar_EK[torch.as_tensor(where)][:, cols].double() @ dot_S
        if self.quirk_E is not None:
            shift = shift + self.quirk_E[torch.as_tensor(where)].double() * float(self.f0_K[cols].double() @ dot_S)
        return clean - shift


def ablation_view(sae, acts: ExampleActivations, ids: np.ndarray, keep: Tensor, padding_quirk: bool,
                  max_tokens: int | None = None) -> AblationView:
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    keep = torch.unique(keep) if len(keep) else torch.zeros(0, dtype=torch.long)
    encoded = sae_pass(sae, acts, ids, keep=keep, max_tokens=max_tokens)
    assert encoded.fbar_EK is not None
    rows = decoder_rows(sae)[keep.to(sae.W_dec.device)].cpu()
    quirk = (acts.n_masked_E[ids].double() / acts.n_ord_E[ids].double()) if padding_quirk else None
    return AblationView(ids, keep, encoded.fbar_EK, quirk, zero_code(sae)[keep], rows)


def accuracy_of(logits_N: Tensor, n_pos: int, float32: bool = False) -> float:
    """Accuracy when the first ``n_pos`` rows are positives and the rest negatives (logit > 0 = positive);
    ``float32``: rounded as SAEBench's test_probe_gpu rounds it."""
    y_N = torch.zeros(len(logits_N), dtype=torch.long)
    y_N[:n_pos] = 1
    return accuracy(logits_N, y_N, float32)


def cached_activations(ctx, task, ctx_len: int, batch_size: int,
                       sink_ratio: float | None = None) -> ExampleActivations:
    """The task's activations at the context's hook: built once per run (memo) and once ever (disk)."""
    key = ("erasure-acts", ctx.hook, task.name, len(task.texts), hash(tuple(task.texts)), ctx_len, sink_ratio)
    if key not in ctx.memo:
        ctx.memo[key] = ExampleActivations.build(ctx.host, ctx.hook, task.texts, ctx_len, batch_size,
                                                 label=task.name, sink_ratio=sink_ratio)
    return ctx.memo[key]


def seed_summary(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed) over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def check_erasure_config(config, sae, dataset_kind: str) -> None:
    """Checks shared by TPP, SCR and SHIFT configs (seeds, datasets, n_values, validation_fraction)."""
    if not config.seeds:
        raise SaevalError("seeds is empty; give at least one seed")
    if not config.datasets:
        raise SaevalError(f"datasets is empty; give at least one {dataset_kind}")
    if any(n < 1 or n > sae.d_sae for n in config.n_values):
        raise SaevalError(f"n_values {config.n_values} must lie in 1..{sae.d_sae} (the SAE's latents)")
    if not 0 < config.validation_fraction < 1:
        raise SaevalError(f"validation_fraction {config.validation_fraction} must lie strictly between 0 and 1")


# ------------------------------------------------------------------------------------------- summaries
def quirks(mode: str) -> dict[str, Any]:
    saebench = mode == "saebench"
    return {"probe_epoch_selected_on": "test" if saebench else "validation",
            "tpp_negatives": "redrawn per evaluation" if saebench else "drawn once per class",
            "padding_quirk": saebench,
            "random_stream": "SAEBench's (torch.manual_seed(seed), its draws in its order)" if saebench
            else "saeval's (one labelled seed per draw)",
            "top_n": "torch.topk per N" if saebench else "one ranking, ties to the lower latent id"}


def split_validation(ids: np.ndarray, fraction: float, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) parts of ``ids``, a random ``fraction`` (at least one) held out."""
    order = ids[torch.randperm(len(ids), generator=gen).numpy()]
    n_val = max(1, int(round(len(ids) * fraction)))
    if n_val >= len(ids):
        raise SaevalError(f"validation_fraction {fraction} leaves no training examples; lower it")
    return order[n_val:], order[:n_val]


def summarize(per_task_seed: dict[str, dict[int, dict[str, float]]], seeds: list[int],
              ) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    """SAEBench averages each key over datasets (or pairs); then mean, and with several seeds the sample std
    (``KEY_std``), over seeds. Returns (flat metrics, per-seed means)."""
    per_seed: dict[str, dict[str, float]] = {}
    for s in seeds:
        keys = {k for runs in per_task_seed.values() for k in runs[s]}
        per_seed[str(s)] = {k: float(np.mean([runs[s][k] for runs in per_task_seed.values() if k in runs[s]]))
                            for k in sorted(keys)}
    metrics: dict[str, float | None] = {}
    for k in sorted({k for row in per_seed.values() for k in row}):
        values = [per_seed[str(s)][k] for s in seeds if per_seed[str(s)].get(k) is not None]
        if not values:
            metrics[k] = None
            continue
        mean, std = seed_summary(values)
        metrics[k] = mean
        if len(seeds) > 1:
            metrics[f"{k}_std"] = std
    return metrics, per_seed


def split_metrics(flat: dict[str, Any], metrics_cls: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the keys ``metrics_cls`` declares, the rest): metrics at SAEBench's N, and at other N for details.by_n."""
    known = metrics_cls.model_fields
    return {k: v for k, v in flat.items() if k in known}, {k: v for k, v in flat.items() if k not in known}
