"""Linear probes trained as SAEBench trains them; one-vs-rest negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from saeval.analysis.probes import ProbeConfig, generator, one_vs_rest_negatives, train_probe
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
