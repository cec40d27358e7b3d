"""Concept vocabularies for the steerability readout.

The paper (Steering CLIP's ViT with SAEs) reads steered outputs against the first 5,000 lines of
CLIP-Dissect's list of common English words. That list does not ship here, so the default vocabulary is built
from packaged data: WordNet's sense-tagged frequency counts (``cntlist.rev``, SemCor tag counts), summed
per lemma over its senses and parts of speech, most frequent first. A user file (one word or phrase per line)
replaces it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from saeval.errors import SaevalError

WORDNET_COUNTS = Path("/usr/share/wordnet/cntlist.rev")
DEFAULT_VOCAB = "default"
_PLAIN_WORD = re.compile(r"[a-z]{2,}")


@lru_cache(maxsize=4)
def wordnet_common_words(path: Path = WORDNET_COUNTS) -> tuple[str, ...]:
    """Single-word lowercase WordNet lemmas ranked by summed tag count (ties alphabetical): deterministic."""
    if not path.exists():
        raise SaevalError(
            f"WordNet counts not found at {path}: install the Debian package wordnet-base, or pass a "
            "vocabulary file (one word per line)"
        )
    counts: dict[str, int] = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines()):
        parts = line.split()
        if len(parts) != 3 or "%" not in parts[0] or not parts[2].isdigit():
            raise SaevalError(
                f"{path}:{n + 1} is not a WordNet cntlist line 'sense_key sense_number tag_count'"
            )
        lemma = parts[0].split("%", 1)[0]
        if _PLAIN_WORD.fullmatch(lemma):
            counts[lemma] = counts.get(lemma, 0) + int(parts[2])
    if not counts:
        raise SaevalError(f"{path} holds no WordNet lemmas: reinstall wordnet-base or pass a vocabulary file")
    return tuple(sorted(counts, key=lambda w: (-counts[w], w)))


def read_vocab_file(path: Path) -> list[str]:
    """One concept per line; blank lines and '#' comment lines are skipped; duplicates keep the first."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SaevalError(
            f"cannot read vocabulary file {path} ({err}): give a UTF-8 text file, one word per line"
        ) from err
    words = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return list(dict.fromkeys(words))


def load_vocab(spec: str = DEFAULT_VOCAB, size: int | None = 5000) -> list[str]:
    """The first ``size`` concepts of the default list (``"default"``) or of a vocabulary file."""
    if size is not None and size < 1:
        raise SaevalError(f"vocabulary size must be at least 1, got {size}")
    if spec == DEFAULT_VOCAB:
        words = list(wordnet_common_words())
    else:
        path = Path(spec)
        if not path.is_file():
            raise SaevalError(
                f"vocabulary {spec!r} not found: use 'default' or a text file with one word per line"
            )
        words = read_vocab_file(path)
    if not words:
        raise SaevalError(f"vocabulary {spec!r} is empty: it needs at least one word")
    return words[:size] if size is not None else words


def check_tokenised(words: list[str], token_counts: list[int], what: str) -> None:
    """Raise when a word tokenises to nothing (e.g. only whitespace or characters the tokenizer drops)."""
    empty = [w for w, n in zip(words, token_counts, strict=True) if n == 0]
    if empty:
        shown = ", ".join(repr(w) for w in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise SaevalError(
            f"{len(empty)} vocabulary words tokenise to nothing for {what}: {shown}; remove them"
        )
