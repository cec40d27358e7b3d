"""Embedding score: delphi quantile sampling, disjoint scoring windows, AUROC vs an independent count, a
planted latent scored with a known embedding, the query prompt, dead latents, the LLM-explainer path; the eval's
prerequisites, its typed nested config and its reuse of self_explanation's explanations."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from saeval.analysis.windows import ActExample, collect_windows
from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.embedding_score.config import EmbeddingConfig
from saeval.evals.embedding_score.score import (
    QUERY_PREFIX,
    embedding_scores,
    explain_with_llm,
    explaining_windows,
    marked_text,
    quantile_sample,
)
from saeval.saes.base import SAEConfig, create_sae

HOOK = "blocks.0.hook_resid_pre"  # the token embedding: latents can be planted on tokens


class KeywordEmbedder:
    """A stand-in sentence embedder: [occurrences of the word ' the', 1] for documents, [1, 0] for queries, so a
    document scores > 0 exactly when it contains ' the'."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, normalize_embeddings=True, convert_to_tensor=True):
        self.seen += list(texts)
        rows = [[1.0, 0.0] if t.startswith(QUERY_PREFIX) else [float(len(re.findall(r" the\b", t))), 1.0]
                for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


@pytest.fixture(scope="module")
def planted(tiny_host):
    """Latent 0 fires on ' the', latent 1 on ' of', latent 2 never."""
    host = tiny_host
    emb = host.model.get_input_embeddings().weight.detach()
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=3, hook_name=HOOK,
                               apply_b_dec_to_input=False))
    with torch.no_grad():
        for j, word in enumerate((" the", " of")):
            t = host.tokenizer(word, add_special_tokens=False)["input_ids"][0]
            e = emb[t] / emb[t].norm()
            others = emb @ e
            own = float(others[t])
            others[t] = -1e9
            sae.W_enc[:, j] = e
            sae.b_enc[j] = -(float(others.max()) + own) / 2
        sae.b_enc[2] = -1e6
    contexts = load_contexts(host, "sotu", 48 * 65, ctx_len=65, seed=2)
    win = collect_windows(host, [(sae, [0, 1, 2])], contexts, HOOK, window=16, k=4, reservoir=200, n_pool=150,
                          seed=0)[0]
    return host, win, sae


def test_quantile_sample_known_answer():
    windows = [(i, float(100 - i)) for i in range(100)]  # window i has activation 100 - i
    picked = quantile_sample(windows, 10, 20, random.Random(0))
    assert len(picked) == 20
    bins = sorted(i // 10 for i in picked)
    assert bins == sorted(list(range(10)) * 2)  # two from each decile
    assert quantile_sample(windows[:5], 10, 20, random.Random(0)) == [0, 1, 2, 3, 4]


def test_planted_latent_scores_perfectly_and_sets_are_disjoint(planted):
    host, win, _ = planted
    cfg = EmbeddingConfig(n_test=20, n_quantiles=5, n_random=20)
    model = KeywordEmbedder()
    shown = explaining_windows(win, [0, 1], 4)
    assert shown[0] == {win.window_id(ex) for ex in win.latents[0].max}
    explanations = {0: "the word the", 1: "the word of", 2: "anything"}
    scores = embedding_scores(win, explanations, host.tokenizer, model, cfg, explained=shown)
    s0 = scores[0]
    assert s0.auroc == pytest.approx(1.0) and s0.n_activating == 20 and s0.n_non_activating == 20
    # Scored activating windows never include a window the explainer saw; without that exclusion
    # (delphi's default sampler) the top windows are part of the population the test set is drawn from.
    assert set(s0.activating_windows).isdisjoint(shown[0])
    assert shown[0] & {w for w, _ in win.reservoir[0]}
    assert set(s0.activating_windows) <= {w for w, _ in win.reservoir[0]}
    assert all(m == 0 for w, m in zip(win.pool_ids, win.pool_max[0], strict=True) if w in s0.non_activating_windows)
    # ' of' windows are found by the ' the' keyword only by chance: AUROC equals the Mann-Whitney statistic.
    s1 = scores[1]
    a, n = np.array(s1.activating_similarity), np.array(s1.non_activating_similarity)
    mw = ((a[:, None] > n[None]).sum() + 0.5 * (a[:, None] == n[None]).sum()) / (len(a) * len(n))
    assert s1.auroc == pytest.approx(mw)
    assert scores[2].auroc is None and "never fired" in scores[2].note
    assert QUERY_PREFIX + "the word the" in model.seen
    assert QUERY_PREFIX.endswith("\nQuery:") and QUERY_PREFIX.startswith("Instruct: Retrieve sentences")


def test_seeded_and_empty_explanations(planted):
    host, win, _ = planted
    cfg = EmbeddingConfig(n_test=10, n_quantiles=5, n_random=10)
    one = embedding_scores(win, {0: "x", 1: ""}, host.tokenizer, KeywordEmbedder(), cfg, seed=3)
    two = embedding_scores(win, {0: "x", 1: ""}, host.tokenizer, KeywordEmbedder(), cfg, seed=3)
    assert one[0].activating_windows == two[0].activating_windows and one[0].auroc == two[0].auroc
    assert one[1].auroc is None and one[1].note == "empty explanation"


def test_marked_text_and_llm_explainer(planted):
    host, win, _ = planted
    ex = ActExample(tokens=[1, 2, 3], texts=["a", " b", " c"], acts=[0.0, 2.0, 0.0])
    assert marked_text(ex) == "a<< b>> c"
    out = explain_with_llm(win, [0, 1], "local", host, n_windows=2, max_new_tokens=3)
    assert set(out) == {0, 1} and all(isinstance(v, str) for v in out.values())


def test_prerequisites_and_typed_explain_config():
    from saeval.evals import get_eval

    spec = get_eval("embedding_score")
    assert spec.prerequisites(spec.config()) == ("self_explanation",)
    assert spec.prerequisites(spec.config(explainer="local")) == ("core",)
    assert spec.prerequisites(spec.config(latents=[0, 1])) == ()
    tiny = spec.config("tiny", explain={"max_new_tokens": 3})
    # Nested fields merge over the preset's: the tiny sweep sizes stay, the one field given changes.
    assert tiny.explain.max_new_tokens == 3 and tiny.explain.n_search_scales == 4
    assert tiny.explain.rep_hook == "blocks.1.hook_resid_pre"
    with pytest.raises(SaevalError, match="no field 'explain.n_scales'"):
        spec.config(explain={"n_scales": 3})
    with pytest.raises(SaevalError, match="unknown explainer"):
        spec.config(explainer="gpt4")


def test_eval_scores_self_explanation_results(planted, monkeypatch):
    """With self_explanation's result at hand the eval scores exactly its latents and explanations, and
    generates none itself."""
    from types import SimpleNamespace

    import saeval.evals.embedding_score.run as emb_run
    from saeval.evals import get_eval
    from saeval.evals.base import EvalContext

    host, _, sae = planted
    spec = get_eval("embedding_score")
    config = spec.config("tiny")

    def no_generation(*args, **kwargs):
        raise AssertionError("generated explanations although self_explanation's were given")

    monkeypatch.setattr(emb_run, "memo_self_explain", no_generation)
    monkeypatch.setattr(emb_run, "load_embedding_model", lambda name: KeywordEmbedder())
    ctx = EvalContext(host=host, hook=HOOK, preset="tiny")
    explained = [SimpleNamespace(latent=0, explanation="the word the"), SimpleNamespace(latent=2, explanation="x")]
    ctx.provide(sae, SimpleNamespace(eval="self_explanation", details=SimpleNamespace(explanations=explained)))
    result = spec.run_fn()(ctx, sae, config)
    assert [s.latent for s in result.details.scores] == [0, 2]
    first, dead = result.details.scores
    assert first.explanation == "the word the" and first.auroc == pytest.approx(1.0)
    assert dead.auroc is None and "never fired" in dead.note
    assert "reused self_explanation" in result.details.explainer and result.metrics.n_never_fired == 1
