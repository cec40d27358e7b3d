"""Numbers that cannot be right are flagged, never reported as plausible scores: NaN/inf weights and k > d_sae
fail at load in one line, zero vectors give a null cosine instead of 1, and a reconstruction that overflows
makes the core result invalid with its CE/KL scores withheld."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from saeval.analysis.reconstruction import ReconstructionStats, guard_metrics
from saeval.evals import EvalContext
from saeval.evals.core import SPEC
from saeval.results import write_result
from saeval.saes import SAEConfig, create_sae, load_sae, save_sae
from tests.helpers import error_of

HOOK = "blocks.1.hook_resid_post"
D, F, K = 16, 32, 4


def random_sae(arch: str = "relu", d_in: int = D, d_sae: int = F, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    sae = create_sae(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, hook_name=HOOK, **cfg))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


# ---------------------------------------------------------------- load-time checks


def test_nan_weights_fail_at_load_naming_the_tensor(tmp_path):
    sae = random_sae()
    with torch.no_grad():
        sae.W_dec[0, :3] = math.nan
    folder = save_sae(sae, tmp_path / "nan-sae")
    msg = error_of(load_sae, folder)
    assert "nan-sae" in msg and "W_dec has 3 NaN of 512 values" in msg
    assert "W_enc" not in msg  # only the bad tensor is named


def test_inf_weights_fail_at_load_and_all_problems_come_together(tmp_path):
    sae = random_sae()
    with torch.no_grad():
        sae.b_enc[1] = math.inf
        sae.W_enc[2, 2] = -math.inf
        sae.W_enc[3, 3] = math.nan
    msg = error_of(load_sae, save_sae(sae, tmp_path / "inf-sae"))
    assert "inf-sae" in msg
    assert "W_enc has 1 NaN and 1 inf of 512 values; b_enc has 1 inf of 32 values" in msg


def test_values_that_overflow_float32_on_load_are_caught(tmp_path):
    """A float64 file whose values do not fit float32 turns into inf in the copy: checked after it."""
    sae = random_sae()
    tensors = {n: p.detach().double().contiguous() for n, p in sae.named_parameters()}
    tensors["b_dec"][0] = 1e300
    (tmp_path / "big").mkdir()
    save_file(tensors, str(tmp_path / "big" / "sae_weights.safetensors"))
    (tmp_path / "big" / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": F}))
    assert "b_dec has 1 inf of 16 values" in error_of(load_sae, tmp_path / "big")


def test_topk_with_k_over_d_sae_fails_at_load(tmp_path):
    sae = random_sae("topk", k=K)
    folder = save_sae(sae, tmp_path / "topk")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "k": F + 1}))
    msg = error_of(load_sae, folder)
    assert "topk" in msg and f"k={F + 1}" in msg and f"d_sae={F}" in msg
    # Built directly the same config fails too, instead of inside torch's topk at the first encode.
    assert f"k={F + 1}" in error_of(create_sae, SAEConfig(architecture="topk", d_in=D, d_sae=F, k=F + 1))
    assert "k=0" in error_of(create_sae, SAEConfig(architecture="batchtopk", d_in=D, d_sae=F, k=0))


# ---------------------------------------------------------------- zero vectors


def test_zero_reconstruction_has_no_cosine():
    """Tokens whose reconstruction is all zero are left out of cossim (NaN per token, as SAELens); all zero ->
    NaN, not 1."""
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(0))
    stats = ReconstructionStats(D, F)
    xhat = x.clone()
    xhat[:2] = 0
    stats.update(x, xhat, torch.zeros(6, F))
    s = stats.summary()
    assert s["cossim"] == pytest.approx(1.0) and stats.n_zero_xhat == 2
    valid, warnings = stats.checks()
    assert valid and any("2 of 6 tokens have an all-zero reconstruction" in w for w in warnings)

    stats = ReconstructionStats(D, F)
    stats.update(torch.zeros(3, D), x[:3], torch.zeros(3, F))
    s = stats.summary()
    assert math.isnan(s["cossim"]) and math.isnan(s["l2_ratio"])


def test_undefined_scores_are_null_with_a_reason():
    stats = ReconstructionStats(D, F)
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(0))
    stats.update(x, x, torch.zeros(4, F))
    metrics = {**stats.summary(), "ce_loss_without_sae": 2.0, "ce_loss_with_sae": 2.0, "ce_loss_with_ablation": 2.0,
               "ce_loss_score": math.nan, "kl_div_with_sae": 0.0, "kl_div_with_ablation": 0.1, "kl_div_score": 1.0}
    valid, warnings = guard_metrics(metrics, stats)
    assert valid and metrics["ce_loss_score"] is None and metrics["kl_div_score"] == 1.0
    assert warnings == ["ce_loss_score is undefined (null): zero-ablation CE equals clean CE"]


# ---------------------------------------------------------------- core on the tiny host


def run_core(host, sae, **overrides):
    return SPEC.run_fn()(EvalContext(host=host, hook=HOOK, preset="tiny"), sae, SPEC.config("tiny", **overrides))


@pytest.fixture(scope="module")
def sane(tiny_host):
    return run_core(tiny_host, random_sae("topk", d_in=tiny_host.d_model, d_sae=128, k=8))


def test_sane_sae_is_valid_without_warnings(sane):
    assert sane.metrics.valid is True and sane.warnings == []
    assert sane.metrics.ce_loss_score is not None and 0 < sane.metrics.cossim < 1


def test_zero_decoder_reports_null_cossim_and_a_warning(tiny_host, tmp_path):
    sae = create_sae(SAEConfig(architecture="relu", d_in=tiny_host.d_model, d_sae=8, name="zero"))
    r = run_core(tiny_host, sae, compute_ce=False)
    assert r.metrics.cossim is None and r.metrics.valid is True
    assert any(f"{r.details.n_eval_tokens} of {r.details.n_eval_tokens} tokens have an all-zero reconstruction"
               in w for w in r.warnings)
    written = json.loads(write_result(tmp_path, r).read_text())
    assert written["metrics"]["cossim"] is None and written["metrics"]["valid"] is True


@pytest.mark.parametrize("scale", [(1.0, 1e30), (1e20, 1e20)], ids=["huge-xhat", "inf-xhat"])
def test_overflowing_decoder_is_invalid_not_a_better_score(tiny_host, sane, tmp_path, scale):
    """A decoder scaled to overflow used to score CE 1.5 against a sane SAE's 0.5 (uniform logits): now the
    result is invalid, says why, and its CE/KL scores are withheld."""
    sae = random_sae("topk", d_in=tiny_host.d_model, d_sae=128, k=8)
    with torch.no_grad():
        sae.W_enc.mul_(scale[0])
        sae.W_dec.mul_(scale[1])
    r = run_core(tiny_host, sae)
    assert r.metrics.valid is False
    assert any(w.startswith("invalid: ") for w in r.warnings)
    assert any("ce_loss_score and kl_div_score withheld" in w for w in r.warnings)
    assert r.metrics.ce_loss_score is None and r.metrics.kl_div_score is None
    assert sane.metrics.ce_loss_score is not None
    written = json.loads(write_result(tmp_path, r).read_text())
    assert written["metrics"]["valid"] is False and written["metrics"]["ce_loss_score"] is None
    assert written["warnings"] == r.warnings
