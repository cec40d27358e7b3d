"""LanguageHost.sample_unconditional, the decode loop of the self-generated corpus: the same cut samples as
host.generate for the same seed (also when rows stop early and leave the batch), seeded, cheaper per step."""

from __future__ import annotations

import pytest
import torch

from saeval.data.selfgen import _cut
from saeval.hosts import LanguageHost
from saeval.hosts.lm import _preallocated_cache, _PreallocatedLayer, sample_from_logits

B, T = 12, 24


def old_path(host, seed: int, stop_S: torch.Tensor, temperature: float = 1.0) -> list[list[int]]:
    """What selfgen sampled before: HF generate from BOS with the inverse-CDF processor, cut at a stop token."""
    prompt = torch.full((B, 1), host.bos_id, dtype=torch.long)
    new = host.generate(prompt, torch.ones_like(prompt), max_new_tokens=T, temperature=temperature, seed=seed)
    return [_cut(row, stop_S).tolist() for row in new]


def staggered_stops(host, seed: int) -> torch.Tensor:
    """Stop ids taken from generate's own samples so that rows 0..4 stop at steps 1, 4, 7, 10, 13 at the latest:
    a random tiny model almost never emits a special token, and the dropping must be exercised."""
    prompt = torch.full((B, 1), host.bos_id, dtype=torch.long)
    new = host.generate(prompt, torch.ones_like(prompt), max_new_tokens=T, seed=seed)
    return torch.unique(torch.stack([new[i, 1 + 3 * i] for i in range(5)]))


@pytest.mark.parametrize(("arch", "seed"), [("llama", 0), ("llama", 7), ("llama", 123), ("gpt2", 0), ("gpt_neox", 0)])
def test_matches_generate_when_rows_stop_early(arch, seed, tiny_host, smollm2_tokenizer):
    from tests.test_hosts import _other_hosts

    host = tiny_host if arch == "llama" else {h.config.model_type: h for h in _other_hosts(smollm2_tokenizer)}[arch]
    stop_S = staggered_stops(host, seed)
    new = host.sample_unconditional(B, T, seed=seed, stop_ids=stop_S)
    assert new == old_path(host, seed, stop_S)
    lengths = [len(row) for row in new]
    assert sum(n < T for n in lengths) >= 5 and max(lengths) == T  # rows left the batch, others ran to the end
    assert all(not set(row) & set(stop_S.tolist()) for row in new)


def test_matches_generate_with_a_sliding_window_cache(smollm2_tokenizer):
    """Gemma-2 alternates sliding-window layers (kept as HF's) with full ones (preallocated): still generate's
    samples, with rows leaving the batch and a window shorter than the samples."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=6,
                       bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id)
    host = LanguageHost(Gemma2ForCausalLM(cfg), smollm2_tokenizer, "tiny-gemma2")
    assert {type(layer).__name__ for layer in _preallocated_cache(host.model, T).layers} == {
        "DynamicSlidingWindowLayer", "_PreallocatedLayer"}
    stop_S = staggered_stops(host, 4)
    assert host.sample_unconditional(B, T, seed=4, stop_ids=stop_S) == old_path(host, 4, stop_S)


def test_full_attention_layers_are_preallocated(tiny_host):
    assert all(isinstance(layer, _PreallocatedLayer) for layer in _preallocated_cache(tiny_host.model, T).layers)


def test_matches_generate_without_stops_and_at_other_temperatures(tiny_host):
    for temperature in (1.0, 0.7, 0.0):
        new = tiny_host.sample_unconditional(B, T, temperature=temperature, seed=3)
        assert new == old_path(tiny_host, 3, tiny_host.special_ids, temperature)


def test_seeded(tiny_host):
    a = tiny_host.sample_unconditional(B, T, seed=5)
    assert a == tiny_host.sample_unconditional(B, T, seed=5)
    b = tiny_host.sample_unconditional(B, T, seed=6)
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_a_row_does_not_depend_on_the_others_stopping(tiny_host):
    """Each step draws a uniform for every row of the original batch: a row's sample is the same whether or not
    other rows stopped (and left the batch) before it."""
    stop_S = staggered_stops(tiny_host, 9)
    free = tiny_host.sample_unconditional(B, T, seed=9, stop_ids=[])
    stopped = tiny_host.sample_unconditional(B, T, seed=9, stop_ids=stop_S)
    for row_free, row_stopped in zip(free, stopped, strict=True):
        assert row_stopped == _cut(torch.tensor(row_free), stop_S).tolist()


def test_sample_from_logits_takes_given_uniforms():
    logits_BV = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))
    drawn = sample_from_logits(logits_BV, torch.Generator().manual_seed(4))
    u_B1 = torch.rand((6, 1), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(sample_from_logits(logits_BV, None, u_B1=u_B1), drawn)


def test_no_new_tokens(tiny_host):
    assert tiny_host.sample_unconditional(3, 0) == [[], [], []]
