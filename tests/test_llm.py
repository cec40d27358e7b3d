"""The OpenAI-compatible client against fake endpoints on 127.0.0.1: concurrency, retries of only what failed,
no key on a cross-origin redirect, garbage and slow replies as one-line LLMErrors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saeval.errors import SaevalError
from saeval.llm import LLMError, OpenAIChatModel, chat_model, complete_many

FAST = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 2.0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        server: Server = self.server  # type: ignore[assignment]
        with server.lock:
            server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            server.route(self, body)
        finally:
            with server.lock:
                server.in_flight -= 1

    def reply(self, status: int = 200, payload: object = None, raw: bytes | None = None, **headers: str) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, route: Callable[[Handler, dict], None]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.route = route
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.release = threading.Event()  # set at teardown so a deliberately slow handler ends at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def messages(self) -> Counter:
        return Counter(s["body"]["messages"][0]["content"] for s in self.seen if "messages" in s["body"])


@contextmanager
def serve(route: Callable[[Handler, dict], None]) -> Iterator[Server]:
    server = Server(route)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def answer(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def echo(handler: Handler, body: dict) -> None:
    handler.reply(payload=answer("re: " + body["messages"][0]["content"]))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


def test_requests_overlap_and_replies_keep_their_order():
    def slow_echo(handler, body):
        time.sleep(0.15)
        echo(handler, body)

    with serve(slow_echo) as server:
        model = OpenAIChatModel("m", server.url + "/v1", concurrency=4, **FAST)
        prompts = [f"p{i}" for i in range(8)]
        started = time.monotonic()
        assert model.complete(prompts) == [f"re: {p}" for p in prompts]
        assert 1 < server.max_in_flight <= 4
        assert time.monotonic() - started < 8 * 0.15  # not one after another
        sent = server.seen[0]
        assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
        assert sent["body"]["model"] == "m" and sent["body"]["max_tokens"] == 64


def test_only_the_failed_prompt_is_retried():
    def flaky(handler, body):
        message = body["messages"][0]["content"]
        tries = handler.server.messages()[message]
        if message == "flaky" and tries == 1:
            handler.reply(500, {"error": {"message": "overloaded\nplease retry"}})
        elif message == "limited" and tries == 1:
            handler.reply(429, {"error": "slow down"}, Retry_After="0")
        elif message == "bad":
            handler.reply(400, {"error": {"message": "unknown model"}})
        else:
            echo(handler, body)

    with serve(flaky) as server:
        model = OpenAIChatModel("m", server.url, concurrency=4, max_retries=2, **FAST)
        replies = complete_many(model, ["a", "flaky", "b", "limited", "bad"])
        assert replies[:4] == ["re: a", "re: flaky", "re: b", "re: limited"]
        assert isinstance(replies[4], LLMError) and "HTTP 400 (unknown model)" in str(replies[4])
        assert server.messages() == {"a": 1, "flaky": 2, "b": 1, "limited": 2, "bad": 1}  # 4xx: not retried
        with pytest.raises(LLMError, match="1 of 2 messages failed; first: .*HTTP 400"):
            model.complete(["a", "bad"])


def test_retries_are_bounded_and_the_error_is_one_line():
    with serve(lambda handler, body: handler.reply(503, raw=b"upstream\r\ndown")) as server:
        model = OpenAIChatModel("m", server.url, max_retries=2, **FAST)
        with pytest.raises(LLMError) as err:
            model.complete(["x"])
        assert server.messages() == {"x": 3}
        assert "\n" not in str(err.value) and "failed after 3 attempts: HTTP 503 (upstream down)" in str(err.value)


def test_cross_origin_redirect_never_gets_the_key():
    with serve(echo) as other:
        def redirect(handler, body):
            if handler.path.startswith("/same"):
                handler.reply(307, raw=b"", Location="/v1/chat/completions")
            else:
                handler.reply(307, raw=b"", Location=other.url + "/v1/chat/completions")

        with serve(redirect) as first:
            with pytest.raises(LLMError, match="redirected to another origin"):
                OpenAIChatModel("m", first.url + "/v1", **FAST).complete(["secret prompt"])
            assert all(s["auth"] is None for s in other.seen) and not other.seen
            # A redirect within the endpoint's own origin is followed, key included.
            with pytest.raises(LLMError, match="redirected to another origin"):
                OpenAIChatModel("m", first.url + "/same", **FAST).complete(["x"])
            assert [s["path"] for s in first.seen[-2:]] == ["/same/chat/completions", "/v1/chat/completions"]
            assert first.seen[-1]["auth"] == "Bearer sk-test" and not other.seen


def test_same_origin_redirect_is_followed_with_the_key():
    def route(handler, body):
        if handler.path.startswith("/old"):
            handler.reply(308, raw=b"", Location="/new/chat/completions")
        else:
            echo(handler, body)

    with serve(route) as server:
        assert OpenAIChatModel("m", server.url + "/old", **FAST).complete(["hi"]) == ["re: hi"]
        assert [(s["path"], s["auth"]) for s in server.seen] == [
            ("/old/chat/completions", "Bearer sk-test"), ("/new/chat/completions", "Bearer sk-test")]


@pytest.mark.parametrize("kind, match", [
    ("not-http", "failed after 2 attempts: RemoteProtocolError"),
    ("html", "reply that is not JSON"),
    ("no-choices", "without choices"),
    ("null-content", "without choices"),
])
def test_garbage_replies_are_one_line_errors(kind, match):
    def route(handler, body):
        if kind == "not-http":
            handler.wfile.write(b"garbage\r\n\x00\xff not a status line\r\n\r\n")
            handler.close_connection = True
        elif kind == "html":
            handler.reply(raw=b"<html>\n<body>oops</body>\n</html>", Content_Type="text/html")
        elif kind == "no-choices":
            handler.reply(payload={"error": "x"})
        else:
            handler.reply(payload={"choices": [{"message": {"content": None}}]})

    with serve(route) as server:
        with pytest.raises(LLMError, match=match) as err:
            OpenAIChatModel("m", server.url, max_retries=1, **FAST).complete(["x"])
        assert "\n" not in str(err.value) and len(str(err.value)) < 500


def test_a_timeout_is_an_llm_error():
    def stall(handler, body):
        handler.server.release.wait(3.0)  # bounded, and released at teardown

    with serve(stall) as server:
        model = OpenAIChatModel("m", server.url, timeout=0.2, max_retries=1, backoff=0.01)
        started = time.monotonic()
        with pytest.raises(LLMError, match="failed after 2 attempts: ReadTimeout"):
            model.complete(["x"])
        assert time.monotonic() - started < 2.0 and server.messages() == {"x": 2}


def test_refused_connection_and_missing_key(monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LLMError, match="ConnectError"):
        OpenAIChatModel("m", f"http://127.0.0.1:{port}", max_retries=1, **FAST).complete(["x"])
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("MY_KEY", "sk-mine")
    with serve(echo) as server:
        OpenAIChatModel("m", server.url, **FAST).complete(["x"])
        OpenAIChatModel("m", server.url, api_key_env="MY_KEY", **FAST).complete(["y"])
        assert [s["auth"] for s in server.seen] == [None, "Bearer sk-mine"]


def test_specs_and_plain_models():
    model = chat_model("openai:gpt-x@https://example.invalid/v1/", concurrency=2)
    assert isinstance(model, OpenAIChatModel) and model.name == "openai:gpt-x@https://example.invalid/v1"
    assert model.config.concurrency == 2
    for bad in ("gpt-4o", "openai:gpt-x"):
        with pytest.raises(SaevalError, match="unknown chat model"):
            chat_model(bad)
    with pytest.raises(SaevalError, match="http"):
        OpenAIChatModel("m", "ftp://host/v1")

    class Plain:  # a user's model with only `complete`: one bad message fails its batch
        name = "plain"

        def complete(self, messages, **kw):
            if "bad" in messages:
                raise LLMError("bad message")
            return [m.upper() for m in messages]

    replies = complete_many(Plain(), ["a", "bad", "c"])
    assert replies[0] == "A" and isinstance(replies[1], LLMError) and replies[2] == "C"
