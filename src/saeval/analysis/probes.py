"""Linear probes on mean-pooled activations, trained the way SAEBench trains them for SCR and TPP.

SAEBench (sparse_probing/probe_training.py): Linear(d, 1) with bias, BCE-with-logits plus
``l1_penalty * sum|w|``, AdamW (lr 1e-3, torch's default weight decay 0.01), minibatches of 16 in a fresh
random order each epoch, 20 epochs with patience 20 (so never stopping early), and the epoch kept is the one
with the best accuracy on a selection set. SAEBench selects on the TEST set, a quirk that leaks the test set
into model selection; ``selection="validation"`` selects on a held-out part of the training data instead.
Prediction: logit > 0 means the positive class (label 1).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor

from saeval.analysis.erasure_config import ProbeConfig
from saeval.errors import SaevalError

__all__ = ["LinearProbe", "ProbeConfig", "ProbeFit", "derive_seed", "generator", "one_vs_rest_negatives",
           "train_probe"]


class ProbeFit(BaseModel):
    best_epoch: int  # 1-based
    selection_accuracy: float
    epochs_run: int
    n_train: int
    n_selection: int


@dataclass
class LinearProbe:
    w_D: Tensor
    b: float

    def logits(self, x_ND: Tensor) -> Tensor:
        return x_ND.float() @ self.w_D + self.b

    def accuracy(self, x_ND: Tensor, y_N: Tensor) -> float:
        return accuracy(self.logits(x_ND), y_N)


def accuracy(logits_N: Tensor, y_N: Tensor) -> float:
    # In float64, so equal counts give bit-identical accuracies wherever they are computed.
    return float(((logits_N > 0).long() == y_N.long()).double().mean())


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any labels (Python's hash() is salted per process)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def one_vs_rest_negatives(n_pos: int, others: list[np.ndarray], gen: torch.Generator) -> np.ndarray:
    """SAEBench's TPP negatives: ceil(n_pos / n_others) random examples of each other class, concatenated,
    then a random n_pos of them (so the classes are equally represented up to rounding)."""
    if not others:
        raise SaevalError("one-vs-rest probes need at least two classes")
    per_class = math.ceil(n_pos / len(others))
    picked = []
    for ids in others:
        if len(ids) < per_class:
            raise SaevalError(f"a class has {len(ids)} examples but {per_class} negatives are drawn from each; "
                              "use more examples per class")
        picked.append(ids[torch.randperm(len(ids), generator=gen)[:per_class].numpy()])
    pool = np.concatenate(picked)
    return pool[torch.randperm(len(pool), generator=gen)[:n_pos].numpy()]


def train_probe(x_train_ND: Tensor, y_train_N: Tensor, x_sel_ND: Tensor, y_sel_N: Tensor, config: ProbeConfig,
                seed: int) -> tuple[LinearProbe, ProbeFit]:
    """Train as SAEBench does; keep the parameters of the epoch with the best selection accuracy."""
    if len(x_train_ND) < 2 or len(set(y_train_N.tolist())) < 2:
        raise SaevalError(f"probe training needs examples of both classes; got {len(x_train_ND)} examples")
    if len(x_sel_ND) == 0:
        raise SaevalError("probe selection set is empty; use more test or validation examples")
    # The evals run under inference_mode; its tensors cannot enter autograd, hence the clones inside.
    with torch.inference_mode(False), torch.enable_grad():
        return _train(x_train_ND.float().clone(), y_train_N.float().clone(), x_sel_ND.float().clone(),
                      y_sel_N.long().clone(), config, seed)


def _train(x: Tensor, y: Tensor, x_sel: Tensor, y_sel: Tensor, config: ProbeConfig,
           seed: int) -> tuple[LinearProbe, ProbeFit]:
    gen = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    bound = 1 / math.sqrt(d)  # nn.Linear's default init: U(-1/sqrt(d), 1/sqrt(d)) for weight and bias
    w = ((torch.rand(d, generator=gen) * 2 - 1) * bound).requires_grad_(True)
    b = ((torch.rand(1, generator=gen) * 2 - 1) * bound).requires_grad_(True)
    opt = torch.optim.AdamW([w, b], lr=config.lr, weight_decay=config.weight_decay)
    best = (-1.0, 0, w.detach().clone(), float(b.detach()))
    patience = 0
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.binary_cross_entropy_with_logits(x[idx] @ w + b, y[idx])
            if config.l1_penalty:
                loss = loss + config.l1_penalty * w.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = accuracy(x_sel @ w + b, y_sel)
        if acc > best[0]:  # strictly better, as SAEBench: ties keep the earlier epoch
            best = (acc, epoch, w.detach().clone(), float(b.detach()))
            patience = 0
        else:
            patience += 1
        if patience >= config.early_stopping_patience:
            break
    acc, best_epoch, w_best, b_best = best
    fit = ProbeFit(best_epoch=best_epoch, selection_accuracy=acc, epochs_run=epoch, n_train=len(x),
                   n_selection=len(x_sel))
    return LinearProbe(w_best, b_best), fit
