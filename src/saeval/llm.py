"""Chat models used as explainers and judges: the local instruct host, or any OpenAI-compatible endpoint.

Both answer a batch of user messages with one reply each. ``complete`` raises ``LLMError`` when a message
fails; :func:`complete_many` puts each failure in its message's place instead, so callers record a failed
judgement (never a silently wrong score) and keep the other replies. Endpoint requests run a few at a time,
each retried on its own after connection errors, timeouts, 429 and 5xx, with exponential backoff and jitter.
Endpoint replies are kept on disk by request (model, prompt, sampling settings, seed, base URL), so a rerun
asks only what it has not had answered (``EndpointConfig.cache``).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx
import torch
from pydantic import BaseModel, Field

from saeval.data.cache import CacheKey, read_record, write_record
from saeval.errors import SaevalError
from saeval.hosts.lm import pad_rows


class LLMError(SaevalError):
    """The chat model failed to answer (network, HTTP status, malformed reply); the message is one line."""


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> list[str]: ...


def _line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def complete_many(model: ChatModel, messages: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                  seed: int = 0) -> list[str | LLMError]:
    """One reply or one ``LLMError`` per message, using the model's own batch API when it has one."""
    kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    batch = getattr(model, "complete_many", None)
    if batch is not None:
        return batch(list(messages), **kwargs)
    try:
        return list(model.complete(list(messages), **kwargs))
    except LLMError:  # a plain model fails the whole batch for one bad message: ask again one by one
        out: list[str | LLMError] = []
        for message in messages:
            try:
                out.append(model.complete([message], **kwargs)[0])
            except LLMError as err:
                out.append(err)
        return out


class LocalChatModel:
    """An instruct model held as a LanguageHost (SmolLM2-135M-Instruct offline), batched with left padding."""

    def __init__(self, host, system: str | None = None, batch_size: int = 8):
        self.host = host
        self.name = f"local:{host.name}"
        self.system = system
        self.batch_size = batch_size

    def prompt_ids(self, message: str) -> list[int]:
        chat = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": message}]
        text = self.host.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return self.host.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        replies: list[str] = []
        for start in range(0, len(messages), self.batch_size):
            ids = [self.prompt_ids(m) for m in messages[start : start + self.batch_size]]
            tokens, mask = pad_rows(ids, self.host.pad_id, left=True)
            new = self.host.generate(tokens, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                     seed=seed + start)
            replies += self.host.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [r.strip() for r in replies]

    def complete_many(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                      seed: int = 0) -> list[str | LLMError]:
        return list(self.complete(messages, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))

    @torch.inference_mode()
    def choose(self, messages: list[str], options: dict[str, list[str]]) -> list[dict[str, float]]:
        """Constrained answers for small judges: per message, the log of the summed probability of each
        option's surface forms as the first token of the reply (e.g. {"yes": ["Yes", "yes"], ...}).

        Only each message's last position is unembedded (the model's other logits are never read), and the
        messages are batched shortest first, so a batch holds little padding."""
        firsts = {label: sorted({self.host.tokenizer(form, add_special_tokens=False)["input_ids"][0]
                                 for form in forms}) for label, forms in options.items()}
        final = f"blocks.{self.host.n_layers - 1}.hook_resid_post"
        all_ids = [self.prompt_ids(m) for m in messages]
        order = sorted(range(len(messages)), key=lambda i: len(all_ids[i]))
        out: list[dict[str, float]] = [{} for _ in messages]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids = [all_ids[i] for i in rows]
            # Right padding: a causal model's output at each row's last real token ignores the pads after it.
            tokens, mask = pad_rows(ids, self.host.pad_id)
            resid_BLD = self.host.capture(tokens, [final], mask)[final]
            last = torch.tensor([len(row) - 1 for row in ids], device=resid_BLD.device)
            logits = self.host.logits_from_residual(resid_BLD[torch.arange(len(ids)), last][:, None])[:, 0]
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for i, row in zip(rows, logp, strict=True):
                out[i] = {label: float(torch.logsumexp(row[toks], 0)) for label, toks in firsts.items()}
        return out


def p_yes(logp: dict[str, float]) -> float:
    """P(yes) among yes and no, from one of ``LocalChatModel.choose``'s answers with options "yes" and "no"."""
    return 1 / (1 + math.exp(logp["no"] - logp["yes"]))


class EndpointConfig(BaseModel):
    """How an OpenAI-compatible endpoint is called."""

    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from a file
    timeout: float = Field(60.0, gt=0)  # seconds allowed to connect, send, wait for and read a reply
    max_retries: int = Field(4, ge=0)  # per message, after connection errors, timeouts, 429 and 5xx
    backoff: float = Field(0.5, ge=0)  # seconds before the first retry, doubled each time, with jitter
    max_backoff: float = Field(8.0, ge=0)  # cap on one wait, Retry-After included
    concurrency: int = Field(4, ge=1)  # requests in flight at once
    cache: bool = True  # keep each reply on disk (saeval.data.cache, kind "llm-replies"): a rerun costs no calls


class _CrossOrigin(Exception):
    pass


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:  # absent, or an HTTP date: fall back to the exponential schedule
        return None


def _status_detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        detail = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        detail = response.text
    return f" ({_line(detail, 200)})" if detail and _line(detail) else ""


class OpenAIChatModel:
    """Any OpenAI-compatible /chat/completions endpoint; settings are :class:`EndpointConfig` fields."""

    def __init__(self, model: str, base_url: str, **settings):
        self.config = EndpointConfig(**settings)
        self.model = model
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as err:
            raise SaevalError(f"chat endpoint {base_url!r} is not a URL ({_line(err)})") from err
        if url.scheme not in ("http", "https") or not url.host:
            raise SaevalError(f"chat endpoint {base_url!r} must be an http(s) URL such as https://host/v1")
        self._origin = _origin(url)
        self.name = f"openai:{model}@{self.base_url}"
        self._jitter = random.Random()

    def _client(self) -> httpx.Client:
        key = os.environ.get(self.config.api_key_env)
        return httpx.Client(
            headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=self.config.timeout,
            follow_redirects=True, max_redirects=3, limits=httpx.Limits(max_connections=self.config.concurrency),
            event_hooks={"request": [self._same_origin_only]},
        )

    def _same_origin_only(self, request: httpx.Request) -> None:
        # Runs before every request of a redirect chain: the key and the prompt never leave the endpoint's
        # origin (scheme, host and port), so a redirect elsewhere is refused rather than followed.
        if _origin(request.url) != self._origin:
            raise _CrossOrigin(str(request.url.copy_with(query=None)))

    def _fail(self, reason: str) -> LLMError:
        return LLMError(_line(f"chat endpoint {self.base_url} {reason}", 500))

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        delay = min(self.config.max_backoff, self.config.backoff * 2**attempt) * self._jitter.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff))
        time.sleep(delay)

    def _body(self, message: str, max_new_tokens: int, temperature: float, seed: int) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": message}],
                "max_tokens": max_new_tokens, "temperature": temperature, "seed": seed}

    def _reply_key(self, body: dict) -> CacheKey:
        # The request body (model, prompt, sampling settings, seed) and where it is sent; never the API key.
        return CacheKey("llm-replies", {"format": 1, "endpoint": self.base_url, "body": body})

    def _one(self, client: httpx.Client, message: str, max_new_tokens: int, temperature: float, seed: int) -> str:
        body = self._body(message, max_new_tokens, temperature, seed)
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                response = client.post(f"{self.base_url}/chat/completions", json=body)
            except _CrossOrigin as err:
                raise self._fail(f"redirected to another origin ({err}); not following it with the API key: "
                                 "set the base URL to the final endpoint") from None
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as err:
                failure = f"{type(err).__name__}: {_line(err) or 'no detail'}"
            except httpx.HTTPError as err:  # too many redirects, a local protocol error: retrying cannot help
                raise self._fail(f"failed: {type(err).__name__}: {_line(err)}") from err
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    failure, retry_after = f"HTTP {status}{_status_detail(response)}", _retry_after(response)
                elif not 200 <= status < 300:
                    hint = f"; check {self.config.api_key_env}" if status in (401, 403) else ""
                    raise self._fail(f"failed: HTTP {status}{_status_detail(response)}{hint}")
                else:
                    return self._content(response)
            if attempt + 1 < attempts:
                self._wait(attempt, retry_after)
        raise self._fail(f"failed after {attempts} attempt{'s' * (attempts > 1)}: {failure}")

    def _content(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
        except ValueError:
            raise self._fail(f"sent a reply that is not JSON: {_line(response.text, 80)!r}") from None
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise self._fail("sent a reply without choices[0].message.content")
        return content.strip()

    def complete_many(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                      seed: int = 0) -> list[str | LLMError]:
        """One reply or LLMError per message; replies already on disk are reused, failures are never kept."""
        settings = (max_new_tokens, temperature, seed)
        keys = {m: self._reply_key(self._body(m, *settings)) for m in messages} if self.config.cache else {}
        replies: dict[int, str | LLMError] = {}
        for i, message in enumerate(messages):
            found = read_record(keys[message]) if message in keys else None
            if isinstance(found, str):
                replies[i] = found
        todo = [i for i in range(len(messages)) if i not in replies]
        if todo:
            replies.update(zip(todo, self._ask([messages[i] for i in todo], keys, *settings), strict=True))
        return [replies[i] for i in range(len(messages))]

    def _ask(self, messages: list[str], keys: dict[str, CacheKey], max_new_tokens: int, temperature: float,
             seed: int) -> list[str | LLMError]:
        def one(message: str) -> str | LLMError:
            try:
                reply = self._one(client, message, max_new_tokens, temperature, seed)
            except LLMError as err:
                return err
            if message in keys:  # kept as soon as it arrives: an interrupted run keeps what it paid for
                try:
                    write_record(keys[message], reply)
                except OSError:  # a full or read-only cache costs calls on the next run, never this reply
                    pass
            return reply

        with self._client() as client:
            pool = ThreadPoolExecutor(min(self.config.concurrency, len(messages)), thread_name_prefix="saeval-llm")
            try:
                return list(pool.map(one, messages))
            finally:  # on Ctrl-C, drop the queued requests; those in flight end within their timeout
                pool.shutdown(wait=True, cancel_futures=True)

    def complete(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        replies = self.complete_many(messages, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        failed = [r for r in replies if isinstance(r, LLMError)]
        if len(failed) == 1 and len(replies) == 1:
            raise failed[0]
        if failed:
            raise LLMError(f"{len(failed)} of {len(replies)} messages failed; first: {failed[0]}")
        return [str(r) for r in replies]


def chat_model(spec: str, host=None, **endpoint_settings) -> ChatModel:
    """``local`` (the given host, or SmolLM2 offline), ``local:MODEL`` or ``openai:MODEL@BASE_URL``;
    ``endpoint_settings`` are :class:`EndpointConfig` fields for the latter."""
    if spec == "local" or spec.startswith("local:"):
        from saeval.hosts import LanguageHost

        name = spec.partition(":")[2]
        return LocalChatModel(host if (host is not None and not name) else LanguageHost.load(name or "smollm2-135m"))
    if spec.startswith("openai:") and "@" in spec:
        model, _, base_url = spec[len("openai:"):].partition("@")
        return OpenAIChatModel(model, base_url, **endpoint_settings)
    raise SaevalError(f"unknown chat model {spec!r}: use local, local:MODEL or openai:MODEL@BASE_URL")
