"""Steerability helpers: the readouts over a concept vocabulary and the metrics computed from their probability
shifts (methods.md section A).

For one latent and strength s, Delta_v = mean over inputs of p_v(s) - p_v(unsteered), with p a softmax over
the vocabulary's readout scores; the logit version uses the scores themselves (no softmax).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.data.corpora import load_contexts
from saeval.data.images import load_images
from saeval.data.vocab import check_tokenised
from saeval.errors import SaevalError

if TYPE_CHECKING:
    from saeval.evals.steerability.config import SteerabilityConfig


# ------------------------------------------------------------------------------------------------ readouts
class LMReadout:
    """Next-token logits of the vocabulary's words (" word" as one token, or its first token) at readout
    positions of corpus prompts."""

    kind = "lm"

    def __init__(self, host, hook: str, words: list[str], config: SteerabilityConfig, corpus: str, seed: int):
        self.host, self.hook, self.config = host, hook, config
        counts, pieces = [], []
        for w in words:
            # The word alone decides whether it tokenises to anything; mid-text it follows a space.
            counts.append(len(host.tokenizer(w.strip(), add_special_tokens=False)["input_ids"]))
            pieces.append(host.tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"])
        check_tokenised(words, counts, f"the tokenizer of {host.name}")
        keep: dict[int, str] = {}
        for w, ids in zip(words, pieces, strict=True):
            # "first_token" keeps a word by its first token; "single_token" only words that are one token,
            # since a multi-token word's first piece (" and" of "andrena") stands for other words too.
            # A bare-space first token says nothing about the word; a shared first token would count twice.
            if config.lm_concepts == "single_token" and len(ids) != 1:
                continue
            if ids[0] not in keep and host.tokenizer.decode([ids[0]]).strip():
                keep[ids[0]] = w
        if not keep:
            raise SaevalError(
                f"no vocabulary word gives a concept token of its own (lm_concepts={config.lm_concepts}): "
                "use a vocabulary of plain words, or lm_concepts='first_token'"
            )
        self.words, self.n_dropped = list(keep.values()), len(words) - len(keep)
        self.token_ids = list(keep)
        self.W_VD, self.b_V = host.unembedding_rows_VD(self.token_ids)
        self.concepts_VE = F.normalize(self.W_VD, dim=-1)
        self.prompts = load_contexts(
            host, corpus, config.n_inputs * config.prompt_len, config.prompt_len, seed
        )
        self.inputs_name = f"{corpus} prompts"

    def batches(self, batch_size: int):
        for i in range(0, len(self.prompts), batch_size):
            yield self.prompts[i : i + batch_size]

    def prefix(self, tokens_BL: Tensor):
        acts, state = self.host.prefix(tokens_BL, self.hook)
        ordinary = self.host.ordinary_mask(tokens_BL).to(acts.device)
        steer = torch.ones_like(ordinary) if self.config.steer_special_tokens else ordinary
        weight = ordinary[:, -1:].float() if self.config.readout == "last" else ordinary.float()
        return acts, state, steer, weight

    def scores(self, state, acts_NLD: Tensor) -> Tensor:
        resid = self.host.residual_from(state, acts_NLD)
        if self.config.readout == "last":
            resid = resid[:, -1:]
        return self.host.vocab_logits_BLV(resid, self.W_VD, self.b_V)


class CLIPReadout:
    """Cosine of the (steered) image embedding with the vocabulary's text embeddings."""

    kind = "clip"

    def __init__(self, host, hook: str, words: list[str], config: SteerabilityConfig, seed: int):
        self.host, self.hook = host, hook
        self.words, self.n_dropped = words, 0
        self.concepts_VE = F.normalize(host.text_embeddings(words, config.text_template).float(), dim=-1)
        self.pixels = host.preprocess(load_images(config.images, config.n_inputs, seed))
        self.inputs_name = f"images {config.images}"

    def batches(self, batch_size: int):
        for i in range(0, len(self.pixels), batch_size):
            yield self.pixels[i : i + batch_size]

    def prefix(self, pixels: Tensor):
        acts, state = self.host.prefix(pixels, self.hook)
        steer = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
        return acts, state, steer, torch.ones(len(acts), 1, device=acts.device)

    def scores(self, state, acts_NLD: Tensor) -> Tensor:
        emb = F.normalize(self.host.run_from(state, acts_NLD).float(), dim=-1)
        return (emb @ self.concepts_VE.T)[:, None, :]


# ---------------------------------------------------------------------------------------------------- metrics


def latent_metrics(
    delta_SV: np.ndarray, delta_logit_SV: np.ndarray, concepts_VE: np.ndarray
) -> dict[str, np.ndarray]:
    """Per strength: power max_v Delta_v, steerability S = sum_v Delta_v^2, the signed
    sum_v Delta_v |Delta_v|, the aggregate probability difference (half the L1 norm: probability mass moved),
    the same three on logit differences, and polysemanticity."""
    d, dl = delta_SV.astype(np.float64), delta_logit_SV.astype(np.float64)
    return {
        "power": d.max(-1),
        "steerability": (d**2).sum(-1),
        "steerability_signed": (d * np.abs(d)).sum(-1),
        "aggregate_prob_diff": 0.5 * np.abs(d).sum(-1),
        "logit_power": dl.max(-1),
        "logit_steerability": (dl**2).sum(-1),
        "logit_steerability_signed": (dl * np.abs(dl)).sum(-1),
        "polysemanticity": polysemanticity(d, concepts_VE),
    }


def polysemanticity(delta_SV: np.ndarray, concepts_VE: np.ndarray) -> np.ndarray:
    """|| Delta . T - (sum_v t_v) / ||sum_v t_v|| ||_2 with T the unit concept embeddings [V, E]
    (methods.md A): the Delta-weighted sum of concept directions against the vocabulary's mean direction."""
    t = concepts_VE.astype(np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    centroid = t.sum(0)
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
    return np.linalg.norm(delta_SV.astype(np.float64) @ t - centroid, axis=-1)


def top_concepts(
    delta_V: np.ndarray, words: list[str], k: int
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The k most promoted (largest Delta) and k most demoted (smallest Delta) concepts; ties: vocab order."""
    order = np.argsort(-delta_V, kind="stable")
    promoted = [(words[i], float(f"{float(delta_V[i]):.6g}")) for i in order[:k]]
    demoted = [(words[i], float(f"{float(delta_V[i]):.6g}")) for i in np.argsort(delta_V, kind="stable")[:k]]
    return promoted, demoted


def summarise(steer_N: np.ndarray, power_N: np.ndarray, top_N: list[str], threshold: float) -> dict[str, Any]:
    """SAE-level numbers at one strength: fraction steerable (S > threshold), distinct top concepts (among the
    steerable latents, as the paper counts them, and among all), mean power, mean S, mean per-latent S/P."""
    steerable = steer_N > threshold
    positive = power_N > 1e-12
    return {
        "n_latents": int(len(steer_N)),
        "n_steerable": int(steerable.sum()),
        "frac_steerable": float(steerable.mean()) if len(steer_N) else 0.0,
        "n_distinct_top_concepts": len({t for t, s in zip(top_N, steerable, strict=True) if s}),
        "n_distinct_top_concepts_all": len(set(top_N)),
        "mean_power": float(power_N.mean()) if len(power_N) else 0.0,
        "mean_steerability": float(steer_N.mean()) if len(steer_N) else 0.0,
        "mean_s_over_p": float((steer_N[positive] / power_N[positive]).mean()) if positive.any() else None,
    }
