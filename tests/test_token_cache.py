"""The corpus token cache holds plain arrays: reused when valid, rebuilt when not, never unpickled."""

from __future__ import annotations

from pathlib import Path

import torch

from saeval.data.corpora import corpus_tokens, token_cache_path


class Tok:
    """Word-length tokenizer with the attributes corpus_tokens keys its cache on; counts its calls."""

    name_or_path = "fake-tokenizer"

    def __init__(self):
        self.calls = 0

    def __len__(self):
        return 100

    def __call__(self, text, add_special_tokens=False):
        self.calls += 1
        return {"input_ids": [len(word) for word in text.split()]}


class Payload:
    """Unpickling this creates ``marker``, as a planted cache file could."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def corpus(tmp_path: Path) -> str:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("one three fourteen")
    (folder / "b.txt").write_text("")
    (folder / "c.txt").write_text("x yy")
    return str(folder)


def test_token_cache_round_trip(tmp_path):
    name, tok = corpus(tmp_path), Tok()
    docs = corpus_tokens(tok, name)
    assert [d.tolist() for d in docs] == [[3, 5, 8], [], [1, 2]] and docs[0].dtype == torch.int32
    path = token_cache_path(tok, name)
    assert path.suffix == ".safetensors" and path.stat().st_mode & 0o777 == 0o644
    again = corpus_tokens(tok, name)
    assert tok.calls == 3 and [d.tolist() for d in again] == [d.tolist() for d in docs]  # read, not re-tokenised
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_planted_pickle_in_the_token_cache_is_not_executed(tmp_path):
    name, tok = corpus(tmp_path), Tok()
    marker = tmp_path / "pwned"
    path = token_cache_path(tok, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.parent.with_suffix(".pt")  # where the pickled cache used to live, beside the entry
    for planted in (path, old):  # the cache's file (the entry is then damaged, so rebuilt), and the old name
        torch.save([Payload(marker)], planted)
    docs = corpus_tokens(tok, name)
    assert not marker.exists()
    assert [d.tolist() for d in docs] == [[3, 5, 8], [], [1, 2]] and tok.calls == 3
    assert [d.tolist() for d in corpus_tokens(tok, name)] == [[3, 5, 8], [], [1, 2]] and tok.calls == 3
    torch.load(old, weights_only=False)  # the payload is live: loading it unsafely fires
    assert marker.exists()
