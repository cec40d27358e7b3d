"""Explanation sources for the scorers: an explainer chat model shown the explaining windows, or the model's
self-explanation of the latent's decoder direction. Either fills ``LatentRecord.explanation``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

from saeval.evals.autointerp.scorers import CountedChat, LatentRecord
from saeval.llm import LLMError

EXPLAIN_PROMPT = (
    "We are studying a feature of a language model. It fires on particular tokens, words, substrings or "
    "concepts in short texts. In the texts below, ordered from the strongest activation to the weakest, the "
    "tokens it fires on are marked <<like this>>. Look at the marked tokens and say in one sentence of at most "
    "20 words what the feature fires on. Keep it short and general rather than listing many words; mention "
    "capitalisation or punctuation only if it matters. Answer in the form: This feature fires on ...\n\n"
    "{examples}"
)


class Explainer(Protocol):
    name: str

    def explain(self, records: Sequence[LatentRecord]) -> list[str | LLMError]: ...


def parse_explanation(reply: str) -> str:
    """The reply's first line after its last "fires on" / "activates on" (SAEBench keeps what follows
    "activates on"), without the closing period."""
    line = next((ln.strip() for ln in reply.splitlines() if ln.strip()), "")
    parts = re.split(r"\b(?:fires|activates|responds)\s+(?:on|to)\b", line, flags=re.IGNORECASE)
    return parts[-1].strip().rstrip(".").strip()[:300]


class LLMExplainer:
    """SAEBench's explainer: the top and importance-weighted windows, active tokens marked, best first."""

    def __init__(self, chat: CountedChat, max_new_tokens: int = 30):
        self.chat, self.max_new_tokens = chat, max_new_tokens
        self.name = chat.name

    @staticmethod
    def prompt(record: LatentRecord) -> str:
        examples = "\n".join(f"{i + 1}. {ex.marked()}" for i, ex in enumerate(record.explaining))
        return EXPLAIN_PROMPT.format(examples=examples)

    def explain(self, records: Sequence[LatentRecord]) -> list[str | LLMError]:
        replies = self.chat.ask([self.prompt(r) for r in records], self.max_new_tokens)
        return [r if isinstance(r, LLMError) else parse_explanation(r) for r in replies]


class SelfExplainer:
    """Explanations of the self_explanation eval when it ran on the latent, else generated through its memo."""

    name = "self"

    def __init__(self, reused: dict[int, str], generate: Callable[[list[int]], dict[int, str]]):
        self.reused, self.generate = reused, generate

    def explain(self, records: Sequence[LatentRecord]) -> list[str | LLMError]:
        missing = [r.latent for r in records if r.latent not in self.reused]
        found = {**self.reused, **(self.generate(missing) if missing else {})}
        return [found.get(r.latent, "") for r in records]
