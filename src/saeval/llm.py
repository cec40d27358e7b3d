"""Chat models used as explainers and judges: the local instruct host, or any OpenAI-compatible endpoint.

Both take a batch of user messages and return one reply each. Endpoint failures raise ``LLMError`` so that
callers can record a failed judgement instead of producing a silently wrong score.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Protocol

import torch

from saeval.errors import SaevalError


class LLMError(SaevalError):
    """The chat model failed to answer (network, HTTP status, malformed reply)."""


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> list[str]: ...


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
            width = max(map(len, ids))
            tokens = torch.full((len(ids), width), self.host.pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, row in enumerate(ids):
                tokens[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
            new = self.host.generate(tokens, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                     seed=seed + start)
            replies += self.host.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [r.strip() for r in replies]

    @torch.inference_mode()
    def choose(self, messages: list[str], options: dict[str, list[str]]) -> list[dict[str, float]]:
        """Constrained answers for small judges: per message, the log of the summed probability of each
        option's surface forms as the first token of the reply (e.g. {"yes": ["Yes", "yes"], ...})."""
        firsts = {label: sorted({self.host.tokenizer(form, add_special_tokens=False)["input_ids"][0]
                                 for form in forms}) for label, forms in options.items()}
        out: list[dict[str, float]] = []
        for start in range(0, len(messages), self.batch_size):
            ids = [self.prompt_ids(m) for m in messages[start : start + self.batch_size]]
            width = max(map(len, ids))
            # Right padding: a causal model's logits at each row's last real token ignore the pads after it.
            tokens = torch.full((len(ids), width), self.host.pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, row in enumerate(ids):
                tokens[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logits = self.host.forward(tokens, mask).float()
            last = torch.tensor([len(row) - 1 for row in ids])
            logp = torch.log_softmax(logits[torch.arange(len(ids)), last], dim=-1).cpu()
            for row in logp:
                out.append({label: float(torch.logsumexp(row[toks], 0)) for label, toks in firsts.items()})
        return out


class OpenAIChatModel:
    """Any OpenAI-compatible /chat/completions endpoint; the key is read from the environment."""

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.name = f"openai:{model}@{self.base_url}"

    def _one(self, message: str, max_new_tokens: int, temperature: float, seed: int) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": message}],
                           "max_tokens": max_new_tokens, "temperature": temperature, "seed": seed}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read())
            return str(payload["choices"][0]["message"]["content"]).strip()
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise LLMError(f"chat endpoint {self.base_url} failed: {err}") from err
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            raise LLMError(f"chat endpoint {self.base_url} sent a reply without choices[0].message.content") from err

    def complete(self, messages: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        return [self._one(m, max_new_tokens, temperature, seed) for m in messages]


def chat_model(spec: str, host=None) -> ChatModel:
    """``local`` (the given host, or SmolLM2 offline), ``local:MODEL`` or ``openai:MODEL@BASE_URL``."""
    if spec == "local" or spec.startswith("local:"):
        from saeval.hosts import LanguageHost

        name = spec.partition(":")[2]
        return LocalChatModel(host if (host is not None and not name) else LanguageHost.load(name or "smollm2-135m"))
    if spec.startswith("openai:") and "@" in spec:
        model, _, base_url = spec[len("openai:"):].partition("@")
        return OpenAIChatModel(model, base_url)
    raise SaevalError(f"unknown chat model {spec!r}: use local, local:MODEL or openai:MODEL@BASE_URL")
