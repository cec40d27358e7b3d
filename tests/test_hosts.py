"""Hook names, capture with early stop, interventions, run-from-hook and generation on tiny random hosts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from saeval.errors import SaevalError
from saeval.hosts import LanguageHost


def _tokens(host, B=2, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(100, 5000, (B, L - 1), generator=g)
    return torch.cat([torch.full((B, 1), host.bos_id), body], 1)


def _other_hosts(tokenizer):
    V = len(tokenizer)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=64))
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=64))
    gemma2 = Gemma2ForCausalLM(Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                            max_position_embeddings=64))
    return [LanguageHost(m, tokenizer, m.config.model_type) for m in (gpt2, neox, gemma2)]


def test_wrong_hook_lists_valid_names(tiny_host):
    with pytest.raises(SaevalError, match="valid hooks are .*hook_resid_post"):
        tiny_host.hook("blocks.2.resid_post")
    with pytest.raises(SaevalError, match="unknown hook"):
        tiny_host.hook(f"blocks.{tiny_host.n_layers}.hook_resid_post")


def test_residual_hooks_match_hf_hidden_states(tiny_host):
    tokens = _tokens(tiny_host)
    hidden = tiny_host.model(tokens, output_hidden_states=True).hidden_states
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"]
    acts = tiny_host.capture(tokens, names)
    torch.testing.assert_close(acts[names[0]], hidden[0])
    torch.testing.assert_close(acts[names[1]], hidden[2])
    torch.testing.assert_close(acts[names[2]], hidden[2])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_resid_decomposes_into_attn_and_mlp(arch, tiny_host, smollm2_tokenizer):
    host = tiny_host if arch == "llama" else {h.config.model_type: h for h in _other_hosts(smollm2_tokenizer)}[arch]
    tokens = _tokens(host)
    names = [f"blocks.1.{k}" for k in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    a = host.capture(tokens, names)
    # Sequential and parallel (GPT-NeoX) blocks alike: resid_post = resid_pre + attn_out + mlp_out.
    torch.testing.assert_close(a[names[3]], a[names[0]] + a[names[1]] + a[names[2]], atol=1e-4, rtol=1e-4)


def test_capture_stops_after_last_needed_block(tiny_host):
    ran = []
    handles = [b.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, b in enumerate(tiny_host.blocks)]
    try:
        tiny_host.capture(_tokens(tiny_host), ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"])
        assert ran == [0, 1]
        ran.clear()
        tiny_host.capture(_tokens(tiny_host), ["blocks.2.hook_resid_pre"])
        assert ran == [0, 1]
    finally:
        for h in handles:
            h.remove()


def test_interventions_edit_the_forward(tiny_host):
    tokens = _tokens(tiny_host)
    clean = tiny_host.forward(tokens)
    same = tiny_host.forward(tokens, interventions={"blocks.1.hook_resid_post": lambda a: a.clone()})
    torch.testing.assert_close(same, clean)
    edited = tiny_host.forward(tokens, interventions={"blocks.1.hook_resid_post": torch.zeros_like})
    assert (edited - clean).abs().max() > 1e-3
    # An edit at a hook is what the next hook sees.
    zero = {"blocks.1.hook_resid_post": torch.zeros_like}
    got = tiny_host.capture(tokens, ["blocks.2.hook_resid_pre"], interventions=zero)
    assert got["blocks.2.hook_resid_pre"].abs().max() == 0


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.1.hook_mlp_out",
                                  "blocks.3.hook_resid_post"])
def test_run_from_hook_equals_full_forward(tiny_host, hook):
    tokens = _tokens(tiny_host, B=3)
    clean = tiny_host.forward(tokens)
    acts, state = tiny_host.prefix(tokens, hook)
    torch.testing.assert_close(tiny_host.run_from(state, acts), clean, atol=1e-4, rtol=1e-4)
    # Stacked variants: k copies of the batch, each copy continuing independently.
    doubled = torch.cat([acts, acts * 0.5])
    logits = tiny_host.run_from(state, doubled)
    torch.testing.assert_close(logits[:3], clean, atol=1e-4, rtol=1e-4)
    expected = tiny_host.forward(tokens, interventions={hook: lambda a: a * 0.5})
    torch.testing.assert_close(logits[3:], expected, atol=1e-4, rtol=1e-4)


def test_ordinary_mask_drops_special_and_padding(tiny_host):
    tokens = _tokens(tiny_host)
    tokens[1, -1] = tiny_host.pad_id
    attn = torch.ones_like(tokens)
    attn[0, -2:] = 0
    mask = tiny_host.ordinary_mask(tokens, attn)
    assert not mask[:, 0].any()
    assert not mask[1, -1] and not mask[0, -2:].any()
    assert mask[0, 1:-2].all()


def test_generation_is_seeded_and_sees_interventions(tiny_host):
    prompt = _tokens(tiny_host, B=2, L=6)
    a = tiny_host.generate(prompt, max_new_tokens=5, seed=3)
    b = tiny_host.generate(prompt, max_new_tokens=5, seed=3)
    assert a.shape == (2, 5) and torch.equal(a, b)
    push = tiny_host.model.get_input_embeddings().weight[1234] * 500

    def steer(acts):
        return acts + push

    steered = tiny_host.generate(prompt, interventions={"blocks.3.hook_resid_post": steer}, max_new_tokens=5,
                                 temperature=0)
    plain = tiny_host.generate(prompt, max_new_tokens=5, temperature=0)
    assert not torch.equal(steered, plain)


def test_sampler_matches_softmax_distribution():
    """Inverse-CDF sampling (two-level, float64 running total) draws each token with its softmax probability,
    never a masked one, also when the vocabulary is not a multiple of the block size."""
    from saeval.hosts.lm import sample_from_logits

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, -40.0, 0.5, -torch.inf, 3.0, -2.0, -torch.inf, 1.5]])
    n = 40_000
    picks = sample_from_logits(logits.expand(n, -1).contiguous(), torch.Generator().manual_seed(0), block=4)[:, 0]
    observed = np.bincount(picks.numpy(), minlength=logits.shape[1])
    expected = torch.softmax(logits, -1)[0].double().numpy() * n
    assert observed[6] == 0 and observed[9] == 0
    live = expected > 5
    chi2 = ((observed[live] - expected[live]) ** 2 / expected[live]).sum()
    assert chi2 < 30, (observed, expected.round())  # 8 degrees of freedom: p ~ 2e-4
    again = sample_from_logits(logits.expand(n, -1).contiguous(), torch.Generator().manual_seed(0), block=4)[:, 0]
    assert torch.equal(picks, again)


def _replace_last(acts_VD):
    def replace(acts_BLD):
        acts_BLD = acts_BLD.clone()
        acts_BLD[:, -1] = acts_VD.to(acts_BLD.dtype)
        return acts_BLD

    return replace


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_last_position_passes_equal_full_forward(arch, tiny_host, smollm2_tokenizer):
    """final_residual_last_VD after prefix_last (cached earlier positions, one single-position pass per
    variant) equals a full forward with the last position replaced, read at the last block's output."""
    host = tiny_host if arch == "llama" else {h.config.model_type: h for h in _other_hosts(smollm2_tokenizer)}[arch]
    tokens = _tokens(host, B=1, L=9)
    last = f"blocks.{host.n_layers - 1}.hook_resid_post"
    hooks = ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out", last]
    for hook in hooks:
        base = host.capture(tokens, [hook])[hook][0, -1]
        acts_VD = base + torch.randn(4, base.shape[0], generator=torch.Generator().manual_seed(0))
        caps = {last: []}
        host.forward(tokens.repeat(4, 1), interventions={hook: _replace_last(acts_VD)}, captures=caps)
        want_VD = caps[last][0][:, -1]
        point = host.hook(hook)
        for cached in (True, False):
            state = host.prefix_last(tokens, hook, cached=cached)
            if hook == last:  # the hook is the final residual: nothing to run
                assert state.start_block == host.n_layers
            elif cached and point.kind != "hook_mlp_out":  # a residual hook: cached single-position passes
                assert state.start_block == point.layer + (point.kind == "hook_resid_post")
            else:
                assert state.start_block == -1
            torch.testing.assert_close(host.final_residual_last_VD(state, acts_VD), want_VD, atol=1e-4, rtol=1e-4)
        # The state is reusable: a second batch of variants through the same cache.
        state = host.prefix_last(tokens, hook)
        torch.testing.assert_close(host.final_residual_last_VD(state, acts_VD[:1]), want_VD[:1], atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(host.final_residual_last_VD(state, acts_VD), want_VD, atol=1e-4, rtol=1e-4)
    with pytest.raises(SaevalError, match="one prompt of at least 2 tokens"):
        host.prefix_last(_tokens(host, B=2), hooks[0])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "biased"])
def test_unembedding_rows_equal_full_logits_columns(arch, tiny_host, smollm2_tokenizer):
    """vocab_logits_BLV with unembedding_rows_VD gives the full logits' columns of those tokens, with the
    head's bias (biased) and Gemma-2's soft-capping (gemma2)."""
    if arch == "biased":
        from tests.conftest import make_tiny_llama_host

        host = make_tiny_llama_host(smollm2_tokenizer, n_layers=1, d_model=32, seed=1)
        head = torch.nn.Linear(32, len(smollm2_tokenizer), bias=True)
        torch.nn.init.normal_(head.bias)
        host.model.lm_head = head.requires_grad_(False)
    else:
        host = tiny_host if arch == "llama" else {h.config.model_type: h
                                                  for h in _other_hosts(smollm2_tokenizer)}[arch]
    ids = [5, 1234, 17, 4000, 5]
    W_VD, b_V = host.unembedding_rows_VD(ids)
    assert W_VD.shape == (5, host.d_model) and W_VD.dtype == torch.float32
    assert (b_V is not None) == (arch == "biased")
    tokens = _tokens(host, B=2, L=7)
    last = f"blocks.{host.n_layers - 1}.hook_resid_post"
    resid_BLD = host.capture(tokens, [last])[last]
    full_BLV = host.logits_from_residual(resid_BLD)
    torch.testing.assert_close(host.vocab_logits_BLV(resid_BLD, W_VD, b_V), full_BLV[..., ids].float(),
                               atol=1e-5, rtol=1e-5)
    # And the full logits are the model's own.
    torch.testing.assert_close(full_BLV, host.forward(tokens), atol=1e-4, rtol=1e-4)
