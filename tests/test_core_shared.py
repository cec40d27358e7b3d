"""Core's SAE-independent passes run once per run: a second SAE costs no forward up to the hook and one spliced
run after it per batch, and gets the numbers a run of its own gives. The projected KL equals the elementwise
one; Matryoshka prefixes and transcoders use the same passes."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from saeval.analysis.reconstruction import CleanDistribution
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals import EvalContext
from saeval.evals.core import SPEC, shared
from saeval.saes import SAEConfig, create_sae

HOOK = "blocks.1.hook_resid_post"
TINY = SPEC.config("tiny")
N_EVAL_BATCHES = math.ceil(TINY.n_eval_tokens / TINY.ctx_len / TINY.batch_size)
# Float32 rounding: the projected KL regroups sum_i p_i (log p_i - log q_i) into terms of size ~LSE(z) (~ln V
# = 10.8 here), so per position it differs from the elementwise sum by ~1e-6 nats; means over positions closer.
KL_TOL = 1e-6


def topk_sae(d: int, seed: int, d_sae: int = 128, k: int = 8):
    g = torch.Generator().manual_seed(seed)
    sae = create_sae(SAEConfig(architecture="topk", d_in=d, d_sae=d_sae, k=k, hook_name=HOOK, name=f"topk-s{seed}"))
    with torch.no_grad():
        sae.W_dec.copy_(F.normalize(torch.randn(d_sae, d, generator=g), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def identity_transcoder(d: int, hook_in: str, hook_out: str):
    """ReLU transcoder with latents +e_i and -e_i: its output at hook_out is its input at hook_in, exactly."""
    sae = create_sae(SAEConfig(architecture="relu", d_in=d, d_sae=2 * d, hook_name=hook_in, hook_name_out=hook_out,
                               apply_b_dec_to_input=False, name="identity-transcoder"))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


@contextmanager
def block_calls(host):
    """Counts calls of the first block (every forward from the embeddings) and of the last (every run)."""
    calls = {"first": 0, "last": 0}

    def counter(which):
        def hook(_m, _args):
            calls[which] += 1
        return hook

    handles = [host.blocks[0].register_forward_pre_hook(counter("first")),
               host.blocks[-1].register_forward_pre_hook(counter("last"))]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@contextmanager
def last_block_rows(host):
    """The batch size of every run through the last block."""
    rows: list[int] = []
    handle = host.blocks[-1].register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
    try:
        yield rows
    finally:
        handle.remove()


def run_core(host, sae, ctx=None, hook=HOOK, **overrides):
    """Core's tiny preset; ``density=False`` skips the density-only tokens (only the eval tokens' densities)."""
    ctx = ctx or EvalContext(host=host, hook=hook, preset="tiny")
    if not overrides.pop("density", True):
        overrides["n_density_tokens"] = TINY.n_eval_tokens
    return SPEC.run_fn()(ctx, sae, SPEC.config("tiny", **overrides))


def test_second_sae_reuses_the_sae_independent_passes(tiny_host):
    d = tiny_host.d_model
    first, second = topk_sae(d, 0), topk_sae(d, 1)
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    with block_calls(tiny_host) as calls:
        run_core(tiny_host, first, ctx)
        assert calls["first"] > 0
        calls.update(first=0, last=0)
        shared = run_core(tiny_host, second, ctx)
        # No forward from the embeddings (prefix, zero-ablation, density capture): only one spliced run per batch.
        assert calls == {"first": 0, "last": N_EVAL_BATCHES}
    assert shared.details.kl_method == "projected" and shared.details.shared_state_mb > 0
    alone = run_core(tiny_host, second)  # a run of its own: the same passes, the same numbers
    assert shared.metrics.model_dump() == alone.metrics.model_dump()
    assert shared.details.latent_density == alone.details.latent_density
    # Sharing nothing (shared_memory_mb=0) is the former per-SAE path: the same CE to float32 rounding, the same
    # KL within KL_TOL (elementwise there, projected here).
    with block_calls(tiny_host) as calls:
        unshared = run_core(tiny_host, second, shared_memory_mb=0)
        assert calls["first"] > N_EVAL_BATCHES
    assert unshared.details.shared_state_mb == 0
    a, b = shared.metrics.model_dump(), unshared.metrics.model_dump()
    for key in ("ce_loss_without_sae", "ce_loss_with_ablation", "kl_div_with_ablation", "l0", "mse", "frac_alive"):
        assert a[key] == b[key], key
    assert a["ce_loss_with_sae"] == pytest.approx(b["ce_loss_with_sae"], rel=1e-7)
    assert a["kl_div_with_sae"] == pytest.approx(b["kl_div_with_sae"], abs=KL_TOL)
    assert abs(a["kl_div_with_sae"] - b["kl_div_with_ablation"]) > 1e3 * KL_TOL  # the SAE's KL is not the ablation's


def test_over_budget_recomputes_per_sae(tiny_host):
    """A budget below one batch's state keeps nothing: each SAE recomputes the passes, with the same numbers."""
    sae = topk_sae(tiny_host.d_model, 2)
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    tight = run_core(tiny_host, sae, ctx, shared_memory_mb=0.01, density=False)
    with block_calls(tiny_host) as calls:
        again = run_core(tiny_host, sae, ctx, shared_memory_mb=0.01, density=False)
        assert calls["first"] == N_EVAL_BATCHES  # each batch's run up to the hook again
    assert tight.details.shared_state_mb == 0
    assert tight.metrics.model_dump() == again.metrics.model_dump() == run_core(
        tiny_host, sae, shared_memory_mb=0, density=False).metrics.model_dump()


def test_a_second_hook_borrows_the_clean_distribution(tiny_host):
    """The clean model does not depend on the hook: core at a second hook of the same run (same contexts) runs only
    its zero-ablated continuation per batch beside the prefix, and reports exactly what a run of its own reports
    (the zero-ablated KL goes through the clean distribution in both)."""
    d = tiny_host.d_model
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    run_core(tiny_host, topk_sae(d, 0), ctx, density=False)
    early = "blocks.0.hook_resid_post"
    other = EvalContext(host=tiny_host, hook=early, preset="tiny", run_memo=ctx.run_memo)
    sae = topk_sae(d, 1)
    sae.cfg = sae.cfg.model_copy(update={"hook_name": early})
    with last_block_rows(tiny_host) as rows:
        borrowed = run_core(tiny_host, sae, other, hook=early, density=False)
    # Through the last block: once one context's zero-ablated positions (uniform_zero_run), then per batch only
    # the SAE's spliced run; no clean rows.
    n_contexts = math.ceil(TINY.n_eval_tokens / TINY.ctx_len)
    assert rows[0] == 1 and len(rows) == 1 + N_EVAL_BATCHES and sum(rows[1:]) == n_contexts
    alone = run_core(tiny_host, sae, hook=early, density=False)
    assert borrowed.metrics.model_dump() == alone.metrics.model_dump()
    assert borrowed.metrics.kl_div_with_ablation > 1e3 * KL_TOL


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_a_uniform_residual_stream_runs_as_one_vector(arch, tiny_host, smollm2_tokenizer):
    """The claim uniform_zero_run rests on, on each model family: a residual stream holding one vector at every
    position gives the same logits at every position of every context (rotary or learned positions, parallel
    blocks, biases, Gemma-2's sliding window and soft-capping). A random vector shows it is not only a bias-free
    model mapping zeros to zeros (the Llama's zero-ablated logits are all 0); GPT-2's biases, drawn at random here,
    make its zero-ablated logits non-trivial."""
    from tests.test_hosts import _other_hosts

    host = tiny_host if arch == "llama" else {h.config.model_type: h for h in _other_hosts(smollm2_tokenizer)}[arch]
    if arch == "gpt2":
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in host.model.named_parameters():
                if name.endswith("bias"):
                    param.copy_(torch.randn(param.shape, generator=g) * 0.5)
    tokens = load_contexts(host, "sotu", 4 * TINY.ctx_len, TINY.ctx_len, 0)
    acts, state = host.prefix(tokens, HOOK)
    value = torch.randn(host.d_model, generator=torch.Generator().manual_seed(0)) * acts.std()
    with torch.inference_mode():
        logits = host.run_from(state, value.expand_as(acts).contiguous()).flatten(0, 1)
        zeroed = host.run_from(state, torch.zeros_like(acts)).flatten(0, 1)
    assert logits.std(-1).min() > 1e-3  # not constant over the vocabulary
    assert torch.allclose(logits, logits[:1].expand_as(logits), atol=1e-5)
    uniform = shared.uniform_zero_run(host, tokens, HOOK)
    assert uniform is not None and torch.allclose(uniform[0].expand_as(zeroed), zeroed, atol=1e-5)
    if arch == "gpt2":
        assert zeroed.std(-1).min() > 1e-3


def test_uniform_zero_run_equals_the_full_zero_ablated_batch(tiny_host, monkeypatch):
    """Core's zero-ablated CE and KL from the one-vector run equal those of the full zero-ablated batches, and so
    does everything else."""
    sae = topk_sae(tiny_host.d_model, 0)
    n_contexts = math.ceil(TINY.n_eval_tokens / TINY.ctx_len)
    with last_block_rows(tiny_host) as rows:
        fast = run_core(tiny_host, sae, density=False).metrics.model_dump()
    assert sum(rows) == 1 + 2 * n_contexts  # one context's zeroed positions, then clean and spliced rows
    monkeypatch.setattr(shared, "uniform_zero_run", lambda *_a, **_k: None)
    with last_block_rows(tiny_host) as rows:
        full = run_core(tiny_host, sae, density=False).metrics.model_dump()
    assert sum(rows) == 3 * n_contexts  # clean, zero-ablated and spliced rows
    for key in ("ce_loss_with_ablation", "kl_div_with_ablation", "ce_loss_score", "kl_div_score"):
        assert fast[key] == pytest.approx(full[key], rel=1e-6, abs=1e-7), key
        fast.pop(key), full.pop(key)
    assert fast == full


def test_position_dependent_continuations_run_the_full_batch(tiny_host, monkeypatch):
    """uniform_zero_run declines when the zeroed run is not one vector: a hook inside a block (the residual
    stream is not zeroed), a continuation that adds a position-dependent term, or zero ablation at ordinary
    tokens only (BOS keeps its activation, so core runs the full batch)."""
    tokens = load_contexts(tiny_host, "sotu", TINY.ctx_len, TINY.ctx_len, 0)
    assert shared.uniform_zero_run(tiny_host, tokens, "blocks.1.hook_attn_out") is None
    plain = tiny_host.residual_from
    shifted = lambda state, acts: plain(state, acts) + torch.arange(acts.shape[1])[None, :, None]  # noqa: E731
    monkeypatch.setattr(tiny_host, "residual_from", shifted)
    assert shared.uniform_zero_run(tiny_host, tokens, HOOK) is None
    monkeypatch.undo()
    with last_block_rows(tiny_host) as rows:
        run_core(tiny_host, topk_sae(tiny_host.d_model, 0), zero_ablation_positions="ordinary", density=False)
    assert sum(rows) == 3 * math.ceil(TINY.n_eval_tokens / TINY.ctx_len)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projected_kl_equals_elementwise_kl(dtype):
    """KL from CleanDistribution (2 d_model + 2 numbers per position) against the KL computed elementwise over
    the vocabulary in float64 from float64 weights, for an affine unembedding z = W n + b with logits up to ~90.
    In float32 both the projection and the elementwise float32 sum are off by the logits' own rounding (an ulp of
    ~90 is 8e-6); the projection, which does not see the rounded logits in its W^T p term, by a few times more
    on average."""
    g = torch.Generator().manual_seed(0)
    V, D = 5000, 48
    W, b = torch.randn(V, D, generator=g), torch.randn(V, generator=g)
    n_clean = 3 * torch.randn(2, 7, D, generator=g)
    n_run = n_clean + 0.3 * torch.randn(2, 7, D, generator=g)
    truth_c, truth = (n.double() @ W.double().T + b.double() for n in (n_clean, n_run))
    exact = (F.softmax(truth_c, -1) * (F.log_softmax(truth_c, -1) - F.log_softmax(truth, -1))).sum(-1)
    assert exact.mean() > 0.1  # distributions far apart: not a vacuous comparison
    W, b, n_clean, n_run = (t.to(dtype) for t in (W, b, n_clean, n_run))
    clean_logits, logits = n_clean @ W.T + b, n_run @ W.T + b
    projected = CleanDistribution.of(clean_logits, n_clean, W).kl_BL(logits, n_run)
    error = (projected - exact).abs()
    if dtype == torch.float64:
        assert error.max() < 1e-10
    else:
        elementwise = (F.softmax(clean_logits, -1) * (F.log_softmax(clean_logits, -1)
                                                      - F.log_softmax(logits, -1))).sum(-1).double()
        assert error.max() < 3e-5 and (elementwise - exact).abs().max() < 3e-5
        assert error.mean() < 1e-5


def test_soft_capped_logits_rerun_the_clean_model(smollm2_tokenizer):
    """Soft-capped logits are not affine in the final residual: no projection is kept, each SAE reruns the clean
    model from the stored activation (no forward from the embeddings), with the per-SAE path's numbers."""
    from tests.conftest import make_tiny_llama_host

    host = make_tiny_llama_host(smollm2_tokenizer, n_layers=3, seed=1)
    host.config.final_logit_softcapping = 2.0  # logits_from_residual caps; a small cap makes it matter
    sae = topk_sae(host.d_model, 3)
    ctx = EvalContext(host=host, hook=HOOK, preset="tiny")
    run_core(host, sae, ctx, density=False)
    with block_calls(host) as calls:
        shared = run_core(host, sae, ctx, density=False)
        assert calls == {"first": 0, "last": N_EVAL_BATCHES}  # clean and spliced stacked in one run per batch
    assert shared.details.kl_method == "recomputed"
    unshared = run_core(host, sae, shared_memory_mb=0, density=False)
    for key in ("ce_loss_with_sae", "kl_div_with_sae", "kl_div_score", "ce_loss_score"):
        assert getattr(shared.metrics, key) == pytest.approx(getattr(unshared.metrics, key), rel=1e-6, abs=1e-7)


def test_matryoshka_prefixes_share_the_passes(tiny_host):
    """Each prefix's metrics are those of a core run on sae.prefix(w) alone, computed with one extra spliced run
    per batch and prefix; the full width reproduces the SAE's own metrics."""
    d = tiny_host.d_model
    sae = topk_sae(d, 4, d_sae=96, k=12)
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    run_core(tiny_host, topk_sae(d, 5), ctx, density=False)  # fills the shared passes
    widths = [24, 48, 96]
    with block_calls(tiny_host) as calls:
        result = run_core(tiny_host, sae, ctx, prefixes=widths, density=False)
        assert calls == {"first": 0, "last": N_EVAL_BATCHES * (1 + len(widths))}
    rows = result.details.prefixes
    assert [r.width for r in rows] == widths
    for row in rows:
        alone = run_core(tiny_host, sae.prefix(row.width), ctx, density=False).metrics
        for key in ("l0", "mse", "explained_variance", "ce_loss_with_sae", "ce_loss_score", "kl_div_score"):
            assert getattr(row, key) == getattr(alone, key), (row.width, key)
    full = rows[-1]
    assert full.ce_loss_score == result.metrics.ce_loss_score and full.l0 == result.metrics.l0
    assert rows[0].l0 < rows[-1].l0 and rows[0].mse > rows[-1].mse  # fewer latents: sparser, worse


def test_bad_prefix_widths_fail_before_any_forward(tiny_host):
    sae = topk_sae(tiny_host.d_model, 6, d_sae=32)
    with block_calls(tiny_host) as calls:
        with pytest.raises(SaevalError, match=r"core.prefixes \[33\].*d_sae=32"):
            run_core(tiny_host, sae, prefixes=[8, 33])
        assert calls["first"] == 0
    with pytest.raises(SaevalError, match="prefixes"):
        SPEC.config("tiny", prefixes=[0, 8])


def test_identity_transcoder_scores_one(tiny_host):
    """blocks.1.hook_resid_post and blocks.2.hook_resid_pre are the same activation: a transcoder copying one
    into the other is lossless."""
    sae = identity_transcoder(tiny_host.d_model, HOOK, "blocks.2.hook_resid_pre")
    r = run_core(tiny_host, sae)
    m = r.metrics
    assert m.valid and r.details.hook_out == "blocks.2.hook_resid_pre"
    assert m.ce_loss_score == pytest.approx(1.0, abs=1e-5) and m.kl_div_score == pytest.approx(1.0, abs=1e-5)
    assert m.mse == pytest.approx(0.0, abs=1e-8)
    assert m.average_encoder_decoder_cosine_sim is None  # different hooks: no such cosine


def test_transcoder_reads_hook_in_and_splices_at_hook_out(tiny_host):
    """An identity transcoder from blocks.0.hook_resid_post to blocks.1.hook_resid_post: its MSE is the mean
    ||a0 - a1||^2 and its spliced CE is the model's with a1 replaced by a0 at ordinary tokens, both computed
    here from the host directly."""
    hook_in, hook_out = "blocks.0.hook_resid_post", HOOK
    sae = identity_transcoder(tiny_host.d_model, hook_in, hook_out)
    r = run_core(tiny_host, sae, hook=hook_in, n_density_tokens=TINY.n_eval_tokens)
    contexts = load_contexts(tiny_host, "sotu", TINY.n_eval_tokens, TINY.ctx_len, 0)
    mask = tiny_host.ordinary_mask(contexts)
    acts = tiny_host.capture(contexts, [hook_in, hook_out])
    a0, a1 = acts[hook_in].double(), acts[hook_out].double()
    assert r.metrics.mse == pytest.approx(float((a0 - a1)[mask].pow(2).sum(-1).mean()), rel=1e-5)

    def replace(x):
        return torch.where(mask[..., None], acts[hook_in].to(x.dtype), x)

    logp = F.log_softmax(tiny_host.forward(contexts, interventions={hook_out: replace}).double(), -1)
    ce = -logp[:, :-1].gather(-1, contexts[:, 1:, None]).squeeze(-1)[mask[:, :-1]]
    assert r.metrics.ce_loss_with_sae == pytest.approx(float(ce.mean()), rel=1e-5)
    assert 0 < r.metrics.ce_loss_score < 1 and r.metrics.mse > 1e-3  # a lossy stand-in, not a copy


def test_transcoder_hooks_out_of_order_fail_in_one_line(tiny_host):
    sae = identity_transcoder(tiny_host.d_model, "blocks.2.hook_resid_post", HOOK)
    with pytest.raises(SaevalError, match="comes after its output hook"):
        run_core(tiny_host, sae, hook="blocks.2.hook_resid_post")


def test_projection_only_for_affine_full_precision_heads(smollm2_tokenizer):
    """The projection needs z = W n + b in float32/float64: soft-capped or bf16 logits rerun the clean model."""
    from saeval.evals.core.shared import linear_unembedding
    from tests.conftest import make_tiny_llama_host

    host = make_tiny_llama_host(smollm2_tokenizer, n_layers=1)
    assert linear_unembedding(host) is host.model.get_output_embeddings().weight
    host.model.to(torch.bfloat16)
    assert linear_unembedding(host) is None
    host.model.to(torch.float32)
    host.config.final_logit_softcapping = 30.0
    assert linear_unembedding(host) is None


def windows_records(host, sae, contexts, memo):
    from saeval.analysis.windows import collect_windows, shared_host

    result = collect_windows(shared_host(host, HOOK, contexts, memo), [(sae, range(sae.d_sae))], contexts, HOOK,
                             window=8, k=3, reservoir=5, n_pool=10)[0]
    return {f: result.latents[f].model_dump() for f in result.features}


def test_core_activations_serve_the_windows_passes(tiny_host):
    """A windows pass over core's contexts (same corpus, seed and ctx_len) finds their activations in the run's
    memo, from the eval batches and the density batches alike: no forward, and the same windows as its own pass."""
    sae = topk_sae(tiny_host.d_model, 0)
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    run_core(tiny_host, sae, ctx)
    contexts = load_contexts(tiny_host, ctx.corpus, TINY.n_density_tokens, TINY.ctx_len, ctx.seed)
    with block_calls(tiny_host) as calls:
        shared = windows_records(tiny_host, sae, contexts, ctx.memo)
    assert calls["first"] == 0
    assert shared == windows_records(tiny_host, sae, contexts, {})


def test_core_density_reads_a_windows_pass(tiny_host):
    """The other way round: after a windows pass over the density contexts, core runs only its eval batches up to
    the hook, and reports what it reports alone."""
    sae = topk_sae(tiny_host.d_model, 0)
    ctx = EvalContext(host=tiny_host, hook=HOOK, preset="tiny")
    contexts = load_contexts(tiny_host, ctx.corpus, TINY.n_density_tokens, TINY.ctx_len, ctx.seed)
    windows_records(tiny_host, sae, contexts, ctx.memo)
    with block_calls(tiny_host) as calls:
        after = run_core(tiny_host, sae, ctx)
    assert calls["first"] == N_EVAL_BATCHES + 1  # the eval batches' prefix and the zero-run probe's
    assert after.metrics.model_dump() == run_core(tiny_host, sae).metrics.model_dump()
