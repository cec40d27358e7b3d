"""Steerability benchmark on SmolLM2-135M (CPU), demo preset: latents per second, and the eval's time against
the bare forward passes it needs (one full forward per latent x strength x prompt, plus the unsteered one) and
against the naive loop (one hooked full forward per latent x strength). Prints ratios measured in this run;
the timed pieces are interleaved so load from other processes hits each side alike.

Uses the cached demo SAE when it exists (it does not train one), else a random TopK SAE of the same shape.
"""

from __future__ import annotations

import time

import torch

from saeval.analysis.steering import LMReadout
from saeval.data.vocab import load_vocab
from saeval.evals import EvalContext
from saeval.evals.steerability import SPEC
from saeval.hosts import LanguageHost

HOOK = "blocks.15.hook_resid_post"
NAIVE_LATENTS = 2  # the naive loop is timed on this many latents and scaled up


def demo_sae(host):
    from saeval.demo import demo_saes

    return demo_saes(host, (0,))[0], "demo SAE (seed 0)"  # trained (about 40 s) and cached when missing


def main() -> None:
    torch.manual_seed(0)
    host = LanguageHost.load("smollm2-135m")
    sae, which = demo_sae(host)
    config = SPEC.config("demo")
    ctx = EvalContext(host=host, hook=HOOK, corpus="sotu", preset="demo")
    n_lat, n_str, n_in, L = config.n_latents, len(config.strengths), config.n_inputs, config.prompt_len

    prompts = LMReadout(host, HOOK, load_vocab(config.vocab, 50), config, "sotu", ctx.seed).prompts
    # Bare full forwards for the same sequences: every (strength, prompt) of one latent in one batch, timed
    # before and after the eval (the mean brackets load changes from other processes).
    batch = prompts.repeat(n_str, 1)
    host.forward(batch[:n_in])  # warm-up

    def time_bare() -> float:
        start = time.time()
        host.forward(batch)
        return time.time() - start

    before = time_bare()
    start = time.time()
    result = SPEC.run_fn()(ctx, sae, config)
    t_eval = time.time() - start
    det = result.details
    t_bare_latent = (before + time_bare()) / 2
    t_bare = t_bare_latent * n_lat + t_bare_latent / n_str  # plus the unsteered pass

    # Naive loop: one hooked full forward per (latent, strength) over the prompts.
    mask = host.ordinary_mask(prompts)
    start = time.time()
    for f in range(NAIVE_LATENTS):
        for s in config.strengths:

            def steer(x, f=f, s=s):
                return x + ((s - sae.encode(x.float())[..., f]) * mask)[..., None] * sae.W_dec[f] / sae.cfg.act_scale

            host.forward(prompts, interventions={HOOK: steer})
    t_naive = (time.time() - start) / NAIVE_LATENTS * n_lat

    print(f"SmolLM2-135M {HOOK}, {which}, preset demo: {n_lat} latents x {n_str} strengths x {n_in} prompts "
          f"of {L} tokens, vocabulary {det.vocab_size} words")
    print(f"eval (whole run: vocabulary, prompts, prefix, sweep, metrics): {t_eval:.1f} s "
          f"(prefix {det.seconds_prefix:.2f} s, sweep {det.seconds_sweep:.1f} s)")
    print(f"latents per second: {n_lat / t_eval:.2f}")
    print(f"bare full forwards needed ({n_lat * n_str * n_in + n_in} sequences): {t_bare:.1f} s "
          f"-> eval / bare = {t_eval / t_bare:.2f}")
    print(f"naive hooked loop (timed on {NAIVE_LATENTS} latents, scaled): {t_naive:.1f} s "
          f"-> eval / naive = {t_eval / t_naive:.2f}")
    m = result.metrics
    print(f"metrics: frac_steerable {m.frac_steerable:.3f}, mean S {m.mean_steerability:.4f}, "
          f"mean power {m.mean_power:.4f}")


if __name__ == "__main__":
    main()
