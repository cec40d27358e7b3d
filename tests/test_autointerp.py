"""Autointerp: SAEBench's window split (disjoint explaining and scoring windows, importance weighting), its
latent choice, balanced accuracy and list parsing, a planted "elephant" latent explained and detected by a
scripted judge (a fake OpenAI-compatible endpoint on 127.0.0.1), balanced accuracies recomputed by hand, the
scorer contract fed several explanation sources, reply caching, the local judge, and a torch-free config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saeval.data.corpora import load_contexts
from saeval.errors import SaevalError
from saeval.evals.autointerp.config import AutointerpConfig
from saeval.evals.autointerp.explainers import LLMExplainer, SelfExplainer, parse_explanation
from saeval.evals.autointerp.records import build_records, candidate_order
from saeval.evals.autointerp.scorers import (
    CountedChat,
    DetectionScorer,
    EmbeddingScorer,
    Example,
    FuzzingScorer,
    LatentRecord,
    balanced_accuracy,
    parse_numbers,
)
from saeval.evals.base import EvalContext
from saeval.llm import chat_model
from saeval.saes.base import SAEConfig, create_sae
from tests.conftest import make_tiny_llama_host

HOOK = "blocks.0.hook_resid_pre"  # the token embedding: latents can be planted on tokens
ELEPHANT, THE, OF = 17032, 260, 282
TINY = dict(n_tokens=2048, ctx_len=65, window=16, n_pool=80, min_count=2, n_top_explain=3, n_iw_explain=2,
            n_top_score=2, n_iw_score=2, n_random=4, max_explanation_tokens=8, max_judge_tokens=8)
MAX_REQUESTS = 5000  # the fake endpoint's request loop is bounded


# --------------------------------------------------------------------------- a scripted OpenAI-compatible judge
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        message = body["messages"][0]["content"]
        self.server.seen.append(message)  # type: ignore[attr-defined]
        data = json.dumps({"choices": [{"message": {"role": "assistant",
                                                    "content": self.server.answer(message)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextmanager
def scripted(answer: Callable[[str], str]) -> Iterator[SimpleNamespace]:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 0.05
    server.seen, server.answer = [], answer  # type: ignore[attr-defined]
    stop = threading.Event()

    def loop():
        for _ in range(MAX_REQUESTS):
            if stop.is_set():
                break
            server.handle_request()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"openai:judge@http://127.0.0.1:{server.server_address[1]}/v1", seen=server.seen)
    finally:
        stop.set()
        thread.join(timeout=5)
        server.server_close()


def has_word(word: str, text: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text) is not None


def keyword_judge(fixed: str | None = None) -> Callable[[str], str]:
    """Explainer: names the most frequent marked token. Judges: a text fires iff it contains the word of the
    explanation (or ``fixed``); a marking is right iff every marked span is that word."""

    def answer(message: str) -> str:
        if "Answer in the form: This feature fires on" in message:
            marked = Counter(m.strip() for m in re.findall(r"<<(.*?)>>", message))
            return f"This feature fires on the word '{marked.most_common(1)[0][0]}'."
        found = re.search(r"fires on the word '([^']+)'", message)
        word = fixed or (found.group(1) if found else "\0")

        def right(text: str) -> bool:
            spans = [s.strip() for s in re.findall(r"<<(.*?)>>", text)]
            return bool(spans) and all(s == word for s in spans)

        fuzz = "marked <<like this>>" in message
        if "Answer Yes or No." in message:
            text = re.search(r"Text(?:, with some tokens marked <<like this>>)?: (.*)\n", message).group(1)
            return "Yes" if (right(text) if fuzz else has_word(word, text)) else "No"
        lines = re.findall(r"^(\d+)\. (.*)$", message, flags=re.MULTILINE)
        hits = [n for n, text in lines if (right(text) if fuzz else has_word(word, text))]
        return ", ".join(hits) if hits else "None"

    return answer


class KeywordEmbedder:
    """A stand-in sentence embedder: a window is [holds ' elephant', holds ' the' or ' of', 1]; a query is
    [1, 0, 0] when it names the elephant, else [0, 1, 0]: each planted latent's windows match its query."""

    def encode(self, texts, normalize_embeddings=True, convert_to_tensor=True):
        from saeval.evals.embedding_score.score import QUERY_PREFIX

        rows = [([1.0, 0.0, 0.0] if "elephant" in t else [0.0, 1.0, 0.0]) if t.startswith(QUERY_PREFIX) else
                [float(has_word("elephant", t)), float(has_word("the", t) or has_word("of", t)), 1.0]
                for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


@pytest.fixture(autouse=True)
def _no_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


# --------------------------------------------------------------------------- a host with planted latents
@pytest.fixture(scope="module")
def planted(smollm2_tokenizer):
    """Latent 0 fires (2.5) exactly on ' elephant'; latent 1 on ' the' (2.5) and more weakly on ' of' (1.0);
    latent 2 never. Embedding rows of those tokens are set along two orthogonal directions of a private tiny
    host; the contexts are State of the Union text with ' elephant' planted at seeded positions."""
    host = make_tiny_llama_host(smollm2_tokenizer, seed=5)
    emb = host.model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.functional.normalize(torch.randn(2, host.d_model, generator=g), dim=-1)
    b = torch.nn.functional.normalize(b - (b @ a) * a, dim=0)
    with torch.no_grad():
        emb[ELEPHANT], emb[THE], emb[OF] = 3 * a, 3 * b, 1.5 * b
    sae = create_sae(SAEConfig(architecture="relu", d_in=host.d_model, d_sae=3, hook_name=HOOK,
                               apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0], sae.W_enc[:, 1] = a, b
        sae.b_enc[:] = torch.tensor([-0.5, -0.5, -1e6])
    contexts = load_contexts(host, "sotu", 2048, ctx_len=65, seed=0).clone()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(contexts), size=24, replace=False):
        contexts[i, rng.choice(np.arange(1, 65), size=2, replace=False)] = ELEPHANT
    return host, sae, contexts


def config(**overrides) -> AutointerpConfig:
    return AutointerpConfig(**{**TINY, "explainer": "local", **overrides})


def test_config_imports_no_torch():
    code = ("import sys; import saeval.evals.autointerp.config, saeval.evals.autointerp; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_balanced_accuracy_and_list_parsing():
    # 3 positives (2 hit), 5 negatives (4 rejected): (2/3 + 4/5) / 2
    labels = [True, True, True, False, False, False, False, False]
    preds = [True, False, True, False, True, False, False, False]
    assert balanced_accuracy(labels, preds) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert balanced_accuracy([True, True], [True, False]) is None
    assert parse_numbers("1, 3 and 4.") == [1, 3, 4]
    assert parse_numbers("None") == [] and parse_numbers(" 2 ") == [2]
    assert parse_numbers("Texts 1 and 2") is None
    assert parse_explanation("This feature fires on the word 'x'.\nmore") == "the word 'x'"
    assert parse_explanation("It activates on numbers") == "numbers"


def test_windows_split_as_saebench_and_disjoint(planted):
    host, sae, contexts = planted
    cfg = config()
    records, windows, warnings = build_records(host, sae, contexts, HOOK, [0, 1, 2], cfg, seed=0,
                                               filter_count=False)
    assert warnings == []
    by = {r.latent: r for r in records}
    assert "never fired" in by[2].note and not by[2].explaining
    for f, word in ((0, ELEPHANT), (1, THE)):
        r = by[f]
        assert r.note == ""
        kinds = Counter(ex.kind for ex in r.scoring)
        ex_kinds = Counter(ex.kind for ex in r.explaining)
        assert ex_kinds["top"] == 3 and kinds["top"] == 2 and kinds["random"] == 4
        explain_ids, score_ids = {ex.window for ex in r.explaining}, {ex.window for ex in r.scoring}
        assert explain_ids.isdisjoint(score_ids) and len(score_ids) == len(r.scoring)
        # The top windows of the pass are exactly the top explaining + top scoring ones.
        top = {windows.window_id(ex) for ex in windows.latents[f].max}
        assert top == {ex.window for ex in r.explaining + r.scoring if ex.kind == "top"}
        for ex in r.explaining + r.scoring:
            tokens = windows.window_tokens(ex.window)
            assert ex.acts == pytest.approx([2.5 if t == word else 1.0 if (f == 1 and t == OF) else 0.0
                                             for t in tokens], abs=1e-4)
            if ex.kind == "top":
                assert word in tokens
        assert all(max(ex.acts) == 0 for ex in r.scoring if ex.kind == "random")
        assert [ex.max_act for ex in r.explaining] == sorted((ex.max_act for ex in r.explaining), reverse=True)
    # Every ' elephant' activation is 2.5: nothing lies under the weakest top window, so, as in SAEBench, no
    # importance-weighted window exists. Latent 1's are the ' of' windows outside its top windows.
    assert not any(ex.kind == "iw" for ex in by[0].explaining + by[0].scoring)
    iw = [ex for ex in by[1].explaining + by[1].scoring if ex.kind == "iw"]
    assert len(iw) == 4 and all(OF in windows.window_tokens(ex.window) for ex in iw)
    again, _, _ = build_records(host, sae, contexts, HOOK, [0, 1, 2], cfg, seed=0, filter_count=False)
    assert [ex.window for ex in again[1].scoring] == [ex.window for ex in by[1].scoring]


def test_latent_choice_fires_more_than_min_count(planted):
    host, sae, contexts = planted
    order = candidate_order(range(100), 10, seed=3)
    assert order == candidate_order(range(100), 10, seed=3) and len(order) == 74 and len(set(order)) == 74
    n_elephant = int((contexts == ELEPHANT).sum())
    cfg = config(min_count=n_elephant)  # latent 0 fires exactly n_elephant times: not more
    records, _, warnings = build_records(host, sae, contexts, HOOK, [2, 0, 1], cfg, n_wanted=2)
    assert [r.latent for r in records] == [1]
    assert "only 1 of 3 latents" in warnings[0]
    records, _, _ = build_records(host, sae, contexts, HOOK, [2, 0, 1], config(min_count=n_elephant - 1), n_wanted=1)
    assert [r.latent for r in records] == [0]


def test_elephant_is_named_and_detected(planted):
    host, sae, contexts = planted
    records, _, _ = build_records(host, sae, contexts, HOOK, [0], config(), filter_count=False)
    with scripted(keyword_judge()) as server:
        chat = CountedChat(chat_model(server.url, host), host.tokenizer)
        explanation = LLMExplainer(chat).explain(records)[0]
        assert "<< elephant>>" in server.seen[0]
        assert explanation == "the word 'elephant'"
        records[0].explanation = explanation
        for fmt in ("each", "list"):
            for scorer in (DetectionScorer(chat, fmt), FuzzingScorer(chat, fmt),
                           FuzzingScorer(chat, fmt, fuzz_type="active")):
                result = scorer(records[0])
                assert result.score == 1.0 and result.accuracy == 1.0 and result.n_failed == 0, (fmt, scorer.name)
        # 1 explanation; each format: 6 detection, 2 + 4 fuzzing, 2 + 2 active fuzzing; list: 3. The true
        # markings of the two fuzzers are the same messages: asked twice, sent once (the reply cache).
        assert chat.usage.n_calls == 20 and chat.usage.prompt_tokens > 0
        assert len(server.seen) == len(set(server.seen)) == 18
    # Fuzzing's wrong examples mark as many tokens as activating windows have active ones on average.
    fuzz = FuzzingScorer(chat).samples(records[0], __import__("random").Random(0))
    wrong = [s for s in fuzz if not s.label]
    active = [ex for ex in records[0].scoring if ex.active]
    n_wrong = -(-sum(len(ex.active_positions) for ex in active) // len(active))
    assert all(s.text.count("<<") >= 1 and len(re.findall(r"<<|>>", s.text)) <= 2 * n_wrong for s in wrong)


def expected_scores(windows, latent_scores, word: str, tokenizer) -> tuple[list[float], list[float]]:
    """Balanced accuracy and accuracy per latent, recomputed from the windows themselves: a window fires when it
    holds ' elephant' (latent 0) or ' the' / ' of' (latent 1); the judge says yes when the text has ``word``."""
    fires = {0: {ELEPHANT}, 1: {THE, OF}}
    bas, accs = [], []
    for f, result in latent_scores:
        tp = fn = tn = fp = 0
        for ex in result.examples:
            tokens = windows.window_tokens(ex.window)
            label = bool(fires[f] & set(tokens))
            says = has_word(word, tokenizer.decode(tokens).replace("\n", "↵"))
            tp, fn = tp + (label and says), fn + (label and not says)
            tn, fp = tn + (not label and not says), fp + (not label and says)
        bas.append((tp / (tp + fn) + tn / (tn + fp)) / 2)
        accs.append((tp + tn) / (tp + tn + fn + fp))
    return bas, accs


def run_eval(host, contexts, monkeypatch, **overrides):
    import saeval.evals.autointerp.run as ai_run
    from saeval.evals import get_eval

    monkeypatch.setattr(ai_run, "load_contexts", lambda *a, **k: contexts)
    ctx = EvalContext(host=host, hook=HOOK, ctx_len=65, seed=0, preset="tiny")
    return ai_run, ctx, get_eval("autointerp").config("tiny", **overrides)


def test_eval_known_balanced_accuracy_and_cached_rerun(planted, monkeypatch):
    """A judge that answers yes whenever a text holds the word "the", whatever the explanation: its balanced
    accuracy and SAEBench accuracy are recomputed by hand from the windows."""
    import saeval.evals.autointerp  # noqa: F401  (registers the eval until evals/__init__ lists it)
    import saeval.evals.embedding_score.score as emb_score
    from saeval.evals.autointerp.report import report

    host, sae, contexts = planted
    monkeypatch.setattr(emb_score, "load_embedding_model", lambda name: KeywordEmbedder())
    with scripted(keyword_judge(fixed="the")) as server:
        ai_run, ctx, cfg = run_eval(host, contexts, monkeypatch, explainer=server.url, latents=[0, 1, 2],
                                    scorers=["detection", "fuzzing", "embedding"])
        result = ai_run.run(ctx, sae, cfg)
        sent = len(server.seen)
        again = ai_run.run(ctx, sae, cfg)
        assert len(server.seen) == sent  # every reply came from the cache: a rerun costs no call
    m, d = result.metrics, result.details
    records, windows, _ = build_records(host, sae, contexts, HOOK, [0, 1, 2], cfg, filter_count=False)
    det = [(lat.latent, lat.scores["detection"]) for lat in d.latents if lat.latent != 2]
    bas, accs = expected_scores(windows, det, "the", host.tokenizer)
    assert [s.score for _, s in det] == pytest.approx(bas)
    assert m.detection_balanced_accuracy == pytest.approx(np.mean(bas))
    assert m.autointerp_score == pytest.approx(np.mean(accs))
    assert m.autointerp_std_dev == pytest.approx(np.std(accs, ddof=1))
    assert m.n_latents == 3 and m.n_explained == 2 and m.n_scored == 2
    assert d.latents[2].scores["detection"].score is None and "never fired" in d.latents[2].note
    assert [lat.explanation for lat in d.latents[:2]] == ["the word 'elephant'", "the word 'the'"]
    # Explainer and judge are the same endpoint here, counted apart: one explanation and one list per scorer
    # and latent.
    assert d.usage["explainer"].n_calls == 2 and d.usage["judge"].n_calls == 4 == m.n_judge_calls
    assert sent == 6 and d.judge == d.explainer == chat_model(server.url).name
    assert d.usage["judge"].completion_tokens > 0
    assert again.metrics == result.metrics
    assert m.embedding_auroc == 1.0  # the embedder finds ' elephant' and ' the'/' of' windows by their tokens
    html = report([json.loads(result.model_dump_json())])  # the whole result serialises, and reports
    assert "the word &#x27;elephant&#x27;" in html and "autointerp_score" in html


def test_scorer_contract_takes_any_explanation_source(planted, monkeypatch):
    """One scorer fed explanations from two sources (an explainer, self-explanations), and one explanation
    scored three ways; the embedding scorer uses delphi's query prefix."""

    host, sae, contexts = planted
    records, _, _ = build_records(host, sae, contexts, HOOK, [0, 1], config(), filter_count=False)
    asked: list[list[int]] = []

    def generate(latents):
        asked.append(latents)
        return {f: "the word 'of'" for f in latents}

    selfx = SelfExplainer({0: "the word 'elephant'"}, generate)
    assert selfx.explain(records) == ["the word 'elephant'", "the word 'of'"] and asked == [[1]]

    records[0].explanation = "the word 'elephant'"
    with scripted(keyword_judge()) as server:
        chat = CountedChat(chat_model(server.url), host.tokenizer)
        results = {s.name: s(records[0]) for s in (DetectionScorer(chat), FuzzingScorer(chat),
                                                   EmbeddingScorer(KeywordEmbedder()))}
    assert {k: r.score for k, r in results.items()} == {"detection": 1.0, "fuzzing": 1.0, "embedding": 1.0}
    empty = LatentRecord(latent=9, explanation="", explaining=[], scoring=[])
    assert DetectionScorer(chat)(empty).note == "no explanation"


def test_self_explainer_reuses_self_explanation_results(planted, monkeypatch):
    import saeval.evals.autointerp  # noqa: F401
    import saeval.evals.self_explanation.explain as sx

    host, sae, contexts = planted
    monkeypatch.setattr(sx, "memo_self_explain", lambda *a, **k: pytest.fail("generated a self-explanation"))
    with scripted(keyword_judge()) as server:
        ai_run, ctx, cfg = run_eval(host, contexts, monkeypatch, explainer="self", judge=server.url,
                                    scorers=["detection"])
        previous = SimpleNamespace(details=SimpleNamespace(explanations=[
            SimpleNamespace(latent=0, explanation="the word 'elephant'"),
            SimpleNamespace(latent=2, explanation="nothing")]))
        ctx.results[(id(sae), "self_explanation")] = previous
        result = ai_run.run(ctx, sae, cfg)
    assert [lat.latent for lat in result.details.latents] == [0]  # latent 2 never fires: not scored
    assert result.metrics.detection_balanced_accuracy == 1.0
    assert "explainer" not in result.details.usage and result.details.explainer.startswith("self")


def test_local_judge_gives_probabilities(planted, tiny_host):
    """The each format with a local model compares P(Yes) and P(No): every example gets an answer."""
    host, sae, contexts = planted
    records, _, _ = build_records(host, sae, contexts, HOOK, [0], config(), filter_count=False)
    records[0].explanation = "the word 'elephant'"
    chat = CountedChat(chat_model("local", tiny_host), tiny_host.tokenizer)
    result = DetectionScorer(chat, "each")(records[0])
    assert result.n_failed == 0 and result.auroc is not None
    assert all(0 < ex.p_yes < 1 and ex.prediction == (ex.p_yes > 0.5) for ex in result.examples)
    listed = DetectionScorer(chat, "list", max_new_tokens=4)(records[0])  # a random model: garbage is recorded
    assert listed.n_examples == 6 and len(listed.replies) == 1
    assert chat.usage.n_calls == 7
    from saeval.evals.autointerp.run import judge_note

    n_params = sum(p.numel() for p in tiny_host.model.parameters())  # the report tells readers the judge's size
    assert f"{n_params / 1e6:.0f}M parameters" in judge_note(chat) and "chance" in judge_note(chat)


def test_prerequisites_presets_and_config_errors():
    import saeval.evals.autointerp  # noqa: F401
    from saeval.evals import get_eval

    spec = get_eval("autointerp")
    assert spec.prerequisites(spec.config()) == ("core",)
    assert spec.prerequisites(spec.config(explainer="self")) == ("self_explanation",)
    assert spec.prerequisites(spec.config(latents=[1])) == ()
    paper = spec.config()
    assert (paper.n_top_explain, paper.n_iw_explain, paper.n_top_score, paper.n_iw_score, paper.n_random) == (
        10, 5, 2, 2, 10)
    assert (paper.n_tokens, paper.ctx_len, paper.window, paper.min_count) == (2_000_000, 128, 21, 15)
    assert spec.config("demo").resolved_judge_format() == "each" and spec.config("tiny").explain.max_new_tokens == 6
    assert spec.config(explainer="openai:m@http://x/v1").resolved_judge_format() == "list"
    assert spec.config(explainer="openai:m@http://x/v1", judge="local").resolved_judge_format() == "each"
    assert spec.config(explainer="self").judge_spec() == "local"
    with pytest.raises(SaevalError, match="scorers"):
        spec.config(scorers=["simulation"])
    with pytest.raises(SaevalError, match="judge"):
        spec.config(judge="self")
    with pytest.raises(SaevalError, match="n_top_score"):
        spec.config(n_top_score=0, n_iw_score=0)


def test_example_marking():
    ex = Example(window=0, kind="top", texts=["a", " b", " c", "\n", " d"], acts=[0, 2, 3, 0, 0.001],
                 threshold=0.03)
    assert ex.marked() == "a<< b c>>↵ d" and ex.text() == "a b c↵ d" and ex.active


def test_self_explanations_generated_when_not_reused(planted, monkeypatch):
    """Without a self_explanation result, explainer "self" generates through its memo; every latent chosen is
    explained or says why not."""
    host, sae, contexts = planted
    with scripted(keyword_judge(fixed="elephant")) as server:
        ai_run, ctx, cfg = run_eval(host, contexts, monkeypatch, explainer="self", judge=server.url, latents=[0],
                                    scorers=["detection"])
        result = ai_run.run(ctx, sae, cfg)
    lat = result.details.latents[0]
    assert lat.explanation or lat.note == "empty explanation"
    assert any(str(k).startswith("self_explain|") for k in ctx.memo)  # shared with self_explanation/embedding_score


def test_second_sae_reuses_the_windows_forward(planted, monkeypatch):
    """Two SAEs in one run: the second SAE's windows pass runs no model forward (the run's memo holds the
    activations at the hook), and each SAE gets the result it gets alone."""
    host, sae, contexts = planted
    swapped = create_sae(sae.cfg)
    with torch.no_grad():
        swapped.load_state_dict(sae.state_dict())
        swapped.W_enc[:, [0, 1]] = sae.W_enc[:, [1, 0]]
        swapped.b_enc[:] = torch.tensor([-0.5, -0.8, -1e6])
    with scripted(keyword_judge(fixed="the")) as server:
        ai_run, _, cfg = run_eval(host, contexts, monkeypatch, explainer=server.url, latents=[0, 1])
        alone = [ai_run.run(EvalContext(host=host, hook=HOOK, ctx_len=65, seed=0, preset="tiny"), s, cfg)
                 for s in (sae, swapped)]
        calls = []
        real = host.capture
        monkeypatch.setattr(host, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
        ctx = EvalContext(host=host, hook=HOOK, ctx_len=65, seed=0, preset="tiny")
        first = ai_run.run(ctx, sae, cfg)
        n_first = len(calls)
        second = ai_run.run(ctx, swapped, cfg)
    assert n_first == -(-len(contexts) // cfg.batch_size) and len(calls) == n_first
    for a, b in zip(alone, (first, second), strict=True):
        assert a.metrics == b.metrics and a.details.latents == b.details.latents
    assert first.details.latents[0].explanation != second.details.latents[0].explanation
    assert first.details.judge_note == ""  # an endpoint judge: no caveat on its size
