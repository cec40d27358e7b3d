"""Core metrics: identity/zero SAEs bound the CE score, formulas match NumPy, a planted dictionary is recovered,
the shared reconstruction loop gives core and cross-data the same numbers, configs load without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from saeval.analysis.matching import cross_data_metrics, cross_data_table
from saeval.analysis.reconstruction import ReconstructionStats
from saeval.data.corpora import load_contexts
from saeval.evals import EvalContext
from saeval.evals.core import SPEC
from saeval.evals.core.run import weight_cosines
from saeval.saes import SAEConfig, create_sae
from saeval.saes.train import TrainConfig, train_sae

HOOK = "blocks.1.hook_resid_post"


def identity_sae(d: int):
    """ReLU SAE with latents +e_i and -e_i: relu(x) - relu(-x) = x exactly."""
    sae = create_sae(SAEConfig(architecture="relu", d_in=d, d_sae=2 * d, apply_b_dec_to_input=False, name="identity"))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def run_core(host, sae, **overrides):
    cfg = SPEC.config("tiny", **overrides)
    return SPEC.run_fn()(EvalContext(host=host, hook=HOOK, preset="tiny"), sae, cfg)


def test_identity_sae_scores_one(tiny_host):
    r = run_core(tiny_host, identity_sae(tiny_host.d_model))
    m = r.metrics
    assert m.valid and r.warnings == []
    assert m.ce_loss_score == pytest.approx(1.0, abs=1e-5)
    assert m.kl_div_score == pytest.approx(1.0, abs=1e-5)
    assert m.explained_variance == pytest.approx(1.0, abs=1e-9)
    assert m.mse == pytest.approx(0.0, abs=1e-8)
    assert m.cossim == pytest.approx(1.0) and m.l2_ratio == pytest.approx(1.0)


def test_zero_sae_scores_zero(tiny_host):
    """A zero SAE is the zero-ablation wherever both zero the same positions: with zeros at ordinary positions
    only, it scores 0. The default ablation (SAELens) also zeroes BOS, which the SAE run keeps."""
    sae = create_sae(SAEConfig(architecture="relu", d_in=tiny_host.d_model, d_sae=8, name="zero"))
    # Sharing nothing, the spliced and the zero-ablated runs are computed alike: equal to float32 rounding.
    r = run_core(tiny_host, sae, zero_ablation_positions="ordinary", kl_positions="with_next_token",
                 shared_memory_mb=0)
    assert r.metrics.ce_loss_score == pytest.approx(0.0, abs=1e-6)
    assert r.metrics.kl_div_score == pytest.approx(0.0, abs=1e-6)
    # Shared (the default), the spliced run's KL comes from the projected clean distribution and its CE from
    # LSE(z) - z_target: ~1e-7 nats from the elementwise values, which the small CE gap (0.02 nats) and KL of
    # the zero-ablation (0.014) of this random model magnify to ~1e-5 in the scores.
    shared = run_core(tiny_host, sae, zero_ablation_positions="ordinary", kl_positions="with_next_token")
    assert shared.metrics.ce_loss_score == pytest.approx(0.0, abs=5e-5)
    assert shared.metrics.kl_div_score == pytest.approx(0.0, abs=5e-5)
    default = run_core(tiny_host, sae)
    assert default.metrics.ce_loss_with_sae == pytest.approx(shared.metrics.ce_loss_with_sae, rel=1e-9)
    assert abs(default.metrics.ce_loss_with_ablation - r.metrics.ce_loss_with_ablation) > 1e-3
    assert abs(default.metrics.ce_loss_score) > 1e-3 and abs(default.metrics.kl_div_score) > 1e-3
    # CE averages over positions 0..L-2 with an ordinary input token; KL by default over every ordinary one.
    assert default.details.n_kl_positions == default.details.n_eval_tokens > default.details.n_ce_positions
    assert r.details.n_kl_positions == r.details.n_ce_positions == default.details.n_ce_positions
    assert r.metrics.l0 == 0 and r.metrics.frac_alive == 0
    assert r.details.n_eval_tokens > 0
    # Poor but not broken: valid, with a null cosine (zero reconstructions have no direction) instead of 1.
    assert r.metrics.valid and r.metrics.cossim is None


def test_density_tokens_cover_the_eval_tokens(tiny_host):
    """Densities see the reconstruction tokens plus the rest of n_density_tokens (ordinary tokens only)."""
    assert SPEC.config("tiny").n_density_tokens == 1024 and SPEC.config("demo").n_density_tokens == 32768
    r = run_core(tiny_host, identity_sae(tiny_host.d_model), compute_ce=False)
    d = r.details
    assert d.n_eval_tokens < d.n_density_tokens <= 1024 and len(d.latent_density) == 2 * tiny_host.d_model
    assert r.metrics.ce_loss_score is None and r.metrics.kl_div_score is None


def test_cross_data_metrics_agree_with_core(tiny_host):
    """Core (shared per-run passes) and FaithfulSAE's cross-data metrics (reconstruction_batches, per SAE) share
    their statistics and CE: on the same contexts they report the same reconstruction error and clean and spliced
    CE."""
    torch.manual_seed(0)
    sae = create_sae(SAEConfig(architecture="topk", d_in=tiny_host.d_model, d_sae=128, k=8, hook_name=HOOK,
                               name="topk"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(128, tiny_host.d_model), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    core = run_core(tiny_host, sae, n_density_tokens=512).metrics
    contexts = load_contexts(tiny_host, "sotu", 512, 32, 0)
    cross = cross_data_metrics(tiny_host, sae, "sotu", batch_size=8, contexts_NL=contexts)
    assert cross["mse"] == pytest.approx(core.mse, rel=1e-12)
    assert cross["explained_variance"] == pytest.approx(core.explained_variance, rel=1e-12)
    assert cross["ce_clean"] == pytest.approx(core.ce_loss_without_sae, rel=1e-5)
    assert cross["ce_sae"] == pytest.approx(core.ce_loss_with_sae, rel=1e-5)
    assert core.ce_loss_with_ablation != pytest.approx(core.ce_loss_with_sae)
    # Several SAEs in one pass (one clean run per batch for all): each row is what the SAE gets alone.
    other = create_sae(SAEConfig(architecture="topk", d_in=tiny_host.d_model, d_sae=64, k=4, hook_name=HOOK,
                                 name="other"))
    rows = cross_data_table(tiny_host, [sae, other], "sotu", HOOK, contexts, batch_size=8)
    assert rows[0] == cross
    assert rows[1] == cross_data_metrics(tiny_host, other, "sotu", batch_size=8, contexts_NL=contexts)
    assert rows[1]["ce_sae"] != pytest.approx(rows[0]["ce_sae"])


def test_configs_import_without_torch():
    """The CLI validates configs before loading a model: no eval's config module may pull in torch."""
    code = (
        "import sys\n"
        "import saeval.evals.core.config, saeval.evals.synthetic.config, saeval.evals.steerability.config\n"
        "import saeval.evals.core, saeval.evals.synthetic, saeval.evals.steerability\n"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'sklearn', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from saeval.evals.base import EVALS\n"
        "assert {'core', 'synthetic', 'steerability'} <= set(EVALS)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", ["core", "synthetic", "steerability"])
def test_every_config_field_and_metric_is_described(name):
    import importlib

    spec = importlib.import_module(f"saeval.evals.{name}").SPEC
    metrics_cls = spec.result_cls.model_fields["metrics"].annotation
    for cls in (spec.config_cls, metrics_cls):
        missing = [f for f, info in cls.model_fields.items() if not info.description]
        assert not missing, f"{cls.__name__}: {missing}"
    for preset in spec.presets:
        spec.config(preset)  # every preset validates


def test_reconstruction_formulas_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (500, 16))
    xhat = x + rng.normal(0, 0.7, x.shape)
    stats = ReconstructionStats(16, 4)
    for chunk in np.array_split(np.arange(500), 5):  # five "batches"
        stats.update(torch.tensor(x[chunk], dtype=torch.float32), torch.tensor(xhat[chunk], dtype=torch.float32),
                     torch.zeros(len(chunk), 4))
    s = stats.summary()
    err = ((x - xhat) ** 2).sum(1)
    assert s["mse"] == pytest.approx(err.mean(), rel=1e-5)
    total_var = (x**2).sum(1).mean() - (x.mean(0) ** 2).sum()
    assert s["explained_variance"] == pytest.approx(1 - err.mean() / total_var, rel=1e-5)
    chunks = np.array_split(np.arange(500), 5)
    legacy = np.concatenate([1 - err[c] / ((x[c] - x[c].mean(0)) ** 2).sum(1) for c in chunks])
    assert s["explained_variance_legacy"] == pytest.approx(legacy.mean(), rel=1e-4)
    cos = (x * xhat).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(xhat, axis=1)
    assert s["cossim"] == pytest.approx(cos.mean(), rel=1e-5)
    # SAELens's per-batch ratio averaged over batches, and the single ratio over all tokens.
    bias = np.mean([(xhat[c] ** 2).sum(1).mean() / (x[c] * xhat[c]).sum(1).mean() for c in chunks])
    assert s["relative_reconstruction_bias"] == pytest.approx(bias, rel=1e-5)
    bias_global = (xhat**2).sum(1).mean() / (x * xhat).sum(1).mean()
    assert s["relative_reconstruction_bias_global"] == pytest.approx(bias_global, rel=1e-5)
    assert abs(bias - bias_global) > 1e-5  # the chunks differ enough to tell the two apart


def test_decoder_cosines_match_numpy():
    sae = create_sae(SAEConfig(architecture="relu", d_in=8, d_sae=30))
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_enc.normal_()
    max_dec, _, _ = weight_cosines(sae, chunk=7)
    Wn = sae.W_dec.detach().numpy()
    W = Wn / np.linalg.norm(Wn, axis=1, keepdims=True)
    cos = W @ W.T
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_allclose(max_dec.numpy(), cos.max(1), atol=1e-6)


def test_planted_sparse_dictionary_is_recovered():
    """Activations built from 64 sparse latents (4 active each): a TopK SAE trained on them explains them."""
    g = torch.Generator().manual_seed(0)
    d, n_latents, n = 32, 64, 20_000
    D = torch.nn.functional.normalize(torch.randn(n_latents, d, generator=g), dim=-1)
    idx = torch.stack([torch.randperm(n_latents, generator=g)[:4] for _ in range(n)])
    codes = torch.zeros(n, n_latents).scatter_(1, idx, torch.rand(n, 4, generator=g) * 4 + 1)
    x = codes @ D
    cfg = TrainConfig(architecture="topk", d_sae=128, k=4, lr=3e-3, batch_size=256, epochs=8, dead_tokens=5000)
    sae, log = train_sae([x], n, d, cfg)
    stats = ReconstructionStats(d, 128)
    f = sae.encode(x)
    stats.update(x, sae.decode(f), f)
    assert stats.explained_variance() > 0.9
    # Most planted directions have a decoder row pointing the same way.
    best = (D @ torch.nn.functional.normalize(sae.W_dec, dim=-1).T).max(1).values
    assert (best > 0.9).float().mean() > 0.7
