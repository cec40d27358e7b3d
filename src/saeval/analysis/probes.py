"""Linear probes on mean-pooled activations, trained the way SAEBench trains them for SCR and TPP.

SAEBench (sparse_probing/probe_training.py): Linear(d, 1) with bias, BCE-with-logits plus
``l1_penalty * sum|w|``, AdamW (lr 1e-3, torch's default weight decay 0.01), minibatches of 16 in a fresh
random order each epoch, 20 epochs with patience 20 (so never stopping early), and the epoch kept is the one
with the best accuracy on a selection set. SAEBench selects on the TEST set, a quirk that leaks the test set
into model selection; ``selection="validation"`` selects on a held-out part of the training data instead.
Prediction: logit > 0 means the positive class (label 1).

SAEBench draws everything random from torch's global CPU generator, seeded once per SAE
(``torch.manual_seed(random_seed)`` in run_eval_single_sae; randperm and nn.Linear's init run on the CPU even
when it runs on a GPU): ``SAEBenchStream`` draws the same numbers from a private generator, call for call, and
``train_probe(..., gen=)`` trains with SAEBench's exact arithmetic (nn.Linear's init and forward, float32
accuracies) from such a stream. Mode "validation" keeps its own labelled seeds (``generator``).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from saeval.analysis.erasure_config import ProbeConfig
from saeval.errors import SaevalError

__all__ = ["LinearProbe", "ProbeConfig", "ProbeFit", "SAEBenchDraw", "SAEBenchStream", "derive_seed", "generator",
           "one_vs_rest_negatives", "train_probe"]


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

    def accuracy(self, x_ND: Tensor, y_N: Tensor, float32: bool = False) -> float:
        return accuracy(self.logits(x_ND), y_N, float32)


def accuracy(logits_N: Tensor, y_N: Tensor, float32: bool = False) -> float:
    """Share of correct signs. In float64, so equal counts give bit-identical accuracies wherever they are
    computed; ``float32``: SAEBench's value (test_probe_gpu averages float32 0/1s), which its SCR ratios and
    TPP differences are then computed from."""
    correct = (logits_N > 0).long() == y_N.long()
    return float(correct.float().mean()) if float32 else float(correct.double().mean())


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


# ------------------------------------------------------------------------------------- SAEBench's stream
@dataclass
class SAEBenchDraw:
    """One prepare_probe_data call: positives, the drawn negatives, and ``order``, SAEBench's shuffle of the
    concatenation [pos, neg] (the row order its probe trains on)."""

    pos: np.ndarray
    neg: np.ndarray
    order: np.ndarray


class SAEBenchStream:
    """SAEBench's one random stream of a seed, drawn in its order by the callers (evals/tpp, evals/scr)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def one_vs_rest(self, pos: np.ndarray, others: list[np.ndarray]) -> SAEBenchDraw:
        """prepare_probe_data(perform_scr=False): negatives drawn from the other classes, in their key order."""
        neg = one_vs_rest_negatives(len(pos), others, self.gen)
        return self._shuffled(np.asarray(pos), neg)

    def paired(self, pos: np.ndarray, neg: np.ndarray) -> SAEBenchDraw:
        """prepare_probe_data(perform_scr=True): a random len(pos) of the paired group."""
        if len(neg) < len(pos):
            raise SaevalError(f"a paired group has {len(neg)} examples for {len(pos)} positives (SAEBench's "
                              "groups are equal); use equal group sizes")
        neg = np.asarray(neg)[torch.randperm(len(neg), generator=self.gen)[: len(pos)].numpy()]
        return self._shuffled(np.asarray(pos), neg)

    def _shuffled(self, pos: np.ndarray, neg: np.ndarray) -> SAEBenchDraw:
        return SAEBenchDraw(pos, neg, torch.randperm(len(pos) + len(neg), generator=self.gen).numpy())

    def state(self) -> str:
        return base64.b64encode(self.gen.get_state().numpy().tobytes()).decode()

    def restore(self, state: str) -> None:
        self.gen.set_state(generator_from(state).get_state())

    def skip_training(self, d: int, n_train: int, epochs: int) -> None:
        """Draw what training a probe draws (its init, one order per epoch run) without training it."""
        _saebench_init(d, self.gen)
        for _ in range(epochs):
            torch.randperm(n_train, generator=self.gen)


def generator_from(state: str) -> torch.Generator:
    gen = torch.Generator()
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))
    return gen


def can_stop_early(config: ProbeConfig) -> bool:
    """Whether the epochs a probe trains depend on its run (else SAEBench's stream is known without training)."""
    return config.early_stopping_patience < config.epochs


def _saebench_init(d: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """nn.Linear(d, 1)'s reset_parameters, drawing from ``gen``."""
    w_1D, b_1 = torch.empty(1, d), torch.empty(1)
    nn.init.kaiming_uniform_(w_1D, a=math.sqrt(5), generator=gen)
    nn.init.uniform_(b_1, -1 / math.sqrt(d), 1 / math.sqrt(d), generator=gen)
    return w_1D, b_1


# ------------------------------------------------------------------------------------------------ training
def train_probe(x_train_ND: Tensor, y_train_N: Tensor, x_sel_ND: Tensor, y_sel_N: Tensor, config: ProbeConfig,
                seed: int, gen: torch.Generator | None = None) -> tuple[LinearProbe, ProbeFit]:
    """Train as SAEBench does; keep the parameters of the epoch with the best selection accuracy. With ``gen``
    (a SAEBench stream, advanced in place) in SAEBench's exact arithmetic and draws; else seeded by ``seed``."""
    if len(x_train_ND) < 2 or len(set(y_train_N.tolist())) < 2:
        raise SaevalError(f"probe training needs examples of both classes; got {len(x_train_ND)} examples")
    if len(x_sel_ND) == 0:
        raise SaevalError("probe selection set is empty; use more test or validation examples")
    # The evals run under inference_mode; its tensors cannot enter autograd, hence the clones inside.
    with torch.inference_mode(False), torch.enable_grad():
        data = (x_train_ND.float().clone(), y_train_N.float().clone(), x_sel_ND.float().clone(),
                y_sel_N.long().clone(), config)
        return _train(*data, seed) if gen is None else _train_saebench(*data, gen)


def _train(x: Tensor, y: Tensor, x_sel: Tensor, y_sel: Tensor, config: ProbeConfig,
           seed: int) -> tuple[LinearProbe, ProbeFit]:
    gen = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    bound = 1 / math.sqrt(d)  # nn.Linear's default init: U(-1/sqrt(d), 1/sqrt(d)) for weight and bias
    w = ((torch.rand(d, generator=gen) * 2 - 1) * bound).requires_grad_(True)
    b = ((torch.rand(1, generator=gen) * 2 - 1) * bound).requires_grad_(True)
    w_best, b_best, fit = _epochs(x, y, x_sel, y_sel, config, gen, w, b, lambda x_ND: x_ND @ w + b,
                                  saebench=False)
    return LinearProbe(w_best, float(b_best)), fit


def _train_saebench(x: Tensor, y: Tensor, x_sel: Tensor, y_sel: Tensor, config: ProbeConfig,
                    gen: torch.Generator) -> tuple[LinearProbe, ProbeFit]:
    """SAEBench's train_probe_gpu op for op (so float32 weights agree bit for bit on the same device): the
    (1, d) weight through F.linear, the L1 term always added, selection accuracy in float32 starting from 0."""
    w_1D, b_1 = (t.requires_grad_(True) for t in _saebench_init(x.shape[1], gen))
    w_best, b_best, fit = _epochs(x, y, x_sel, y_sel, config, gen, w_1D, b_1,
                                  lambda x_ND: F.linear(x_ND, w_1D, b_1).squeeze(-1), saebench=True)
    return LinearProbe(w_best[0], float(b_best[0])), fit


def _epochs(x: Tensor, y: Tensor, x_sel: Tensor, y_sel: Tensor, config: ProbeConfig, gen: torch.Generator,
            w: Tensor, b: Tensor, logits: Callable[[Tensor], Tensor],
            saebench: bool) -> tuple[Tensor, Tensor, ProbeFit]:
    """Both trainings' loop: AdamW on (w, b), minibatches in a fresh ``gen`` order per epoch; returns the
    parameters of the epoch with strictly the best selection accuracy (ties keep the earlier epoch, as SAEBench).
    ``saebench``: the L1 term added even when 0, float32 accuracies, and a best accuracy starting at 0, so an
    epoch must beat 0 (SAEBench asserts one does; the initial weights stand in for that failure); else the
    first epoch is always a candidate."""
    opt = torch.optim.AdamW([w, b], lr=config.lr, weight_decay=config.weight_decay)
    best_acc, best_epoch, w_best, b_best = (0.0 if saebench else -1.0), 0, w.detach().clone(), b.detach().clone()
    patience = 0
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.binary_cross_entropy_with_logits(logits(x[idx]), y[idx])
            if saebench or config.l1_penalty:
                loss = loss + config.l1_penalty * torch.sum(torch.abs(w))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = accuracy(logits(x_sel), y_sel, float32=saebench)
        if acc > best_acc:
            best_acc, best_epoch, w_best, b_best = acc, epoch, w.detach().clone(), b.detach().clone()
            patience = 0
        else:
            patience += 1
        if patience >= config.early_stopping_patience:
            break
    fit = ProbeFit(best_epoch=best_epoch, selection_accuracy=best_acc, epochs_run=epoch, n_train=len(x),
                   n_selection=len(x_sel))
    return w_best, b_best, fit
