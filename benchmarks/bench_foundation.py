"""Foundation benchmark on SmolLM2-135M (CPU): activation capture vs a bare HF forward to the same layer,
core-eval throughput and peak memory. Prints ratios measured in this one run (runs interleaved, so load
from other processes hits both sides alike)."""

from __future__ import annotations

import resource
import time

import torch

from saeval.data.corpora import load_contexts
from saeval.evals import EvalContext
from saeval.evals.core import SPEC
from saeval.hosts import LanguageHost
from saeval.saes import SAEConfig, create_sae

HOOK = "blocks.15.hook_resid_post"
BATCH, CTX, ROUNDS = 8, 128, 4


def bare_forward_to_layer(host, tokens, n_blocks: int) -> None:
    """The plain HF base model with its block list cut after the hook's block: no hooks, no saeval code."""
    base = host.model.model
    full = base.layers
    base.layers = full[:n_blocks]
    try:
        with torch.inference_mode():
            base(input_ids=tokens, use_cache=False)
    finally:
        base.layers = full


def main() -> None:
    torch.manual_seed(0)
    host = LanguageHost.load("smollm2-135m")
    contexts = load_contexts(host, "sotu", BATCH * CTX * ROUNDS, CTX)
    batches = contexts.split(BATCH)
    n_blocks = host.hook(HOOK).layer + 1
    bare_forward_to_layer(host, batches[0], n_blocks)  # warm-up
    host.capture(batches[0], [HOOK])
    t_bare = t_capture = 0.0
    for tokens in batches:
        start = time.perf_counter()
        bare_forward_to_layer(host, tokens, n_blocks)
        t_bare += time.perf_counter() - start
        start = time.perf_counter()
        host.capture(tokens, [HOOK])
        t_capture += time.perf_counter() - start
    n_tok = contexts.numel()
    print(f"bare HF forward to {HOOK}: {n_tok / t_bare:8.0f} tokens/s")
    print(f"saeval capture at {HOOK}: {n_tok / t_capture:8.0f} tokens/s")
    print(f"capture / bare throughput ratio: {t_bare / t_capture:.3f}  (target >= 0.95)")

    start = time.perf_counter()
    host.forward(contexts[:BATCH])
    t_full = time.perf_counter() - start
    sae = create_sae(SAEConfig(architecture="topk", d_in=host.d_model, d_sae=4608, k=32, name="random-topk"))
    with torch.no_grad():
        sae.W_dec.normal_().div_(10)
        sae.W_enc.copy_(sae.W_dec.T)
    n_eval = 4096
    cfg = SPEC.config("demo", n_eval_tokens=n_eval, n_density_tokens=n_eval)
    start = time.perf_counter()
    SPEC.run_fn()(EvalContext(host=host, hook=HOOK, preset="demo"), sae, cfg)
    t_core = time.perf_counter() - start
    full_tok_s = BATCH * CTX / t_full
    print(f"full forward: {full_tok_s:8.0f} tokens/s; core eval (clean + spliced + zero CE/KL): "
          f"{n_eval / t_core:8.0f} tokens/s = {n_eval / t_core / full_tok_s:.2f} x full-forward throughput")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
