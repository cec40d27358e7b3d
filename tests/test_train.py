"""The SAE trainer: hand-written TopK gradients equal autograd's, several SAEs trained from one pass equal each
trained alone, an epoch snapshot equals the shorter run, a planted dictionary is recovered (TopK and ReLU), bad
input."""

from __future__ import annotations

import pytest
import torch

from saeval.analysis.matching import match_saes
from saeval.errors import SaevalError
from saeval.saes import train as train_module
from saeval.saes.base import SAEConfig, create_sae
from saeval.saes.train import (
    TrainConfig,
    _loss,
    _topk_grads,
    intra_op_threads,
    threads_per_sae,
    train_sae,
    train_saes,
)


def planted(n: int = 8192, d: int = 32, n_features: int = 48, k: int = 3, seed: int = 0):
    """Tokens that are sparse non-negative combinations of ``n_features`` random unit directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_features, d, generator=g), dim=-1)
    idx = torch.stack([torch.randperm(n_features, generator=g)[:k] for _ in range(n)])
    coef = torch.zeros(n, n_features).scatter_(1, idx, torch.rand(n, k, generator=g) + 0.5)
    return coef @ dirs + 0.01 * torch.randn(n, d, generator=g), dirs


@pytest.mark.parametrize("n_dead", [0, 20])
def test_topk_gradients_equal_autograd(n_dead):
    torch.manual_seed(0)
    d, f = 16, 64
    cfg = TrainConfig(d_sae=f, k=4, dead_tokens=50, aux_k=8)
    sae = create_sae(SAEConfig(architecture="topk", d_in=d, d_sae=f, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(32, d)
    silent = torch.zeros(f, dtype=torch.long)
    silent[:n_dead] = 100  # these latents count as dead, so the AuxK term and its gradients are exercised
    loss, stats = _loss(sae, x, cfg, silent.clone(), cfg.aux_k)
    loss.backward()
    manual = create_sae(sae.cfg)
    manual.load_state_dict(sae.state_dict())
    manual.W_enc = torch.nn.Parameter(manual.W_enc.data.T.contiguous())  # the trainer's [d_sae, d_in] layout
    manual_stats = _topk_grads(manual, x, cfg, silent.clone(), cfg.aux_k)
    assert (stats["aux"] > 0) == (n_dead > 0)
    assert manual_stats == pytest.approx(stats, rel=1e-5)
    for name, p in manual.named_parameters():
        want = getattr(sae, name).grad
        torch.testing.assert_close(p.grad.T if name == "W_enc" else p.grad, want, rtol=1e-5, atol=1e-7)


def test_joint_training_equals_single_runs():
    x, _ = planted(n=1024)
    shards = [x[:512], x[512:]]
    configs = [TrainConfig(d_sae=64, k=3, lr=3e-3, batch_size=128, epochs=2, dead_tokens=500, seed=0),
               TrainConfig(d_sae=96, k=4, lr=1e-3, batch_size=256, epochs=3, dead_tokens=500, seed=1)]
    joint = train_saes(shards, len(x), 32, configs, "hook", "model", ["a", "b"])
    for (sae, log), cfg, name in zip(joint, configs, ["a", "b"], strict=True):
        # On several cores the joint SAEs step in threads of their own, each with its share of the cores.
        with intra_op_threads(threads_per_sae(len(configs))):
            alone, alone_log = train_sae(shards, len(x), 32, cfg, "hook", "model", name=name)
        assert log == alone_log and sae.cfg == alone.cfg
        for key, value in alone.state_dict().items():
            assert torch.equal(sae.state_dict()[key], value), key


def test_threaded_training_equals_training_in_turn(monkeypatch):
    """SAEs stepping in threads of their own (several cores) are the SAEs stepping in turn with the same intra-op
    threads: nothing of one SAE's state reaches another's."""
    x, _ = planted(n=2048)
    configs = [TrainConfig(d_sae=256, k=8, lr=3e-3, batch_size=128, epochs=2, dead_tokens=500, seed=s) for s in (0, 1)]
    with intra_op_threads(2):
        threaded = train_saes([x[:1024], x[1024:]], len(x), 32, configs)
    monkeypatch.setattr(train_module, "_step_in_threads", None)  # the threaded path would fail: not taken
    with intra_op_threads(1):
        in_turn = train_saes([x[:1024], x[1024:]], len(x), 32, configs)
    for (a, log_a), (b, log_b) in zip(threaded, in_turn, strict=True):
        assert log_a == log_b
        for key, value in a.state_dict().items():
            assert torch.equal(b.state_dict()[key], value), key


def test_epoch_snapshot_equals_shorter_run():
    x, _ = planted(n=512)
    cfg = TrainConfig(d_sae=64, k=3, lr=3e-3, batch_size=128, epochs=3, dead_tokens=1000, seed=2)
    snapshots = {}
    train_saes([x], len(x), 32, [cfg], on_epoch=lambda epoch, saes: snapshots.setdefault(epoch, saes[0]))
    assert sorted(snapshots) == [1, 2, 3]
    shorter, _ = train_sae([x], len(x), 32, cfg.model_copy(update={"epochs": 2}))
    for key, value in shorter.state_dict().items():
        assert torch.equal(snapshots[2].state_dict()[key], value), key


def test_topk_training_recovers_a_planted_dictionary():
    x, dirs = planted(n=4096)
    cfg = TrainConfig(d_sae=48, k=3, lr=1e-2, batch_size=128, epochs=4, dead_tokens=2000, seed=0)
    sae, log = train_sae([x], len(x), 32, cfg)
    assert log[-1]["fvu"] < 0.1 and log[-1]["l0"] == 3
    match = match_saes(dirs, sae.W_dec, threshold=0.9)
    assert match.shared_feature_ratio > 0.8, match.shared_feature_ratio
    with torch.no_grad():  # the folded SAE reads raw activations
        ev = 1 - (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.9


def test_relu_training_recovers_a_planted_dictionary():
    """The ReLU + L1 path (autograd through ``_loss``) trains too."""
    x, dirs = planted(n=2048)
    cfg = TrainConfig(architecture="relu", d_sae=48, l1_coeff=1.0, lr=1e-2, batch_size=128, epochs=3,
                      dead_tokens=2000, seed=0)
    sae, _ = train_sae([x], len(x), 32, cfg)
    assert match_saes(dirs, sae.W_dec, threshold=0.9).shared_feature_ratio > 0.8
    with torch.no_grad():
        ev = 1 - (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.85


def test_bad_input():
    x = torch.randn(256, 8)
    with pytest.raises(SaevalError, match="width 8 but d_in=16"):
        train_sae([x], 256, 16, TrainConfig(d_sae=32, k=4))
    with pytest.raises(SaevalError, match="2 configs but 1 names"):
        train_saes([x], 256, 8, [TrainConfig(d_sae=32, k=4)] * 2, names=["a"])
