"""Explainers and judges for SHIFT: does a latent concern the spurious attribute?

The explainer turns a latent's top activating windows into a short explanation: any chat model, "tokens" (the
list of most active words, no model) or "none" (the windows themselves). Judges:
* ``llm:local`` / ``llm:local:MODEL``: a local instruct model answering Yes/No; constrained to those two
  answers by comparing their next-token probabilities, so a small model cannot answer garbage.
* ``llm:openai:MODEL@BASE_URL``: any OpenAI-compatible endpoint (key from OPENAI_API_KEY); the reply must
  start with yes or no.
* ``embedding`` / ``embedding:PATH``: all-MiniLM-L6-v2 cosine between the explanation and the two attribute
  descriptions; spurious when closer to the spurious one by more than ``margin``.
Endpoint explanations and judgements are sent several at once (:func:`saeval.llm.complete_many`). A failed
call or a reply that is not a yes/no becomes a recorded failed judgement, never a guessed verdict.
"""

from __future__ import annotations

import re
from typing import Literal, Protocol

from pydantic import BaseModel

from saeval.errors import SaevalError
from saeval.llm import ChatModel, LLMError, chat_model, complete_many, p_yes

Verdict = Literal["spurious", "not_spurious", "failed"]


class LatentEvidence(BaseModel):
    latent: int
    attribution: float
    windows: list[str]  # top activating text windows, the most active token marked «like this»
    max_activations: list[float]
    explanation: str | None = None
    explanation_error: str | None = None
    self_explanation: str | None = None  # the model describing the latent's decoder direction (explain.py)


class Question(BaseModel):
    spurious: str  # description of the attribute to remove, e.g. "gender (male vs female)"
    target: str  # description of the attribute to keep


class Judgement(BaseModel):
    latent: int
    verdict: Verdict
    score: float | None = None  # P(yes) for LLM judges, cosine margin for the embedding judge
    reply: str | None = None
    error: str | None = None


class Judge(Protocol):
    name: str

    def judge(self, evidence: list[LatentEvidence], question: Question) -> list[Judgement]: ...


EXPLAIN_PROMPT = (
    "Below are text excerpts in which one feature of a language model is active; the most active word of each "
    "is marked with « ».\n{windows}\nIn at most ten words, what do these excerpts or marked words have in "
    "common?"
)
JUDGE_PROMPT = (
    "A feature of a language model is most active on the words marked with « » in these excerpts:\n"
    "{windows}\n{explanation}"
    "Question: is this feature mainly about {spurious}, rather than about {target}? Answer Yes or No."
)


def numbered(windows: list[str]) -> str:
    return "\n".join(f"{i + 1}. {w}" for i, w in enumerate(windows))


def explain(explainer: str, evidence: list[LatentEvidence], host=None, max_new_tokens: int = 32) -> str:
    """Fill ``explanation`` (or ``explanation_error``) of each item; returns the explainer's name."""
    if explainer == "none":
        for item in evidence:
            item.explanation = " | ".join(item.windows)
        return "none (the windows themselves)"
    if explainer == "tokens":
        for item in evidence:
            words = list(dict.fromkeys(w.strip() for w in re.findall(r"«(.*?)»", " ".join(item.windows))))
            item.explanation = f"most active on the words: {', '.join(words)}" if words else None
            item.explanation_error = None if words else "the latent never fired on the examples"
        return "tokens (the most active words, no model)"
    model: ChatModel = chat_model(explainer, host)
    prompts = [EXPLAIN_PROMPT.format(windows=numbered(item.windows)) for item in evidence]
    replies = complete_many(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    for item, reply in zip(evidence, replies, strict=True):
        if isinstance(reply, LLMError):
            item.explanation_error = str(reply)
        elif not str(reply).strip():
            item.explanation_error = "the explainer returned an empty explanation"
        else:
            item.explanation = str(reply).strip().splitlines()[0][:300]
    return model.name


def parse_yes_no(reply: str) -> bool | None:
    """True/False when the reply opens with a clear yes or no ("Yes.", "Answer: no"), else None."""
    head = reply.strip().lower()[:40]
    head = re.sub(r"^(answer|verdict|response)\s*[:\-]\s*", "", head)
    match = re.match(r"^\W*(yes|no)\b", head)
    return None if match is None else match.group(1) == "yes"


class LLMJudge:
    def __init__(self, model: ChatModel, max_new_tokens: int = 8):
        self.model = model
        self.name = f"llm:{model.name}"
        self.max_new_tokens = max_new_tokens

    def prompt(self, item: LatentEvidence, question: Question) -> str:
        explanation = f"A proposed explanation of the feature: {item.explanation}\n" if item.explanation else ""
        if item.self_explanation:
            explanation += f"What the model itself says the feature means: {item.self_explanation}\n"
        return JUDGE_PROMPT.format(windows=numbered(item.windows), explanation=explanation,
                                   spurious=question.spurious, target=question.target)

    def judge(self, evidence: list[LatentEvidence], question: Question) -> list[Judgement]:
        prompts = [self.prompt(item, question) for item in evidence]
        choose = getattr(self.model, "choose", None)
        if choose is not None:
            options = {"yes": ["Yes", "yes"], "no": ["No", "no"]}
            out = []
            for item, logp in zip(evidence, choose(prompts, options), strict=True):
                yes = p_yes(logp)
                out.append(Judgement(latent=item.latent, verdict="spurious" if yes > 0.5 else "not_spurious",
                                     score=yes, reply=f"{'Yes' if yes > 0.5 else 'No'} (P(yes)={yes:.3f})"))
            return out
        replies = complete_many(self.model, prompts, max_new_tokens=self.max_new_tokens, temperature=0.0)
        return [self._verdict(item, reply) for item, reply in zip(evidence, replies, strict=True)]

    @staticmethod
    def _verdict(item: LatentEvidence, reply: str | LLMError) -> Judgement:
        if isinstance(reply, LLMError):
            return Judgement(latent=item.latent, verdict="failed", error=str(reply))
        answer = parse_yes_no(reply)
        if answer is None:
            return Judgement(latent=item.latent, verdict="failed", reply=reply[:300],
                             error="the reply does not start with yes or no")
        return Judgement(latent=item.latent, verdict="spurious" if answer else "not_spurious",
                         score=1.0 if answer else 0.0, reply=reply[:300])


class EmbeddingJudge:
    def __init__(self, model_path: str | None = None, margin: float = 0.0):
        from sentence_transformers import SentenceTransformer

        from saeval.assets import minilm_path

        path = model_path or str(minilm_path())
        self.encoder = SentenceTransformer(path, device="cpu")
        self.name = f"embedding:{path.rstrip('/').split('/')[-1]}"
        self.margin = margin

    def judge(self, evidence: list[LatentEvidence], question: Question) -> list[Judgement]:
        texts = [question.spurious, question.target] + [
            "; ".join(t for t in (item.explanation, item.self_explanation) if t) for item in evidence]
        emb = self.encoder.encode(texts, normalize_embeddings=True, convert_to_tensor=True).float().cpu()
        out = []
        for item, e in zip(evidence, emb[2:], strict=True):
            if not (item.explanation or item.self_explanation):
                out.append(Judgement(latent=item.latent, verdict="failed",
                                     error=f"no explanation to embed ({item.explanation_error or 'empty'})"))
                continue
            cos_s, cos_t = float(e @ emb[0]), float(e @ emb[1])
            margin = cos_s - cos_t
            out.append(Judgement(latent=item.latent, verdict="spurious" if margin > self.margin else "not_spurious",
                                 score=margin, reply=f"cos(spurious)={cos_s:.3f} cos(target)={cos_t:.3f}"))
        return out


def make_judge(spec: str, host=None) -> Judge:
    """``embedding[:PATH]``, ``llm:local[:MODEL]`` or ``llm:openai:MODEL@BASE_URL``."""
    if spec == "embedding" or spec.startswith("embedding:"):
        return EmbeddingJudge(spec.partition(":")[2] or None)
    if spec.startswith("llm:"):
        return LLMJudge(chat_model(spec[len("llm:"):], host))
    raise SaevalError(f"unknown judge {spec!r}: use embedding, embedding:PATH, llm:local, llm:local:MODEL "
                      "or llm:openai:MODEL@BASE_URL")
