"""saeval's heavy paths on one GPU, each as absolute time and as a ratio to a reference measured in the same run.

Nothing is downloaded: the model is a randomly initialised Gemma-2-2B built from its config alone (d 2304, 26
layers, 8 heads, vocab 256k; ``--arch llama``: Llama-3.2-1B's shape) in bf16, and the tokenizer an in-memory
word-level one ("t123" <-> id 123; ids 0-3 are pad/eos/bos/unk), so texts are random token ids spelled out.
The SAEs are random JumpReLU SAEs of 16k and 65k latents at the model width, in float32 as saeval loads SAEs,
with thresholds set for ~64 active latents per token on this model's activations.

Parts (``--only`` takes names or numbers, comma-separated, run in the order given; by default all, matching last):
1. capture   capture at the middle hook (early stop) vs the HF base model run with its layer list cut after the
             hook's block (same blocks, no hooks: the floor), and vs the full HF forward with logits
2. core      core eval (encode/decode, stats, spliced clean/SAE/zero CE+KL runs) tokens/s vs the full forward
3. erasure   TPP and SCR per-SAE seconds (their evals' run functions on a synthetic two-attribute labeled set;
             the first SAE pays the setup: activations + probes), vs one forward to the hook over the examples
4. matching  match_saes of two 65k SAEs (60% of latents planted as shared): seconds, peak GPU and host memory,
             vs the chunked decoder-cosine top-k pass done on the GPU in torch (what its first phase computes);
             in a child process, stopped at ``--match-timeout``
5. windows   collect_windows over all latents of each SAE vs bare capture at the hook
6. generate  LanguageHost.generate tokens/s, batch 64 x 64 new tokens vs batch 1

Every measured function runs once to warm up; then a part's functions are interleaved (ref, x, ref, x...) and
the best of ``--repeats`` counts (erasure and matching: one timed run); CUDA is synchronised around each.
``--minutes`` skips the parts that would start after the budget is spent (and later repeats); a part that fails
is reported and the rest still run. A JSON summary goes to
$OUT/bench_gpu.json when OUT is set, else to stdout. README.md beside this says how to run it on the GPU box.

    PYTHONPATH=src python benchmarks/gpu/bench_gpu.py [--tiny] [--only core,windows] [--minutes 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from saeval.analysis.erasure import tokenize_examples
from saeval.analysis.matching import match_saes
from saeval.analysis.windows import collect_windows
from saeval.data import labeled
from saeval.data.corpora import load_contexts
from saeval.data.labeled import Attribute, LabeledDataset, LabeledTable, scr_task, tpp_task
from saeval.evals.base import EvalContext
from saeval.evals.core.config import CoreConfig
from saeval.evals.core.run import run as core_run
from saeval.evals.core.run import weight_cosines
from saeval.evals.scr.config import SCRConfig
from saeval.evals.scr.run import run as scr_run
from saeval.evals.tpp.config import TPPConfig
from saeval.evals.tpp.run import run as tpp_run
from saeval.hosts import LanguageHost
from saeval.hosts.hooks import get_attr
from saeval.saes import SAEConfig, create_sae

PARTS = ("capture", "core", "erasure", "matching", "windows", "generate")
N_SPECIAL = 4  # ids 0-3: pad, eos, bos, unk (Gemma's own ids); ordinary tokens are drawn from 4..V-1

# Real shapes (Gemma-2-2B, Llama-3.2-1B) and their tiny stand-ins; special ids follow the word tokenizer's.
ARCHS = {
    "gemma2": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000),
    "llama": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                  rope_theta=500000.0, tie_word_embeddings=True),
}
TINY_MODEL = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=1024)


@dataclass
class Shapes:
    model: dict
    hook: str
    widths: tuple[int, int]
    l0: int  # target active latents per token of the random SAEs
    ctx_len: int
    batch: int
    capture_contexts: int
    core_tokens: int
    erasure_train: int  # TPP/SCR train_set_size (per class or pair; a quarter per quadrant)
    erasure_test: int
    erasure_words: tuple[int, int]  # tokens per labeled example, uniform in [lo, hi]
    n_values: tuple[int, ...]
    window: int
    window_contexts: int
    reservoir: int
    n_pool: int
    match_dense_limit: int | None  # None: the library's default (8192)
    gen_batch: int
    gen_new: int
    gen_prompt: int


def shapes_for(arch: str, tiny: bool) -> Shapes:
    model = ARCHS[arch] | (TINY_MODEL if tiny else {})
    mid = model["num_hidden_layers"] // 2 - 1  # Gemma-2-2B: blocks.12 of 26 (GemmaScope's middle layer)
    if tiny:
        # dense_limit below the width: the sparse candidate-graph solve the 65k case takes, not the dense one.
        return Shapes(model, f"blocks.{mid}.hook_resid_post", (256, 1024), 16, 32, 8, 64, 1024, 40, 20, (8, 31),
                      (2, 5, 10, 20, 50), 8, 64, 20, 40, 256, 8, 16, 8)
    return Shapes(model, f"blocks.{mid}.hook_resid_post", (16384, 65536), 64, 128, 16, 512, 32768, 400, 160,
                  (32, 127), (2, 5, 10, 20, 50, 100, 500), 30, 128, 200, 400, None, 64, 64, 32)


# ------------------------------------------------------------------------------------------------ building
def word_tokenizer(vocab_size: int):
    """A fast tokenizer built in memory: "t<id>" words, whitespace split; nothing to download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3} | {f"t{i}": i for i in range(N_SPECIAL, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=1 << 30)


def build_host(sh: Shapes, device: torch.device, dtype: torch.dtype, attn: str | None) -> LanguageHost:
    cfg = AutoConfig.for_model(**sh.model, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 2.6B random weights on the CPU take a minute
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **({"attn_implementation": attn} if attn else {}))
    model.generation_config.eos_token_id = None  # random weights may sample EOS: keep every row full length
    return LanguageHost(model, word_tokenizer(cfg.vocab_size), f"random-{sh.model['model_type']}")


def spell(ids) -> str:
    return " ".join(f"t{i}" for i in ids)


def write_corpus(path: Path, vocab_size: int, n_words: int) -> Path:
    rng = np.random.default_rng(0)
    path.write_text(spell(rng.integers(N_SPECIAL, vocab_size, n_words).tolist()))
    return path


def random_sae(host: LanguageHost, x_ND: torch.Tensor, d_sae: int, l0: int, hook: str, seed: int):
    """A JumpReLU SAE with random unit directions whose pre-activations are standardised on ``x_ND``, so the
    threshold z (P(N(0,1) > z) = l0 / d_sae) gives about ``l0`` active latents per token."""
    dev = host.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="jumprelu", d_in=host.d_model, d_sae=d_sae, hook_name=hook,
                               name=f"jumprelu-{_width(d_sae)}-s{seed}")).to(dev)
    dirs_FD = F.normalize(torch.randn(d_sae, host.d_model, generator=gen, device=dev), dim=-1)
    b_dec_D = x_ND.mean(0)
    std_F = ((x_ND - b_dec_D) @ dirs_FD.T).std(0).clamp_min(1e-6)
    z = float(torch.special.ndtri(torch.tensor(1 - l0 / d_sae, dtype=torch.float64)))
    with torch.no_grad():
        sae.b_dec.copy_(b_dec_D)
        sae.W_enc.copy_(dirs_FD.T / std_F)
        sae.W_dec.copy_(dirs_FD * std_F[:, None])
        sae.threshold.fill_(z)
    return sae


def _width(d_sae: int) -> str:
    return f"{d_sae // 1024}k" if d_sae % 1024 == 0 else str(d_sae)


def synthetic_labeled(vocab_size: int, sh: Shapes, seed: int = 0) -> LabeledDataset:
    """Five classes x two attribute values of random-token texts; each class and each attribute value has 20
    marker tokens making up ~15% of its texts' tokens, so probes learn something (as real labels allow)."""
    rng = np.random.default_rng(seed)
    markers = rng.choice(np.arange(N_SPECIAL, vocab_size), size=(7, 20), replace=False)  # 5 classes, 2 values

    def table(per_quadrant: int) -> LabeledTable:
        texts, cls, attr = [], [], []
        for c in range(5):
            for a in range(2):
                for _ in range(per_quadrant):
                    n = int(rng.integers(sh.erasure_words[0], sh.erasure_words[1] + 1))
                    ids = rng.integers(N_SPECIAL, vocab_size, n)
                    u = rng.random(n)
                    ids = np.where(u < 0.15, rng.choice(markers[c], n), ids)
                    ids = np.where(u > 0.85, rng.choice(markers[5 + a], n), ids)
                    texts.append(spell(ids.tolist()))
                    cls.append(c)
                    attr.append(a)
        return LabeledTable(texts, {"cls": cls, "attr": attr})

    # SCR's biased quadrants take half a set size each; TPP a quarter per (class, value).
    return LabeledDataset(
        name="synthetic", train=table(sh.erasure_train // 2), test=table(sh.erasure_test // 2),
        class_attr=Attribute("cls", "synthetic class", {c: f"class{c}" for c in range(5)}),
        pair_attr=Attribute("attr", "synthetic attribute", {0: "a0", 1: "a1"}),
        tpp_classes=list(range(5)), scr_pairs=[(0, 1)], pair_values=(0, 1))


# ------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def best_of(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device,
            warm: dict[str, Callable[[], object]] | None = None,
            stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """Warm each function up (``warm`` or the function itself), then interleave them; the best time counts.
    ``stop`` (the budget) is asked before each repeat after the first."""
    for name, fn in runs.items():
        (warm or {}).get(name, fn)()
    best = dict.fromkeys(runs, float("inf"))
    for r in range(repeats):
        if r and stop is not None and stop():
            break
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, device))
    return best


def host_rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_host_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        return True
    except OSError:
        return False


class Budget:
    def __init__(self, minutes: float):
        self.limit, self.start = 60 * minutes, time.time()

    def spent(self) -> float:
        return time.time() - self.start

    def over(self) -> bool:
        return self.spent() > self.limit


@dataclass
class Env:
    host: LanguageHost
    sh: Shapes
    saes: list
    contexts: torch.Tensor  # [N, ctx_len] from the synthetic corpus, BOS first
    corpus: Path
    device: torch.device
    repeats: int
    budget: Budget
    match_timeout: float


def tok_s(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def batched(contexts: torch.Tensor, bs: int, fn: Callable[[torch.Tensor], object]) -> Callable[[], None]:
    def go() -> None:
        for s in range(0, len(contexts), bs):
            fn(contexts[s : s + bs])
    return go


def full_forward(host: LanguageHost) -> Callable[[torch.Tensor], object]:
    @torch.inference_mode()
    def fwd(tokens: torch.Tensor):
        return host.model(input_ids=tokens.to(host.device), use_cache=False).logits
    return fwd


# ------------------------------------------------------------------------------------------------ parts
def part_capture(env: Env) -> dict:
    host, sh = env.host, env.sh
    ctxs = env.contexts[: sh.capture_contexts]
    n_tok = ctxs.numel()
    parent_path, attr = host.layout.layers.rsplit(".", 1)
    base = get_attr(host.model, parent_path)
    keep = host.hook(sh.hook).last_layer_needed + 1

    @contextmanager
    def cut():
        layers = getattr(base, attr)
        setattr(base, attr, torch.nn.ModuleList(list(layers)[:keep]))
        try:
            yield
        finally:
            setattr(base, attr, layers)

    @torch.inference_mode()
    def bare(tokens: torch.Tensor):
        with cut():
            return base(input_ids=tokens.to(host.device), use_cache=False).last_hidden_state

    # The reference must compute what capture does: its output is the final norm of the hook's activation.
    with torch.inference_mode():
        first = ctxs[: sh.batch]
        want = host.final_norm(host.capture(first, [sh.hook])[sh.hook]).float()
        check = float((bare(first).float() - want).norm() / want.norm())
    runs = {"bare to hook": batched(ctxs, sh.batch, bare),
            "capture": batched(ctxs, sh.batch, lambda t: host.capture(t, [sh.hook])),
            "full forward": batched(ctxs, sh.batch, full_forward(host))}
    best = best_of(runs, env.repeats, env.device)
    rate = {k: tok_s(n_tok, v) for k, v in best.items()}
    for k in runs:
        print(f"  {k:13s} {best[k]:8.3f}s  {rate[k]:10.0f} tok/s")
    print(f"  (bare-to-hook output vs final_norm(capture): relative difference {check:.1e})")
    out = {"tokens": n_tok, "seconds": best, "tok_s": rate, "bare_check_rel_diff": check,
           "capture_over_bare_to_hook": rate["capture"] / rate["bare to hook"],
           "capture_over_full_forward": rate["capture"] / rate["full forward"]}
    print(f"  capture / bare-to-hook throughput {out['capture_over_bare_to_hook']:.3f} (1 = no hook overhead); "
          f"capture / full forward {out['capture_over_full_forward']:.2f} (early stop after block {keep - 1} of "
          f"{host.n_layers})")
    return out


def part_core(env: Env) -> dict:
    host, sh = env.host, env.sh
    # shared_memory_mb=0: every repeat pays the whole per-SAE cost (core otherwise reuses its first SAE's passes).
    cfg = CoreConfig(n_eval_tokens=sh.core_tokens, n_density_tokens=sh.core_tokens, ctx_len=sh.ctx_len,
                     batch_size=sh.batch, shared_memory_mb=0)
    ctx = EvalContext(host=host, hook=sh.hook, corpus=str(env.corpus), ctx_len=sh.ctx_len, seed=0, preset="bench")
    ctxs = load_contexts(host, str(env.corpus), sh.core_tokens, sh.ctx_len, 0)  # the contexts run() evaluates
    n_tok = ctxs.numel()
    results: dict[str, object] = {}
    runs: dict[str, Callable[[], object]] = {"full forward": batched(ctxs, sh.batch, full_forward(host))}
    warm: dict[str, Callable[[], object]] = {}
    small = cfg.model_copy(update={"n_eval_tokens": sh.batch * sh.ctx_len, "n_density_tokens": sh.batch * sh.ctx_len})
    for sae in env.saes:
        runs[sae.name] = lambda sae=sae: results.__setitem__(sae.name, core_run(ctx, sae, cfg))
        warm[sae.name] = lambda sae=sae: core_run(ctx, sae, small)
    best = best_of(runs, env.repeats, env.device, warm, env.budget.over)
    ref = tok_s(n_tok, best["full forward"])
    print(f"  full forward  {best['full forward']:8.3f}s  {ref:10.0f} tok/s  (reference: HF forward with logits)")
    out: dict = {"tokens": n_tok, "full_forward_s": best["full forward"], "full_forward_tok_s": ref, "saes": {}}
    for sae in env.saes:
        cos_s = timed(lambda sae=sae: weight_cosines(sae, cfg.weight_chunk), env.device)
        t = best[sae.name]
        m = results[sae.name].metrics  # type: ignore[attr-defined]
        row = {"seconds": t, "tok_s": tok_s(n_tok, t), "ratio_to_full_forward": tok_s(n_tok, t) / ref,
               "weight_cosines_s": cos_s, "tok_s_without_weight_cosines": tok_s(n_tok, t - cos_s),
               "l0": m.l0, "explained_variance": m.explained_variance, "ce_loss_score": m.ce_loss_score,
               "kl_div_score": m.kl_div_score, "valid": getattr(m, "valid", None)}
        out["saes"][sae.name] = row
        print(f"  core {sae.name:14s} {t:8.3f}s  {row['tok_s']:10.0f} tok/s  ratio to full forward "
              f"{row['ratio_to_full_forward']:.3f} ({t / best['full forward']:.2f} forward-equivalents; of which "
              f"weight cosines {cos_s:.2f}s)  l0 {m.l0:.1f}, EV {m.explained_variance:.3f}, CE score "
              f"{_fmt(m.ce_loss_score)}, valid {row['valid']}")
    # Non-default option whose zero-ablation splice mixes the CPU token mask with device activations: one batch.
    if "zero_ablation_positions" in CoreConfig.model_fields:
        try:
            core_run(ctx, env.saes[0], small.model_copy(update={"zero_ablation_positions": "ordinary"}))
            out["zero_ablation_ordinary"] = "ok"
        except Exception as err:  # reported: it is what this check is for
            out["zero_ablation_ordinary"] = f"{type(err).__name__}: {err}"
        print(f"  core with zero_ablation_positions='ordinary' (one batch): {out['zero_ablation_ordinary']}")
    return out


def _fmt(v) -> str:
    return "null" if v is None else f"{v:.3f}"


def forward_to_hook_s(host: LanguageHost, hook: str, texts: list[str], ctx_len: int, bs: int,
                      device: torch.device) -> float:
    """One capture pass over the examples (length-sorted batches, right padding), as the setup runs it."""
    ids = sorted(tokenize_examples(host, texts, ctx_len), key=len)

    def go() -> None:
        for b in range(0, len(ids), bs):
            rows = ids[b : b + bs]
            width = max(map(len, rows))
            tokens = torch.full((len(rows), width), host.pad_id)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                tokens[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
            host.capture(tokens, [hook], attention_mask_BL=mask)
    return timed(go, device)


def serve_labeled(ds: LabeledDataset) -> None:
    """Have every loaded saeval module that imported ``load_labeled`` return ``ds`` for its name, so that the
    evals' own ``run`` functions (setup accounting included) run on the synthetic set unchanged."""
    original = labeled.load_labeled

    def load(spec: str, seed: int = 42) -> LabeledDataset:
        return ds if spec == ds.name else original(spec, seed)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("saeval") and getattr(module, "load_labeled", None) is original:
            module.load_labeled = load  # type: ignore[attr-defined]


def part_erasure(env: Env) -> dict:
    host, sh, dev = env.host, env.sh, env.device
    ds = synthetic_labeled(host.config.vocab_size, sh)
    serve_labeled(ds)
    common = dict(datasets=[ds.name], train_set_size=sh.erasure_train, test_set_size=sh.erasure_test,
                  ctx_len=sh.ctx_len, n_values=list(sh.n_values), llm_batch_size=sh.batch)
    fp_s = timed(host.fingerprint, dev)  # content hash of every weight: the activation cache's key
    print(f"  host.fingerprint() {fp_s:.2f}s (once per host; the erasure activation cache's key)")
    out: dict = {"fingerprint_s": fp_s}
    n = sh.n_values[3]
    tcfg, scfg = TPPConfig(**common), SCRConfig(**common)
    # The tasks the evals build (deterministic), for the reference pass over the same texts.
    evals = {"tpp": (tpp_run, tcfg, tpp_task(ds, sh.erasure_train, sh.erasure_test, tcfg.data_seed),
                     f"tpp_threshold_{n}_total_metric"),
             "scr": (scr_run, scfg, scr_task(ds, ds.scr_pairs[0], sh.erasure_train, sh.erasure_test),
                     f"scr_metric_threshold_{n}")}
    for name, (run, cfg, task, key) in evals.items():
        if env.budget.over():
            print(f"  {name}: skipped, over the --minutes budget")
            out[name] = "skipped: over budget"
            continue
        # One context per eval, as one run would hold: the first SAE pays the setup, later ones reuse it.
        ctx = EvalContext(host=host, hook=sh.hook, preset="bench")
        fwd_s = min(forward_to_hook_s(host, sh.hook, task.texts, sh.ctx_len, sh.batch, dev) for _ in range(2))
        row: dict = {"examples": len(task.texts), "forward_to_hook_s": fwd_s, "saes": {}}
        print(f"  {name}: {len(task.texts)} examples; forward to the hook over them {fwd_s:.2f}s (best of 2)")
        for i, sae in enumerate(env.saes):
            if env.budget.over():
                row["saes"][sae.name] = "skipped: over budget"
                print(f"    {sae.name}: skipped, over the --minutes budget")
                continue
            box: dict = {}
            wall = timed(lambda sae=sae, box=box, run=run, cfg=cfg, ctx=ctx: box.update(r=run(ctx, sae, cfg)), dev)
            result = box["r"]
            setup_s, sae_s = result.details.setup_seconds, result.details.sae_seconds
            if i == 0:
                row["setup_s"] = setup_s
            score = getattr(result.metrics, key, None)
            row["saes"][sae.name] = {"seconds": sae_s, "setup_s": setup_s, "wall_s": wall,
                                     "per_1k_examples_s": 1000 * sae_s / len(task.texts),
                                     "ratio_to_forward_to_hook": sae_s / fwd_s, key: score}
            print(f"    {sae.name:14s} per SAE {sae_s:7.2f}s ({1000 * sae_s / len(task.texts):.2f}s per 1k examples; "
                  f"{sae_s / fwd_s:.2f}x the forward to the hook); setup in this call {setup_s:.2f}s; {key}="
                  f"{_fmt(score)}")
        out[name] = row
    return out


def matching_saes(width: int, d_in: int, device: torch.device, seed: int = 7) -> tuple:
    """Two JumpReLU SAEs of random unit decoder rows on ``device``; 60% of B's rows are noisy copies (cosine
    ~0.86) of A's, as for two seeds of one training run (matching only reads the decoder directions)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dirs = [F.normalize(torch.randn(width, d_in, generator=gen, device=device), dim=-1) for _ in range(2)]
    n = int(0.6 * width)
    src = torch.randperm(width, generator=gen, device=device)[:n]
    noise = 0.6 * torch.randn(n, d_in, generator=gen, device=device) / d_in**0.5
    dirs[1][:n] = F.normalize(dirs[0][src] + noise, dim=-1)
    saes = []
    for i, W_dec in enumerate(dirs):
        sae = create_sae(SAEConfig(architecture="jumprelu", d_in=d_in, d_sae=width, name=f"match-{i}")).to(device)
        with torch.no_grad():
            sae.W_dec.copy_(W_dec)
            sae.W_enc.copy_(W_dec.T)
        saes.append(sae)
    return tuple(saes)


def _matching_child(width: int, d_in: int, device_name: str, dense_limit: int | None, repeats: int, queue) -> None:
    """In its own process, so that a slow solve can be stopped at the budget and the host peak is its own."""
    try:
        device = torch.device(device_name)
        a, b = matching_saes(width, d_in, device)

        def gpu_topk() -> None:
            # Floor of the top-k phase: the same chunked cosine pass (row top-9, column max) in torch on the device.
            A, B = F.normalize(a.W_dec.float(), dim=-1), F.normalize(b.W_dec.float(), dim=-1)
            chunk = max(1, 2**25 // len(B))
            col = torch.full((len(B),), -torch.inf, device=device)
            for s in range(0, len(A), chunk):
                block = A[s : s + chunk] @ B.T
                block.topk(9, dim=1)
                col = torch.maximum(col, block.amax(0))

        ref_s = best_of({"gpu": gpu_topk}, max(1, repeats), device)["gpu"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            gpu_base = torch.cuda.memory_allocated(device)
        rss0, reset = host_rss_mb("VmRSS"), reset_host_peak()
        box: dict = {}
        kwargs = {} if dense_limit is None else {"dense_limit": dense_limit}
        t = timed(lambda: box.update(res=match_saes(a, b, **kwargs)), device)
        res = box["res"]
        queue.put({
            "width": width, "d_in": d_in, "seconds": t, "phases": dict(res.phases), "method": res.method,
            "certified": bool(getattr(res, "certified", getattr(res, "exact", False))),
            "rounds": getattr(res, "rounds", None), "gap": float(res.gap),
            "shared_feature_ratio": res.shared_feature_ratio, "top1_ratio": res.top1_ratio,
            "peak_gpu_mb_above_start": (torch.cuda.max_memory_allocated(device) - gpu_base) / 2**20
            if device.type == "cuda" else None,
            "peak_host_mb_above_rss": (host_rss_mb("VmHWM") or 0) - (rss0 or 0) if reset else None,
            "gpu_topk_pass_s": ref_s, "ratio_to_gpu_topk_pass": t / ref_s})
    except Exception as err:  # reported, not raised: the other parts' numbers still count
        queue.put({"error": f"{type(err).__name__}: {err}"})


def part_matching(env: Env) -> dict:
    import multiprocessing as mp

    width, d_in = env.sh.widths[-1], env.host.d_model
    limit = min(env.match_timeout, max(60.0, env.budget.limit - env.budget.spent()))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_matching_child, args=(width, d_in, str(env.device), env.sh.match_dense_limit,
                                                     env.repeats, queue))
    start = time.perf_counter()
    proc.start()
    while True:
        try:
            out = queue.get(timeout=2)
            break
        except Exception:  # queue.Empty: still solving, or dead without an answer
            if not proc.is_alive():
                out = {"error": f"the matching process exited with code {proc.exitcode}", "width": width}
                break
            if time.perf_counter() - start > limit:
                out = {"error": f"stopped after {limit:.0f}s (--match-timeout / --minutes)", "width": width}
                break
    proc.join(timeout=0 if "error" in out else 10)  # an answered child exits by itself
    if proc.is_alive():
        proc.kill()  # our own child, by its handle
        proc.join()
    out["process_s"] = time.perf_counter() - start
    if "error" in out:
        print(f"  match_saes {width} x {width} at d {d_in}: {out['error']}")
        return out
    print(f"  match_saes {width} x {width} at d {d_in}: {out['seconds']:.2f}s, phases {out['phases']}, "
          f"{out['method']}, certified {out['certified']}, gap {out['gap']:.3g}, shared "
          f"{out['shared_feature_ratio']:.3f} (60% planted), top-1 {out['top1_ratio']:.3f}")
    print(f"  peak GPU memory above start {_mb(out['peak_gpu_mb_above_start'])}, peak host memory above RSS "
          f"{_mb(out['peak_host_mb_above_rss'])} (the library moves both decoders to the CPU)")
    print(f"  reference: the cosine top-k pass in torch on {env.device.type} {out['gpu_topk_pass_s']:.3f}s; "
          f"match_saes / that = {out['ratio_to_gpu_topk_pass']:.1f}x")
    return out


def _mb(v) -> str:
    return "n/a" if v is None else f"{v:.0f} MB"


def part_windows(env: Env) -> dict:
    host, sh = env.host, env.sh
    ctxs = env.contexts[: sh.window_contexts]
    n_tok = ctxs.numel()
    runs: dict[str, Callable[[], object]] = {
        "bare capture": batched(ctxs, sh.batch, lambda t: host.capture(t, [sh.hook]))}
    warm: dict[str, Callable[[], object]] = {}
    for sae in env.saes:
        def win(sae=sae, c=ctxs):
            return collect_windows(host, [(sae, list(range(sae.d_sae)))], c, sh.hook, window=sh.window, k=10,
                                   batch_size=sh.batch, reservoir=sh.reservoir, n_pool=sh.n_pool)
        runs[sae.name] = win
        warm[sae.name] = lambda win=win: win(c=ctxs[: sh.batch])
    best = best_of(runs, env.repeats, env.device, warm, env.budget.over)
    ref = tok_s(n_tok, best["bare capture"])
    print(f"  bare capture  {best['bare capture']:8.3f}s  {ref:10.0f} tok/s")
    out: dict = {"tokens": n_tok, "bare_capture_s": best["bare capture"], "bare_capture_tok_s": ref, "saes": {}}
    for sae in env.saes:
        t = best[sae.name]
        out["saes"][sae.name] = {"seconds": t, "tok_s": tok_s(n_tok, t),
                                 "ratio_to_bare_capture": best["bare capture"] / t}
        print(f"  windows {sae.name:14s} all {sae.d_sae} latents {t:8.3f}s  {tok_s(n_tok, t):10.0f} tok/s  "
              f"throughput / bare capture {best['bare capture'] / t:.3f}")
    return out


def part_generate(env: Env) -> dict:
    host, sh = env.host, env.sh
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(N_SPECIAL, host.config.vocab_size, (sh.gen_batch, sh.gen_prompt), generator=gen)
    prompts[:, 0] = host.bos_id
    made: dict[int, int] = {}

    def run(b: int, new: int) -> Callable[[], None]:
        def go() -> None:
            made[b] = host.generate(prompts[:b], max_new_tokens=new, temperature=1.0, seed=0).numel()
        return go

    big = sh.gen_batch
    runs = {"batch 1": run(1, sh.gen_new), f"batch {big}": run(big, sh.gen_new)}
    warm = {"batch 1": run(1, 4), f"batch {big}": run(big, 4)}
    best = best_of(runs, env.repeats, env.device, warm)
    one, many = made[1] / best["batch 1"], made[big] / best[f"batch {big}"]
    print(f"  batch 1:   {best['batch 1']:7.3f}s for {made[1]} new tokens  {one:9.1f} tok/s")
    print(f"  batch {big}: {best[f'batch {big}']:7.3f}s for {made[big]} new tokens  {many:9.1f} tok/s")
    print(f"  batched / batch-1 throughput {many / one:.1f}x (prompt {sh.gen_prompt} tokens, sampling at T=1)")
    return {"prompt_tokens": sh.gen_prompt, "new_tokens": sh.gen_new, "batch": big,
            "batch1_s": best["batch 1"], "batch1_tok_s": one, "batched_s": best[f"batch {big}"],
            "batched_tok_s": many, "ratio": many / one}


PART_FNS = {"capture": part_capture, "core": part_core, "erasure": part_erasure, "matching": part_matching,
            "windows": part_windows, "generate": part_generate}


# ------------------------------------------------------------------------------------------------ main
def parse_only(spec: str | None) -> list[str]:
    if not spec:
        # Matching runs last: its CPU-bound solve is the least predictable, and its timeout is what budget is left.
        return [p for p in PARTS if p != "matching"] + ["matching"]
    out = []
    for item in spec.split(","):
        item = item.strip()
        name = PARTS[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(PARTS) else item
        if name not in PARTS:
            sys.exit(f"--only: unknown part {item!r}; parts: {', '.join(PARTS)} (or 1-{len(PARTS)})")
        out.append(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, help="model dtype (default bfloat16; float32 with --tiny)")
    ap.add_argument("--arch", default="gemma2", choices=sorted(ARCHS))
    ap.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice)")
    ap.add_argument("--tiny", action="store_true", help="small shapes on the CPU in float32 (a smoke test)")
    ap.add_argument("--only", default=None, help=f"comma-separated parts: {', '.join(PARTS)} or 1-{len(PARTS)}")
    ap.add_argument("--minutes", type=float, default=7.0,
                    help="skip the parts that would start after this many minutes (a started part runs to its end)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per function (best counts)")
    ap.add_argument("--match-timeout", type=float, default=240.0, help="seconds before the matching solve is stopped")
    ap.add_argument("--batch-size", type=int, default=None, help="contexts per forward (default 16; 8 tiny)")
    args = ap.parse_args()

    budget = Budget(args.minutes)
    os.environ.setdefault("SAEVAL_QUIET", "1")
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    os.environ["SAEVAL_CACHE"] = str(work / "cache")  # private and empty: the erasure setup is timed for real
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))  # the shared development machine
    parts = parse_only(args.only)
    if device.type == "cpu" and not args.tiny:
        print("warning: the full shapes on the CPU take very long (2.6B parameters); --tiny is the CPU smoke test",
              file=sys.stderr)
    sh = shapes_for(args.arch, args.tiny)
    if args.batch_size:
        sh.batch = args.batch_size

    start = time.perf_counter()
    host = build_host(sh, device, dtype, args.attn)
    sync(device)
    build_s = time.perf_counter() - start
    n_ctx = max(sh.capture_contexts, sh.window_contexts, -(-sh.core_tokens // sh.ctx_len))
    corpus = write_corpus(work / "corpus.txt", host.config.vocab_size, int(1.2 * n_ctx * (sh.ctx_len - 1)))
    contexts = load_contexts(host, str(corpus), n_ctx * sh.ctx_len, sh.ctx_len, 0)
    sample = contexts[: max(1, 4096 // sh.ctx_len)]
    acts = host.capture(sample, [sh.hook])[sh.hook]
    x_ND = acts[host.ordinary_mask(sample)].float()
    saes = [random_sae(host, x_ND, w, sh.l0, sh.hook, seed=i) for i, w in enumerate(sh.widths)]
    env = Env(host, sh, saes, contexts, corpus, device, args.repeats, budget, args.match_timeout)
    setup_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in host.model.parameters())
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "dtype": str(dtype), "arch": args.arch, "attn_implementation": host.config._attn_implementation,
            "params": n_params, "hook": sh.hook, "sae_widths": list(sh.widths), "sae_dtype": "float32",
            "tiny": args.tiny, "repeats": args.repeats, "build_model_s": build_s, "setup_s": setup_s,
            "shapes": asdict(sh)}
    print(f"{args.arch} random {n_params / 1e9:.2f}B params ({host.config._attn_implementation} attention) in "
          f"{dtype} on {meta['device']}; d {host.d_model}, {host.n_layers} layers, vocab {host.config.vocab_size}; "
          f"hook {sh.hook}; SAEs {[s.name for s in saes]} (float32); ctx {sh.ctx_len}, batch {sh.batch}; built in "
          f"{build_s:.1f}s, corpus + SAEs {setup_s - build_s:.1f}s; torch {torch.__version__}, transformers "
          f"{transformers.__version__}", flush=True)

    summary: dict = {"meta": meta, "parts": {}, "skipped": []}
    for i, name in enumerate(parts):
        if budget.over():
            left = parts[i:]
            print(f"\n-- over the {args.minutes:g}-minute budget after {budget.spent():.0f}s: skipping "
                  f"{', '.join(left)}")
            summary["skipped"] = left
            break
        print(f"\n== {PARTS.index(name) + 1}. {name}", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            record = PART_FNS[name](env)
        except Exception as err:  # one broken part must not cost the others' numbers on a one-shot device run
            traceback.print_exc()
            record = {"error": f"{type(err).__name__}: {err}"}
            print(f"  FAILED: {record['error']}")
        record["part_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            record["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        summary["parts"][name] = record
        print(f"  ({record['part_s']:.1f}s"
              + (f", peak GPU {record['peak_gpu_gb']:.1f} GiB" if "peak_gpu_gb" in record else "") + ")", flush=True)
    summary["total_s"] = budget.spent()
    print_table(summary)
    text = json.dumps(summary, indent=1, default=float)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "bench_gpu.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"summary written to {path}")
    else:
        print(text)


def print_table(summary: dict) -> None:
    p = summary["parts"]
    ok = {name for name, r in p.items() if "error" not in r}
    rows = []
    if "capture" in ok:
        c = p["capture"]
        rows.append(f"capture tok/s {c['tok_s']['capture']:.0f}: x{c['capture_over_bare_to_hook']:.3f} of "
                    f"bare-to-hook, x{c['capture_over_full_forward']:.2f} of full forward")
    for sae, r in p.get("core", {}).get("saes", {}).items():
        rows.append(f"core {sae} tok/s {r['tok_s']:.0f}: x{r['ratio_to_full_forward']:.3f} of full forward")
    for ev in ("tpp", "scr"):
        e = p.get("erasure", {}).get(ev)
        if isinstance(e, dict):
            for sae, r in e.get("saes", {}).items():
                if isinstance(r, dict):
                    rows.append(f"{ev} {sae} per SAE {r['seconds']:.2f}s: x{r['ratio_to_forward_to_hook']:.2f} of "
                                f"forward to hook (setup in that call {r['setup_s']:.1f}s)")
    if "matching" in p and "error" in p["matching"]:
        rows.append(f"matching: {p['matching']['error']}")
    elif "matching" in p:
        m = p["matching"]
        rows.append(f"matching {m['width']}x{m['width']} {m['seconds']:.1f}s, peak GPU "
                    f"{_mb(m['peak_gpu_mb_above_start'])}, host {_mb(m['peak_host_mb_above_rss'])}: "
                    f"x{m['ratio_to_gpu_topk_pass']:.1f} of the device top-k pass")
    for sae, r in p.get("windows", {}).get("saes", {}).items():
        if isinstance(r, dict):
            rows.append(f"windows {sae} tok/s {r['tok_s']:.0f}: x{r['ratio_to_bare_capture']:.3f} of bare capture")
    if "generate" in ok:
        g = p["generate"]
        rows.append(f"generate batch {g['batch']} {g['batched_tok_s']:.0f} tok/s: x{g['ratio']:.1f} of batch 1 "
                    f"({g['batch1_tok_s']:.1f} tok/s)")
    rows += [f"{name}: FAILED {r['error']}" for name, r in p.items() if "error" in r and name != "matching"]
    print("\n== summary (" + f"{summary['total_s']:.0f}s" + (f"; skipped {summary['skipped']}" if summary["skipped"]
                                                            else "") + ")")
    for row in rows:
        print("  " + row)


if __name__ == "__main__":
    main()
