"""Embedding score: delphi quantile sampling, disjoint scoring windows, AUROC vs an independent count, a
planted latent scored with a known embedding, the query prompt, dead latents, the LLM-explainer path; the eval's
prerequisites, its typed nested config and its reuse of self_explanation's explanations; selection=delphi
(min_examples skip, 40 quantile-sampled explaining windows, disjoint from the scored ones) and the departures
from delphi shown in the report."""

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
    delphi_explaining_windows,
    embedding_scores,
    explain_with_llm,
    explaining_windows,
    marked_text,
    quantile_sample,
    window_examples,
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
    assert spec.prerequisites(spec.config(explainer="local")) == ()  # latents drawn from the eval's own pass
    assert spec.prerequisites(spec.config(latents=[0, 1])) == ()
    tiny = spec.config("tiny", explain={"max_new_tokens": 3})
    # Nested fields merge over the preset's: the tiny sweep sizes stay, the one field given changes.
    assert tiny.explain.max_new_tokens == 3 and tiny.explain.n_search_scales == 4
    assert tiny.explain.rep_hook == "blocks.1.hook_resid_pre"
    with pytest.raises(SaevalError, match="no field 'explain.n_scales'"):
        spec.config(explain={"n_scales": 3})
    with pytest.raises(SaevalError, match="unknown explainer"):
        spec.config(explainer="gpt4")


def window_counts(host, sae, config) -> list[int]:
    """Activating windows of each latent on the eval's contexts, counted independently of the windows pass."""
    contexts = load_contexts(host, "sotu", config.n_tokens, config.ctx_len, 0)
    f_BLF = sae.encode(host.capture(contexts, [HOOK])[HOOK]) * host.ordinary_mask(contexts)[..., None]
    n_w = (config.ctx_len - 1) // config.window
    f = f_BLF[:, 1 : 1 + n_w * config.window].reshape(-1, config.window, sae.d_sae).detach().numpy()
    return (f.max(1) > 0).sum(0).tolist()


class CountingHost:
    """The tiny host, counting its captures (to see that a second SAE's pass reuses the first one's forward)."""

    def __init__(self, host):
        self._host, self.n_captures = host, 0

    def __getattr__(self, name):
        return getattr(self._host, name)

    def capture(self, *args, **kwargs):
        self.n_captures += 1
        return self._host.capture(*args, **kwargs)


def test_eval_draws_latents_with_enough_windows_and_reuses_self_explanations(planted, monkeypatch):
    """Latents are drawn among those with at least min_activating_windows activating windows (n_test by
    default): the dead latent 2 is never drawn although self_explanation explained it; self_explanation's
    eligible latent 0 is reused, the other drawn latent explained once; the mean AUROC gets a bootstrap interval
    (None with one scored latent); a second SAE's pass reuses the run's forward to the hook."""
    from types import SimpleNamespace

    import saeval.evals.embedding_score.run as emb_run
    from saeval.evals import get_eval
    from saeval.evals.base import EvalContext

    host, _, sae = planted
    spec = get_eval("embedding_score")
    config = spec.config("tiny")
    calls: list[list[int]] = []

    def fake_explain(ctx, sae, latents, config):
        calls.append(list(latents))
        return [SimpleNamespace(latent=f, explanation="the word of") for f in latents]

    monkeypatch.setattr(emb_run, "memo_self_explain", fake_explain)
    monkeypatch.setattr(emb_run, "load_embedding_model", lambda name: KeywordEmbedder())
    counting = CountingHost(host)
    ctx = EvalContext(host=counting, hook=HOOK, preset="tiny")
    explained = [SimpleNamespace(latent=0, explanation="the word the"), SimpleNamespace(latent=2, explanation="x")]
    ctx.provide(sae, SimpleNamespace(eval="self_explanation", details=SimpleNamespace(explanations=explained)))
    counts = window_counts(host, sae, config)
    assert counts[0] > counts[1] >= config.n_test > counts[2] == 0
    result = spec.run_fn()(ctx, sae, config)
    assert [s.latent for s in result.details.scores] == [0, 1] and calls == [[1]]
    first, second = result.details.scores
    assert first.explanation == "the word the" and first.auroc == pytest.approx(1.0)
    m = result.metrics
    assert m.n_eligible == 2 and m.n_scored == 2 and m.n_never_fired == 0
    assert m.mean_auroc_ci_low <= m.mean_auroc <= m.mean_auroc_ci_high
    assert result.details.min_activating_windows == config.n_test
    assert "only 2 latents have at least 10 activating windows" in result.warnings[0]
    n_forward = counting.n_captures
    assert n_forward > 0
    # The bar is "at least": latent 1 has exactly counts[1] windows.
    at = spec.run_fn()(ctx, sae, config.model_copy(update={"min_activating_windows": counts[1]}))
    above = spec.run_fn()(ctx, sae, config.model_copy(update={"min_activating_windows": counts[1] + 1}))
    assert [s.latent for s in at.details.scores] == [0, 1] and at.metrics == m
    assert [s.latent for s in above.details.scores] == [0] and above.metrics.n_eligible == 1
    assert above.metrics.mean_auroc_ci_low is None and above.metrics.mean_auroc_ci_high is None
    assert counting.n_captures == n_forward  # the same contexts: the forward came from the run's memo


def test_mean_auroc_interval_equals_a_numpy_bootstrap():
    """scipy's percentile bootstrap equals an independent NumPy one with the same generator: 10,000 resamples
    of the latents (with replacement), their means, the 2.5th and 97.5th percentiles."""
    from saeval.evals.embedding_score.score import mean_ci

    values = np.random.default_rng(1).uniform(0.3, 0.9, 32)
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, len(values), (10_000, len(values)))].mean(1)
    assert mean_ci(values, 10_000, 7) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    low, high = mean_ci(values, 10_000, 8)
    assert low < values.mean() < high and (low, high) != mean_ci(values, 10_000, 7)
    assert mean_ci([0.7], 1000, 0) == (None, None) and mean_ci([], 1000, 0) == (None, None)


# ---------------------------------------------------------------- selection="delphi"
N_GRADED = 80  # contexts of 65 tokens: 320 windows of 16, so a latent on ~10% of tokens has >= 200 windows


@pytest.fixture(scope="module")
def graded(tiny_host):
    """Latent 0: a seeded random direction thresholded at its 90th percentile over the corpus tokens, so its
    window maxima spread over a range and most windows activate; latent 1 fires on ' of' (far fewer windows);
    latent 2 never. The pass keeps every activating window (reservoir > windows)."""
    host = tiny_host
    emb = host.model.get_input_embeddings().weight.detach()
    contexts = load_contexts(host, "sotu", N_GRADED * 64, ctx_len=65, seed=0)
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=3, hook_name=HOOK,
                               apply_b_dec_to_input=False))
    with torch.no_grad():
        w = torch.randn(host.d_model, generator=torch.Generator().manual_seed(5))
        sae.W_enc[:, 0] = w / w.norm()
        sae.b_enc[0] = -float(torch.quantile(emb[contexts[:, 1:].flatten()] @ sae.W_enc[:, 0], 0.9))
        t = host.tokenizer(" of", add_special_tokens=False)["input_ids"][0]
        e = emb[t] / emb[t].norm()
        others = emb @ e
        own = float(others[t])
        others[t] = -1e9
        sae.W_enc[:, 1] = e
        sae.b_enc[1] = -(float(others.max()) + own) / 2
        sae.b_enc[2] = -1e6
    win = collect_windows(host, [(sae, [0, 1, 2])], contexts, HOOK, window=16, k=10, reservoir=400, n_pool=150,
                          seed=0)[0]
    assert win.latents[0].n_active_windows >= 200 > win.latents[1].n_active_windows > 0
    assert len(win.reservoir[0]) == win.latents[0].n_active_windows  # the reservoir holds them all
    return host, win, sae


def delphi_config(**kw) -> EmbeddingConfig:
    return EmbeddingConfig(selection="delphi", explainer="local", window=16, ctx_len=65, n_tokens=N_GRADED * 64,
                           reservoir=400, n_pool=150, n_test=20, n_random=20, **kw)


def test_delphi_explaining_windows_span_the_quantiles(graded):
    """40 windows, 4 from each activation decile of the latent's windows (delphi's split_quantiles), from the
    strongest to the weakest; seeded."""
    _, win, _ = graded
    picked = delphi_explaining_windows(win, [0], 40, 10, seed=0)[0]
    assert len(picked) == 40 == len(set(picked))
    ordered = sorted(win.reservoir[0], key=lambda w: (-w[1], w[0]))
    rank = {w: i for i, (w, _) in enumerate(ordered)}
    size = len(ordered) // 10
    assert sorted(rank[w] // size for w in picked) == sorted(list(range(10)) * 4)
    acts = dict(ordered)
    top, bottom = ordered[size - 1][1], ordered[9 * size][1]
    assert max(acts[w] for w in picked) >= top > bottom >= min(acts[w] for w in picked)
    assert ordered[0][1] > ordered[-1][1]  # a real range of activations, not one value
    assert delphi_explaining_windows(win, [0], 40, 10, seed=0)[0] == picked
    assert delphi_explaining_windows(win, [0], 40, 10, seed=1)[0] != picked


def test_delphi_scoring_skips_rare_latents_and_excludes_explaining_windows(graded):
    host, win, _ = graded
    cfg = delphi_config()
    shown = delphi_explaining_windows(win, [0], cfg.delphi_n_explain, cfg.n_quantiles)
    scores = embedding_scores(win, {0: "x", 1: "the word of", 2: ""}, host.tokenizer, KeywordEmbedder(), cfg,
                              explained=shown)
    s0 = scores[0]
    assert s0.n_activating == 20 and s0.explaining_windows == sorted(shown[0])
    assert set(s0.activating_windows).isdisjoint(shown[0])
    rare = scores[1]
    assert rare.auroc is None and rare.n_activating == 0 and "fewer than delphi's min_examples (200)" in rare.note
    assert "never fired" in scores[2].note
    # The same latent is scored in saeval mode, and with a lower minimum.
    assert embedding_scores(win, {1: "of"}, host.tokenizer, KeywordEmbedder(), cfg.model_copy(
        update={"selection": "saeval"}))[1].auroc is not None
    low = cfg.model_copy(update={"delphi_min_examples": win.latents[1].n_active_windows})
    assert embedding_scores(win, {1: "of"}, host.tokenizer, KeywordEmbedder(), low)[1].auroc is not None


def test_window_examples_recompute_the_pass_activations(graded):
    host, win, sae = graded
    ids = [w for w, _ in win.reservoir[0][:12]]
    examples = window_examples(host, sae, HOOK, win, {0: ids}, batch_size=4)[0]
    maxima = dict(win.reservoir[0])
    for w, ex in zip(ids, examples, strict=True):
        assert ex.tokens == win.window_tokens(w) and win.window_id(ex) == w
        assert max(ex.acts) == pytest.approx(maxima[w], rel=1e-4, abs=1e-5)


class RecordingChat:
    def __init__(self):
        self.prompts: list[str] = []

    def complete(self, prompts, max_new_tokens=48, temperature=0.0):
        self.prompts += list(prompts)
        return [" the word the\nmore" for _ in prompts]


def test_delphi_mode_run(graded, monkeypatch, tmp_path):
    """The eval in delphi mode: the rare latent is skipped (noted, counted) before any explainer call; the
    explainer sees exactly the 40 quantile-sampled windows with their active tokens marked; the scored
    windows exclude them; the details record the mode and the departures, and the report shows them."""
    import saeval.evals.embedding_score.run as emb_run
    import saeval.evals.embedding_score.score as emb_score
    from saeval.evals import get_eval
    from saeval.evals.base import EvalContext
    from saeval.report import build_report
    from saeval.results import write_result

    host, win, sae = graded
    chat = RecordingChat()
    monkeypatch.setattr(emb_score, "chat_model", lambda spec, host=None: chat)
    monkeypatch.setattr(emb_run, "load_embedding_model", lambda name: KeywordEmbedder())
    config = delphi_config(latents=[0, 1, 2])
    result = get_eval("embedding_score").run_fn()(EvalContext(host=host, hook=HOOK, preset="tiny"), sae, config)
    first, rare, dead = result.details.scores
    assert len(chat.prompts) == 1  # latent 0 only
    excerpts = re.findall(r"^Excerpt \d+: (.*)$", chat.prompts[0], flags=re.M)
    expected = delphi_explaining_windows(win, [0], 40, config.n_quantiles, seed=0)[0]
    assert first.explaining_windows == sorted(expected)
    assert [e.replace("<<", "").replace(">>", "") for e in excerpts] == [
        "".join(host.tokenizer.decode([t]) for t in win.window_tokens(w)) for w in expected]
    assert all("<<" in e for e in excerpts)  # every explaining window activates, so each has a marked token
    assert first.explanation == "the word the" and set(first.activating_windows).isdisjoint(expected)
    assert first.n_activating == 20 and first.auroc is not None
    assert rare.auroc is None and "min_examples" in rare.note and rare.explanation == ""
    assert dead.auroc is None and "never fired" in dead.note
    m = result.metrics
    assert (m.n_latents, m.n_scored, m.n_never_fired, m.n_below_min_examples) == (3, 1, 1, 1)
    d = result.details
    assert d.selection == "delphi" and d.anchor == "delphi"
    assert any("leak" in line for line in d.departures)
    assert not any("min_examples" in line for line in d.departures)  # delphi's own minimum is applied
    write_result(tmp_path, result)
    page = build_report(tmp_path).read_text()
    assert "Departs from delphi:</b> delphi draws its explaining and scoring examples" in page


def test_default_selection_and_its_departures():
    from saeval.evals.embedding_score.config import departures

    cfg = EmbeddingConfig()
    assert cfg.selection == "saeval" and (cfg.delphi_min_examples, cfg.delphi_n_explain) == (200, 40)
    lines = departures(cfg)
    assert any("min_examples" in x for x in lines) and any("self-explanations" in x for x in lines)
    assert any("stella" in x for x in lines) and not any("train/test leak" in x for x in lines)  # no window shown
    llm = departures(EmbeddingConfig(explainer="local"))
    assert any("train/test leak" in x for x in llm) and any("top 10 windows by max" in x for x in llm)
    with pytest.raises(ValueError, match="raise reservoir to at least 90"):
        EmbeddingConfig(selection="delphi", explainer="local", reservoir=60)
    EmbeddingConfig(selection="delphi", reservoir=60)  # self-explanation shows no window: nothing to hold


def test_report_departures_line_reads_any_eval():
    from saeval.report.sections import departures_line

    assert departures_line({"eval": "core", "details": {}}) == ""
    assert departures_line({"eval": "x", "details": "n/a"}) == ""
    line = departures_line({"eval": "tpp", "details": {"departures": ["a <b>", "c"]}})
    assert line == "<p class='note'><b>Departs from SAEBench:</b> a &lt;b&gt;; c</p>"
    assert "Departs from X lab:" in departures_line({"eval": "new", "details": {"anchor": "X lab",
                                                                                 "departures": ["d"]}})
    assert "Departs from its reference:" in departures_line({"eval": "new", "details": {"departures": ["d"]}})
