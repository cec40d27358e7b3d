"""Linear probes trained as SAEBench trains them; one-vs-rest negatives; SAEBench's random stream."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from saeval.analysis.probes import (
    ProbeConfig,
    SAEBenchStream,
    generator,
    one_vs_rest_negatives,
    train_probe,
)
from saeval.errors import SaevalError


def blobs(n: int, d: int, seed: int, informative: int = 2, gap: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=gen)
    x[:, :informative] += gap * (2 * y[:, None] - 1)
    return x, y


def test_probe_learns_and_keeps_the_selected_epoch():
    x, y = blobs(200, 12, 0, gap=2.0)
    xs, ys = blobs(80, 12, 1, gap=2.0)
    config = ProbeConfig(epochs=6, lr=1e-2)
    probe, fit = train_probe(x, y, xs, ys, config, seed=0)
    assert fit.selection_accuracy > 0.95
    # The returned weights are those of the selected epoch: their selection accuracy is the recorded one.
    assert probe.accuracy(xs, ys) == pytest.approx(fit.selection_accuracy)
    assert 1 <= fit.best_epoch <= fit.epochs_run == 6
    again, _ = train_probe(x, y, xs, ys, config, seed=0)
    other, _ = train_probe(x, y, xs, ys, config, seed=1)
    assert torch.equal(probe.w_D, again.w_D) and not torch.equal(probe.w_D, other.w_D)


def test_l1_penalty_shrinks_uninformative_weights():
    x, y = blobs(400, 30, 2, informative=2, gap=1.0)
    config = ProbeConfig(epochs=10, lr=1e-2)
    dense, _ = train_probe(x, y, x, y, config.model_copy(update={"l1_penalty": 0.0}), seed=0)
    sparse, _ = train_probe(x, y, x, y, config.model_copy(update={"l1_penalty": 0.05}), seed=0)
    assert sparse.w_D[2:].abs().mean() < 0.5 * dense.w_D[2:].abs().mean()


def test_patience_stops_early():
    x, y = blobs(64, 4, 3, gap=5.0)
    _, fit = train_probe(x, y, x, y, ProbeConfig(epochs=20, early_stopping_patience=2), seed=0)
    assert fit.epochs_run < 20 and fit.epochs_run - fit.best_epoch == 2


def test_one_vs_rest_negatives_follow_saebench():
    others = [np.arange(100, 140), np.arange(200, 240), np.arange(300, 340), np.arange(400, 440)]
    neg = one_vs_rest_negatives(30, others, generator("t", 0))
    assert len(neg) == 30 and len(set(neg.tolist())) == 30
    per_class = [int(((neg >= 100 * (k + 1)) & (neg < 100 * (k + 1) + 40)).sum()) for k in range(4)]
    assert sum(per_class) == 30 and max(per_class) <= math.ceil(30 / 4)
    again = one_vs_rest_negatives(30, others, generator("t", 0))
    assert np.array_equal(neg, again)
    with pytest.raises(SaevalError, match="negatives are drawn"):
        one_vs_rest_negatives(30, [np.arange(5), np.arange(5)], generator("t", 1))


def test_bad_probe_data_is_a_clear_error():
    x = torch.randn(10, 3)
    with pytest.raises(SaevalError, match="both classes"):
        train_probe(x, torch.ones(10, dtype=torch.long), x, torch.ones(10, dtype=torch.long), ProbeConfig(), 0)
    with pytest.raises(SaevalError, match="selection set is empty"):
        train_probe(x, torch.arange(10) % 2, x[:0], torch.zeros(0, dtype=torch.long), ProbeConfig(), 0)


def test_probe_config_refuses_typos_and_out_of_range_values():
    assert ProbeConfig() == ProbeConfig(lr=1e-3, batch_size=16, epochs=20, l1_penalty=1e-3, weight_decay=0.01,
                                        early_stopping_patience=20)  # SAEBench's constants
    for bad in ({"lrr": 1e-2}, {"lr": 0.0}, {"batch_size": 0}, {"epochs": 0}, {"l1_penalty": -1.0}):
        with pytest.raises(ValidationError):
            ProbeConfig(**bad)
    assert all(f.description for f in ProbeConfig.model_fields.values())


def saebench_train_probe_gpu(x, y, xs, ys, config: ProbeConfig, seed: int):
    """SAEBench's train_probe_gpu, condensed, on torch's global generator seeded as run_eval_single_sae seeds it
    (tests/test_saebench_parity.py runs the real one)."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=config.lr)
    best, best_acc, patience = None, 0.0, 0
    for _ in range(config.epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = torch.nn.BCEWithLogitsLoss()(probe(x[idx]).squeeze(-1), y[idx].float())
            loss += config.l1_penalty * torch.sum(torch.abs(probe.weight))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = ((probe(xs).squeeze(-1) > 0).long() == ys).float().mean().item()
        if acc > best_acc:
            best, best_acc, patience = copy.deepcopy(probe), acc, 0
        else:
            patience += 1
        if patience >= config.early_stopping_patience:
            break
    return best, best_acc, torch.randperm(1000)  # the last: where the global stream stands afterwards


@pytest.mark.parametrize("patience", [20, 2])
def test_stream_training_is_saebench_training_and_skipping_it_draws_the_same(patience):
    x, y = blobs(90, 12, 4, gap=0.7)
    xs, ys = blobs(40, 12, 5, gap=0.7)
    config = ProbeConfig(epochs=12, lr=1e-2, early_stopping_patience=patience)
    ref, ref_acc, ref_next = saebench_train_probe_gpu(x, y, xs, ys, config, seed=11)
    stream = SAEBenchStream(11)
    start = stream.state()
    probe, fit = train_probe(x, y, xs, ys, config, seed=0, gen=stream.gen)
    # Bit for bit: same init draws, epoch orders, arithmetic and float32 selection accuracy.
    assert torch.equal(probe.w_D, ref.weight.detach()[0]) and probe.b == float(ref.bias.detach()[0])
    assert fit.selection_accuracy == ref_acc
    assert (fit.epochs_run < 12) == (patience == 2)
    assert torch.equal(torch.randperm(1000, generator=stream.gen), ref_next)
    # Replaying the draws of that training (without training) leaves the stream at the same place.
    skipped = SAEBenchStream(0)
    skipped.restore(start)
    skipped.skip_training(12, len(x), fit.epochs_run)
    assert torch.equal(torch.randperm(1000, generator=skipped.gen), ref_next)


def test_stream_draws_follow_prepare_probe_data():
    """SAEBench prepare_probe_data: per other class a randperm, the pool's randperm, then a shuffle of [pos, neg]."""
    others = [np.arange(100, 110), np.arange(200, 210)]
    stream = SAEBenchStream(3)
    draw = stream.one_vs_rest(np.arange(8), others)
    torch.manual_seed(3)
    picked = np.concatenate([o[torch.randperm(10)[:4].numpy()] for o in others])
    neg = picked[torch.randperm(8)[:8].numpy()]
    assert np.array_equal(draw.neg, neg) and np.array_equal(draw.order, torch.randperm(16).numpy())
    paired = stream.paired(np.arange(6), np.arange(50, 56))
    neg = np.arange(50, 56)[torch.randperm(6)[:6].numpy()]
    assert np.array_equal(paired.neg, neg) and np.array_equal(paired.order, torch.randperm(12).numpy())
    with pytest.raises(SaevalError, match="equal group sizes"):
        stream.paired(np.arange(6), np.arange(5))
