"""Judges and chat models: an OpenAI-compatible endpoint faked on 127.0.0.1 (good, garbage and failing
answers), the constrained local judge, the embedding judge with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from saeval.errors import SaevalError
from saeval.judges import EmbeddingJudge, LatentEvidence, LLMJudge, Question, explain, make_judge, parse_yes_no
from saeval.llm import LLMError, LocalChatModel, OpenAIChatModel


class FakeEndpoint(BaseHTTPRequestHandler):
    """Replies by the first word of the user message: ok -> a valid reply, garbage -> a non-JSON body,
    nochoices -> JSON without choices, fail -> HTTP 500, slow -> 'Yes.' after 0.1 s; any other -> echo 'Yes.'
    or the scripted reply. Records the most requests in flight at once."""

    script: dict[str, str] = {}
    seen: list[dict] = []
    lock = threading.Lock()
    in_flight = max_in_flight = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        cls = FakeEndpoint
        with cls.lock:
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            self.answer()
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEndpoint.seen.append({"body": body, "auth": self.headers.get("Authorization")})
        message = body["messages"][0]["content"]
        key = message.split()[0]
        if key == "slow":
            time.sleep(0.1)
        if key == "fail":
            self.send_response(500)
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        if key == "garbage":
            self.wfile.write(b"<html>not json")
        elif key == "nochoices":
            self.wfile.write(json.dumps({"error": "x"}).encode())
        else:
            reply = FakeEndpoint.script.get(key, "Yes.")
            self.wfile.write(json.dumps({"choices": [{"message": {"content": reply}}]}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    FakeEndpoint.seen.clear()
    FakeEndpoint.max_in_flight = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


FAST = {"timeout": 5, "max_retries": 1, "backoff": 0.01}  # saeval.llm's retry schedule is tested in test_llm.py


def test_openai_chat_model_against_a_fake_server(endpoint):
    model = OpenAIChatModel("fake-model", endpoint, **FAST)
    assert model.complete(["ok hello"], max_new_tokens=7) == ["Yes."]
    sent = FakeEndpoint.seen[-1]
    assert sent["auth"] == "Bearer sk-test" and sent["body"]["model"] == "fake-model"
    assert sent["body"]["max_tokens"] == 7
    for word, match in (("garbage", "not JSON"), ("nochoices", "without choices"), ("fail", "failed")):
        with pytest.raises(LLMError, match=match):
            model.complete([f"{word} please"])
    with pytest.raises(LLMError, match="failed"):
        OpenAIChatModel("m", "http://127.0.0.1:9", **FAST).complete(["ok"])


def evidence(latent: int, explanation: str | None = None) -> LatentEvidence:
    return LatentEvidence(latent=latent, attribution=1.0, windows=["she said «her» name"], max_activations=[1.0],
                          explanation=explanation)


def test_llm_judge_records_garbage_and_failures(endpoint):
    FakeEndpoint.script.update({"A": "No, it is about professions.", "B": "Maybe?"})
    judge = make_judge(f"llm:openai:fake@{endpoint}")
    assert judge.name == f"llm:openai:fake@{endpoint}"
    question = Question(spurious="gender", target="profession")

    class Scripted(LLMJudge):  # put the script key first in the prompt the endpoint sees
        def prompt(self, item, question):
            return ["A", "B", "fail", "garbage", "ok"][item.latent] + " " + super().prompt(item, question)

    scripted = Scripted(OpenAIChatModel("fake", endpoint, **FAST))
    verdicts = scripted.judge([evidence(i) for i in range(5)], question)
    assert [v.verdict for v in verdicts] == ["not_spurious", "failed", "failed", "failed", "spurious"]
    assert verdicts[1].reply == "Maybe?" and "yes or no" in verdicts[1].error
    assert "failed" in verdicts[2].error and verdicts[3].error


def test_llm_judge_sends_several_requests_at_once(endpoint):
    class Slow(LLMJudge):
        def prompt(self, item, question):
            return "slow " + super().prompt(item, question)

    judge = Slow(OpenAIChatModel("fake", endpoint, concurrency=4, **FAST))
    verdicts = judge.judge([evidence(i) for i in range(8)], Question(spurious="gender", target="profession"))
    assert [v.verdict for v in verdicts] == ["spurious"] * 8 and [v.latent for v in verdicts] == list(range(8))
    assert FakeEndpoint.max_in_flight > 1


def test_parse_yes_no():
    assert parse_yes_no("Yes.") is True and parse_yes_no(" no, because") is False
    assert parse_yes_no("Answer: YES") is True and parse_yes_no("**No**") is False
    for garbage in ("", "Maybe", "I think yes", "Yesterday", "nothing"):
        assert parse_yes_no(garbage) is None


def test_explainer_failure_is_recorded(endpoint):
    items = [evidence(0), evidence(1)]
    explain(f"openai:fake@{endpoint}", items)
    assert items[0].explanation == "Yes." and items[0].explanation_error is None
    explain("none", items)
    assert items[1].explanation == "she said «her» name"
    bad = [LatentEvidence(latent=0, attribution=0, windows=["fail here"], max_activations=[1.0])]

    class Failing:
        name = "failing"

        def complete(self, messages, **kw):
            raise LLMError("endpoint down")

    import saeval.judges as judges

    original = judges.chat_model
    judges.chat_model = lambda spec, host=None: Failing()
    try:
        explain("whatever", bad)
    finally:
        judges.chat_model = original
    assert bad[0].explanation is None and "endpoint down" in bad[0].explanation_error


def test_local_choose_is_padding_invariant(tiny_host):
    model = LocalChatModel(tiny_host, batch_size=4)
    messages = ["Is this about gender? Answer Yes or No.", "Short?"]
    options = {"yes": ["Yes", "yes"], "no": ["No", "no"]}
    together = model.choose(messages, options)
    alone = [model.choose([m], options)[0] for m in messages]
    for a, b in zip(together, alone, strict=True):
        assert a["yes"] == pytest.approx(b["yes"], abs=1e-4) and a["no"] == pytest.approx(b["no"], abs=1e-4)
    verdicts = LLMJudge(model).judge([evidence(0, "x")], Question(spurious="a", target="b"))
    assert verdicts[0].verdict in ("spurious", "not_spurious") and 0 < verdicts[0].score < 1


def test_embedding_judge_with_minilm():
    judge = EmbeddingJudge()
    question = Question(spurious="the gender of the person: he or she, his or her, male or female",
                        target="the person's profession or occupation")
    items = [evidence(0, "female pronouns such as she and her"), evidence(1, "jobs such as nurse, surgeon and "
             "teacher"), evidence(2, None)]
    verdicts = judge.judge(items, question)
    assert [v.verdict for v in verdicts] == ["spurious", "not_spurious", "failed"]
    assert verdicts[0].score > 0 > verdicts[1].score


def test_unknown_judge_is_a_clear_error():
    with pytest.raises(SaevalError, match="unknown judge"):
        make_judge("gpt-4o")


def test_local_choose_equals_the_full_forward_at_the_last_token(tiny_host):
    """choose unembeds only the last position, shortest messages batched first: the same numbers as the log
    softmax of a plain forward's logits at each message's last token, in the messages' order."""
    model = LocalChatModel(tiny_host, batch_size=2)
    messages = ["A much longer message than the others, about nothing much at all. Yes or No?", "Short?",
                "Medium length message here?"]
    options = {"yes": ["Yes", "yes"], "no": ["No", "no"]}
    got = model.choose(messages, options)
    for message, answer in zip(messages, got, strict=True):
        ids = torch.tensor([model.prompt_ids(message)])
        logp = torch.log_softmax(tiny_host.forward(ids)[0, -1].float(), -1)
        for label, forms in options.items():
            toks = sorted({tiny_host.tokenizer(f, add_special_tokens=False)["input_ids"][0] for f in forms})
            assert answer[label] == pytest.approx(float(torch.logsumexp(logp[toks], 0)), abs=1e-4)
