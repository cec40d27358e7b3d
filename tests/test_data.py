"""Corpora, contexts and the activation cache."""

from __future__ import annotations

import json

import pytest
import torch

from saeval.data import ActivationCache, iter_documents, load_contexts, make_contexts, stream_activations
from saeval.errors import SaevalError


def test_contexts_start_with_bos_and_are_seeded(tiny_host):
    a = load_contexts(tiny_host, "sotu", 1024, ctx_len=32, seed=0)
    b = load_contexts(tiny_host, "sotu", 1024, ctx_len=32, seed=0)
    c = load_contexts(tiny_host, "sotu", 1024, ctx_len=32, seed=1)
    assert a.shape == (32, 32) and (a[:, 0] == tiny_host.bos_id).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.isin(a[:, 1:], tiny_host.special_ids).any()


def test_packaged_corpora_are_real_text():
    speech = next(iter_documents("sotu"))
    assert "Congress" in speech or "congress" in speech
    assert sum(1 for _ in iter_documents("moby-dick")) > 100


def test_local_jsonl_and_bad_lines(tmp_path, tiny_host):
    good = tmp_path / "c.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"Call me Ishmael number {i}. " * 20}) for i in range(5)))
    ctx = load_contexts(tiny_host, str(good), 64, ctx_len=16)
    assert ctx.shape == (4, 16)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(SaevalError, match="bad.jsonl:1"):
        list(iter_documents(str(bad)))


def test_empty_or_short_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SaevalError, match="empty"):
        from saeval.data.corpora import corpus_tokens

        class Tok:
            name_or_path, __len__ = "t", lambda self: 1

            def __call__(self, text, add_special_tokens=False):
                return {"input_ids": []}

        corpus_tokens(Tok(), str(tmp_path / "empty.txt"))
    with pytest.raises(SaevalError, match="fewer tokens"):
        make_contexts([torch.arange(40)], 8, 100, bos_id=0)
    with pytest.raises(SaevalError, match="not found"):
        list(iter_documents(str(tmp_path / "missing.txt")))


def test_activation_cache_round_trip_and_reuse(tiny_host, tmp_path):
    contexts = load_contexts(tiny_host, "sotu", 512, ctx_len=32)
    hook = "blocks.1.hook_resid_post"
    expected = torch.cat([b.flat() for b in stream_activations(tiny_host, hook, contexts, batch_size=4)])
    assert len(expected) == 16 * 31  # BOS excluded
    cache = ActivationCache.build(tiny_host, hook, "sotu", contexts, shard_tokens=100, folder=tmp_path / "c")
    assert len(cache.shards) > 1 and cache.n_tokens == len(expected)
    torch.testing.assert_close(cache.load_all(), expected)
    again = ActivationCache.build(tiny_host, "blocks.0.hook_resid_post", "sotu", contexts, folder=tmp_path / "c")
    assert again.shards == cache.shards  # existing cache reused, nothing recomputed
    cache.shards[0].write_bytes(b"not a safetensors file")
    with pytest.raises(SaevalError, match="corrupt"):
        cache.load_all()


def test_nan_activations_are_rejected(tiny_host):
    contexts = load_contexts(tiny_host, "sotu", 64, ctx_len=16)
    weight = tiny_host.model.model.layers[0].mlp.down_proj.weight.data
    original = weight[0, 0].item()
    weight[0, 0] = float("nan")
    try:
        with pytest.raises(SaevalError, match="NaN"):
            next(stream_activations(tiny_host, "blocks.1.hook_resid_post", contexts))
    finally:
        weight[0, 0] = original


def test_hf_dataset_corpus_streams_a_local_dataset_folder(tmp_path, tiny_host):
    """`hf:NAME` goes through datasets.load_dataset(streaming=True); a local folder of jsonl stands in for a hub id."""
    pytest.importorskip("datasets")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"text": f"Document {i} says the whale is white. " * 10} for i in range(6)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = list(iter_documents(f"hf:{folder}"))
    assert docs == [r["text"] for r in rows]
    ctx = load_contexts(tiny_host, f"hf:{folder}:train", 64, ctx_len=16)
    assert ctx.shape == (4, 16) and (ctx[:, 0] == tiny_host.bos_id).all()
