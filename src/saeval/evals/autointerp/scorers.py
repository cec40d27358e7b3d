"""The scorer contract and its scorers: an explanation in, a per-latent score out (delphi's ``Scorer(record)``).

A :class:`LatentRecord` holds one latent's explanation (from any source: an explainer chat model, the model's
self-explanation...) and its scoring windows, disjoint from the windows the explainer saw. A scorer maps
records to :class:`ScorerResult`s; ``scorer(record)`` scores one, ``scorer.score_many(records)`` batches the
judge's messages of many latents through one :func:`saeval.llm.complete_many` call (bounded concurrency, reply
cache) or one batched local pass. Scorers:

- detection (delphi; SAEBench's autointerp): the judge sees the windows without marks and says which fire;
- fuzzing (delphi): the judge sees windows with tokens marked << >>, on activating windows at the tokens that
  fire, on the others at random tokens (as many as activating windows have on average), and says which
  markings are right;
- embedding (delphi): the AUROC of the cosine between the explanation query and each window (no judge).

Detection and fuzzing report balanced accuracy (the mean of the hit rates on each class), the plain accuracy
and, when the judge gives probabilities, the AUROC of its P(yes). Two judge formats: ``list`` shows all of a
latent's examples in one numbered prompt and parses a comma-separated list of numbers (SAEBench); ``each``
asks one Yes/No question per example (delphi's n_examples_shown=1), answered by comparing the probabilities of
Yes and No when the judge is a local model, so a small model cannot reply garbage.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sklearn.metrics import roc_auc_score

from saeval.evals.autointerp.config import LLMUsage, ScoredExample, ScorerResult
from saeval.judges import parse_yes_no
from saeval.llm import ChatModel, LLMError, complete_many, p_yes

YES_NO = {"yes": ["Yes", "yes", " Yes"], "no": ["No", "no", " No"]}
PREAMBLE = "We are studying a feature of a language model: it fires on particular tokens, words or concepts."
# One example per message: kept short, since a local judge reads every one of them.
DETECT_EACH = (
    "A feature of a language model fires on {explanation}.\n\nText: {text}\n\n"
    "Does the feature fire on any token of this text? Answer Yes or No."
)
FUZZ_EACH = (
    "A feature of a language model fires on {explanation}.\n\nText, with some tokens marked <<like this>>: "
    "{text}\n\nAre the marked tokens ones the feature fires on? Answer Yes or No."
)
DETECT_LIST = (
    PREAMBLE + " Explanation of the feature: it fires on {explanation}.\n\nBelow are {n} numbered texts in random "
    "order. Give the numbers of the texts in which the feature fires on at least one token, separated by "
    'commas (for example "{example}"), or None if it fires in none of them. Reply with the numbers or None '
    "only.\n\n{examples}"
)
FUZZ_LIST = (
    PREAMBLE + " Explanation of the feature: it fires on {explanation}.\n\nBelow are {n} numbered texts in random "
    "order, each with some tokens marked <<like this>>. Give the numbers of the texts whose marked tokens are "
    'ones the feature fires on, separated by commas (for example "{example}"), or None if there are none. '
    "Reply with the numbers or None only.\n\n{examples}"
)


def clean(piece: str) -> str:
    # As SAEBench shows tokens: newlines as a visible arrow (a window stays one line), half characters dropped.
    return piece.replace("\ufffd", "").replace("\n", "↵")


@dataclass
class Example:
    """One window of one latent: its token strings and the latent's activation on each."""

    window: int  # window id (WindowsResult.window_tokens)
    kind: str  # "top" | "iw" (importance-weighted) | "random" (non-activating)
    texts: list[str]
    acts: list[float]
    threshold: float  # a token is active above this (act_threshold_frac x the latent's top activation)

    @property
    def active_positions(self) -> list[int]:
        return [i for i, a in enumerate(self.acts) if a > self.threshold]

    @property
    def active(self) -> bool:
        return bool(self.active_positions)

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)

    def text(self, marked: Sequence[int] = ()) -> str:
        """The window as one line, the tokens at ``marked`` inside << >> (adjacent ones share a span)."""
        marks = set(marked)
        out = []
        for i, piece in enumerate(self.texts):
            if i in marks and i - 1 not in marks:
                out.append("<<")
            out.append(clean(piece))
            if i in marks and i + 1 not in marks:
                out.append(">>")
        return "".join(out)

    def marked(self) -> str:
        return self.text(self.active_positions)


@dataclass
class LatentRecord:
    """A latent's explanation and windows: ``explaining`` were shown to the explainer (best first),
    ``scoring`` are scored; the two never share a window."""

    latent: int
    explanation: str
    explaining: list[Example]
    scoring: list[Example]
    n_active_tokens: int = 0
    note: str = ""  # why the latent cannot be explained or scored


class Scorer(Protocol):
    name: str

    def __call__(self, record: LatentRecord) -> ScorerResult: ...

    def score_many(self, records: Sequence[LatentRecord]) -> list[ScorerResult]: ...


class CountedChat:
    """A chat model with its messages and tokens counted (tokens with the host's tokenizer, prompts as sent,
    without the chat template)."""

    def __init__(self, model: ChatModel, tokenizer, seed: int = 0):
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.name = model.name
        self.usage = LLMUsage(model=model.name)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ask(self, messages: Sequence[str], max_new_tokens: int) -> list[str | LLMError]:
        if not messages:
            return []
        replies = complete_many(self.model, list(messages), max_new_tokens=max_new_tokens, temperature=0.0,
                                seed=self.seed)
        self.usage.n_calls += len(messages)
        self.usage.prompt_tokens += sum(self._count(m) for m in messages)
        self.usage.completion_tokens += sum(self._count(r) for r in replies if isinstance(r, str))
        self.usage.n_failed += sum(isinstance(r, LLMError) for r in replies)
        return replies

    def yes_no(self, messages: Sequence[str]) -> list[tuple[bool | None, float | None]]:
        """(answer, P(yes)) per message; P(yes) only from a local model's next-token probabilities."""
        choose = getattr(self.model, "choose", None)
        if choose is None:
            replies = self.ask(messages, max_new_tokens=4)
            answers = [None if isinstance(r, LLMError) else parse_yes_no(r) for r in replies]
            # ask() counted the failed calls; a reply that is neither yes nor no fails too.
            self.usage.n_failed += sum(a is None and isinstance(r, str) for a, r in zip(answers, replies, strict=True))
            return [(a, None) for a in answers]
        if not messages:
            return []
        logps = choose(list(messages), YES_NO)
        self.usage.n_calls += len(messages)
        self.usage.prompt_tokens += sum(self._count(m) for m in messages)
        return [(p > 0.5, p) for p in map(p_yes, logps)]


def parse_numbers(reply: str) -> list[int] | None:
    """SAEBench's reading of a list reply: comma-separated numbers ("and" counts as a comma), "None" for
    none; anything else makes the whole reply unusable (None)."""
    parts = reply.strip().rstrip(".").replace(" and ", ",").replace("None", "").replace("none", "").split(",")
    parts = [p.strip() for p in parts if p.strip()]
    if not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[bool]) -> float | None:
    """Mean of the hit rates on positives and on negatives; None unless both classes are present."""
    pos = [p for y, p in zip(labels, predictions, strict=True) if y]
    neg = [not p for y, p in zip(labels, predictions, strict=True) if not y]
    if not pos or not neg:
        return None
    return (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2


def _auroc(labels: Sequence[bool], values: Sequence[float | None]) -> float | None:
    if not labels or any(v is None for v in values) or len(set(labels)) < 2:
        return None
    return float(roc_auc_score([int(y) for y in labels], values))


@dataclass
class Sample:
    example: Example
    text: str
    label: bool


def summarise(scorer: str, latent: int, samples: Sequence[Sample], predictions: Sequence[bool | None],
              p_yes: Sequence[float | None], replies: Sequence[str] = ()) -> ScorerResult:
    examples = [ScoredExample(window=s.example.window, kind=s.example.kind, label=s.label, prediction=p, p_yes=q)
                for s, p, q in zip(samples, predictions, p_yes, strict=True)]
    judged = [(s.label, p) for s, p in zip(samples, predictions, strict=True) if p is not None]
    labels, preds = [y for y, _ in judged], [p for _, p in judged]
    score = balanced_accuracy(labels, preds)
    note = "" if score is not None else ("no usable judgement" if not judged else "judged examples of one class only")
    return ScorerResult(
        scorer=scorer, latent=latent, score=score,
        accuracy=sum(y == p for y, p in judged) / len(judged) if judged else None,
        auroc=_auroc([s.label for s in samples], p_yes), n_examples=len(samples),
        n_failed=len(samples) - len(judged), note=note, examples=examples, replies=list(replies),
    )


class JudgeScorer:
    """Shared by detection and fuzzing: the samples (text, label) of a record, asked in the chosen format."""

    name = ""
    each_prompt = ""
    list_prompt = ""

    def __init__(self, judge: CountedChat, judge_format: str = "list", seed: int = 0, max_new_tokens: int = 48):
        self.judge, self.judge_format, self.seed, self.max_new_tokens = judge, judge_format, seed, max_new_tokens

    def __call__(self, record: LatentRecord) -> ScorerResult:
        return self.score_many([record])[0]

    def samples(self, record: LatentRecord, rng: random.Random) -> list[Sample]:
        raise NotImplementedError

    def score_many(self, records: Sequence[LatentRecord]) -> list[ScorerResult]:
        out: dict[int, ScorerResult] = {}
        plans: list[tuple[int, LatentRecord, list[Sample], random.Random]] = []
        for i, record in enumerate(records):
            # A string seed: the same shuffle for a latent whatever else is scored with it.
            rng = random.Random(f"{self.seed}|{self.name}|{record.latent}")
            samples = self.samples(record, rng) if record.explanation else []
            rng.shuffle(samples)
            labels = {s.label for s in samples}
            reason = record.note or ("no explanation" if not record.explanation else
                                     "needs examples of both classes" if len(labels) < 2 else "")
            if reason:
                out[i] = ScorerResult(scorer=self.name, latent=record.latent, score=None, note=reason)
            else:
                plans.append((i, record, samples, rng))
        if self.judge_format == "each":
            prompts = [self.each_prompt.format(explanation=r.explanation, text=s.text) for _, r, ss, _ in plans
                       for s in ss]
            answers = iter(self.judge.yes_no(prompts))
            for i, record, samples, _ in plans:
                got = [next(answers) for _ in samples]
                out[i] = summarise(self.name, record.latent, samples, [a for a, _ in got], [p for _, p in got])
        else:
            prompts = [self._list_message(r, ss, rng) for _, r, ss, rng in plans]
            for (i, record, samples, _), reply in zip(plans, self.judge.ask(prompts, self.max_new_tokens),
                                                      strict=True):
                numbers = None if isinstance(reply, LLMError) else parse_numbers(reply)
                if numbers is None:
                    self.judge.usage.n_failed += not isinstance(reply, LLMError)
                preds = [None] * len(samples) if numbers is None else [k + 1 in numbers for k in range(len(samples))]
                out[i] = summarise(self.name, record.latent, samples, preds, [None] * len(samples),
                                   [str(reply)[:500]])
        return [out[i] for i in range(len(records))]

    def _list_message(self, record: LatentRecord, samples: list[Sample], rng: random.Random) -> str:
        n = len(samples)
        # SAEBench's example answer lists as many numbers as it holds activating examples (n_top + n_iw).
        k = max(1, min(n, sum(s.label for s in samples)))
        example = ", ".join(str(j) for j in sorted(rng.sample(range(1, n + 1), k)))
        numbered = "\n".join(f"{j + 1}. {s.text}" for j, s in enumerate(samples))
        return self.list_prompt.format(explanation=record.explanation, n=n, example=example, examples=numbered)


class DetectionScorer(JudgeScorer):
    name = "detection"
    each_prompt = DETECT_EACH
    list_prompt = DETECT_LIST

    def samples(self, record: LatentRecord, rng: random.Random) -> list[Sample]:
        return [Sample(ex, ex.text(), ex.active) for ex in record.scoring]


class FuzzingScorer(JudgeScorer):
    name = "fuzzing"
    each_prompt = FUZZ_EACH
    list_prompt = FUZZ_LIST

    def __init__(self, judge: CountedChat, judge_format: str = "list", seed: int = 0, max_new_tokens: int = 48,
                 fuzz_type: str = "default"):
        super().__init__(judge, judge_format, seed, max_new_tokens)
        self.fuzz_type = fuzz_type

    def samples(self, record: LatentRecord, rng: random.Random) -> list[Sample]:
        active = [ex for ex in record.scoring if ex.active]
        if not active:
            return []
        # delphi: wrong markings mark as many tokens as the activating windows have active ones, on average.
        n_wrong = math.ceil(sum(len(ex.active_positions) for ex in active) / len(active))
        out = [Sample(ex, ex.marked(), True) for ex in active]
        if self.fuzz_type == "active":
            for ex in active:
                idle = [i for i in range(len(ex.texts)) if i not in set(ex.active_positions)]
                if idle:
                    out.append(Sample(ex, ex.text(rng.sample(idle, min(n_wrong, len(idle)))), False))
        else:
            for ex in record.scoring:
                if not ex.active:
                    out.append(Sample(ex, ex.text(rng.sample(range(len(ex.texts)), min(n_wrong, len(ex.texts)))),
                                      False))
        return out


class EmbeddingScorer:
    """delphi's embedding scorer on the record's scoring windows: AUROC of cos(query, window), query =
    delphi's instruction + the explanation (see evals/embedding_score/score.py)."""

    name = "embedding"

    def __init__(self, model):
        self.model = model  # a SentenceTransformer (or anything with its encode)

    def __call__(self, record: LatentRecord) -> ScorerResult:
        return self.score_many([record])[0]

    def score_many(self, records: Sequence[LatentRecord]) -> list[ScorerResult]:
        from saeval.evals.embedding_score.score import QUERY_PREFIX

        ready = [r for r in records if r.explanation and not r.note and len({e.active for e in r.scoring}) == 2]
        texts = sorted({ex.text() for r in ready for ex in r.scoring})
        row = {t: i for i, t in enumerate(texts)}
        emb = self.model.encode(texts, normalize_embeddings=True, convert_to_tensor=True) if texts else None
        queries = self.model.encode([QUERY_PREFIX + r.explanation for r in ready], normalize_embeddings=True,
                                    convert_to_tensor=True) if ready else None
        done = {}
        for qi, r in enumerate(ready):
            sims = [float(emb[row[ex.text()]] @ queries[qi]) for ex in r.scoring]
            labels = [ex.active for ex in r.scoring]
            auroc = _auroc(labels, sims)
            done[id(r)] = ScorerResult(
                scorer=self.name, latent=r.latent, score=auroc, auroc=auroc, n_examples=len(sims),
                examples=[ScoredExample(window=ex.window, kind=ex.kind, label=y, prediction=None, similarity=s)
                          for ex, y, s in zip(r.scoring, labels, sims, strict=True)])
        return [done.get(id(r)) or ScorerResult(
            scorer=self.name, latent=r.latent, score=None,
            note=r.note or ("no explanation" if not r.explanation else "needs examples of both classes"))
            for r in records]


def make_scorers(names: Sequence[str], judge: CountedChat | None, judge_format: str, seed: int,
                 max_new_tokens: int, fuzz_type: str, embedding_model=None) -> list[Scorer]:
    scorers: list[Scorer] = []
    for name in names:
        if name == "detection":
            scorers.append(DetectionScorer(judge, judge_format, seed, max_new_tokens))
        elif name == "fuzzing":
            scorers.append(FuzzingScorer(judge, judge_format, seed, max_new_tokens, fuzz_type))
        else:
            scorers.append(EmbeddingScorer(embedding_model))
    return scorers
